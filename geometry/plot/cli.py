"""`python -m geometry.figures`: draw the paper's figures from a folder of tables.

    python -m geometry.figures --data figures/data --out figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geometry.plot.draw import draw_all
from geometry.plot.export import FORMATS
from sae.io import check_writable


def int_list(text: str) -> list[int]:
    """--only's "2,4,8" -> [2, 4, 8]."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected figure numbers like 2,4,8, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geometry.figures",
        description="Draw the Llama Scope paper's data figures (2, 4, 5, 6, 7, 8, 10, 11, 12) from the tables in "
        "--data into --out as interactive HTML and static PNG/SVG. A figure whose table is missing is skipped "
        "with a note. Table layout: docs/figures.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=Path("figures/data"), help="folder of tables (eval.csv, frequencies.csv, "
                   "positions.csv, training_log.csv, compare/, neighborhood/)")
    p.add_argument("--out", type=Path, default=Path("figures"), help="where figN_<name>.html/.png/.svg go")
    p.add_argument("--only", type=int_list, help="comma-separated figure numbers, e.g. 2,4 (default: all)")
    p.add_argument("--format", default=",".join(FORMATS),
                   help="comma-separated output formats among html, png, svg (PNG/SVG need kaleido and a Chrome/Chromium; "
                   "without one the HTML is written and a note says so)")
    p.add_argument("--plotlyjs", choices=("directory", "inline"), default="directory",
                   help="'directory': one shared plotly.min.js beside the pages (keep them together); 'inline': every "
                   "page self-contained (~4.8 MB each)")
    p.add_argument("--model", help="the model whose rows to draw (default: the first in eval.csv); Fig. 6 compares models")
    p.add_argument("--dataset", help="the dataset whose rows to draw (default: the first in the table)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_writable(args.out)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    result = draw_all(args.data, args.out, only=args.only, formats=formats, plotlyjs=args.plotlyjs,
                      model=args.model, dataset=args.dataset)
    if not args.quiet:
        for r in result.itertuples():
            if r.status == "written":
                print(f"fig {r.figure}: {', '.join(r.paths)}" + (f"  ({r.note})" if r.note else ""))
            else:
                print(f"fig {r.figure}: skipped, {r.note}")
    return 0
