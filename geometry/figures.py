"""`python -m geometry.figures`: the paper's figures from tables. The code lives in `geometry.plot` (cli,
draw, export, figures, tables); the public names of the former `geometry.plot.figures` are re-exported
here, where the commands and earlier imports know them."""

from geometry.plot.cli import build_parser, main
from geometry.plot.draw import FIGURES, FigureSpec, draw_all
from geometry.plot.export import FORMATS, STATIC_FORMATS, STATIC_WIDTH, find_browser
from geometry.plot.figures import (
    all_saes_by_layer,
    by_token_position,
    conditions_by_layer,
    ev_delta_lm_vs_l0,
    firing_frequencies,
    inference_modes,
    k_annealing,
    max_cos_cdf,
    neighborhood_figure,
)
from geometry.plot.rows import PAPER_LAYERS
from geometry.plot.tables import OPTIONAL_ROWS, SCHEMAS, FigureDataError, check_table, read_summary, read_table
from sae.errors import run_cli

__all__ = ["FIGURES", "FORMATS", "OPTIONAL_ROWS", "PAPER_LAYERS", "SCHEMAS", "STATIC_FORMATS", "STATIC_WIDTH",
           "FigureDataError", "FigureSpec", "all_saes_by_layer", "build_parser", "by_token_position", "check_table",
           "conditions_by_layer", "draw_all", "ev_delta_lm_vs_l0", "find_browser", "firing_frequencies",
           "inference_modes", "k_annealing", "main", "max_cos_cdf", "neighborhood_figure", "read_summary", "read_table"]

if __name__ == "__main__":
    run_cli(main)
