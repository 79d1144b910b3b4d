"""Every figure whose tables are in a data folder, drawn into an output folder: `draw_all`, and the
registry FIGURES of which figure reads which files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from geometry.plot.export import FORMATS, STATIC_FORMATS, static_export, write_html
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
from geometry.plot.tables import FigureDataError, read_summary, read_table
from sae.errors import SAEError, SAEFileError


class _Tables:
    """Reads (once) and checks the tables of a data folder."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, object] = {}

    def __call__(self, rel: str, kind: str | None = None):
        if rel not in self._cache:
            path = self.root / rel
            self._cache[rel] = read_summary(path) if rel.endswith(".json") else read_table(path, kind)
        return self._cache[rel]


def _fig2(t: _Tables, model: str | None, dataset: str | None) -> go.Figure:
    """eval.csv, plus the k / L1 sweep of sweep.csv where the folder has one (each series a curve)."""
    ev = t("eval.csv", "eval")
    if (t.root / "sweep.csv").is_file():
        ev = pd.concat([ev, t("sweep.csv", "eval")], ignore_index=True)
    return ev_delta_lm_vs_l0(ev, model=model, dataset=dataset)


def _fig6(t: _Tables, model: str | None, dataset: str | None) -> go.Figure:
    ev = t("eval.csv", "eval")
    by = "model" if ev["model"].nunique() >= 2 else "dataset"
    if ev[by].nunique() < 2:
        raise FigureDataError("Fig. 6: needs two models or two datasets in eval.csv (e.g. base vs instruct)")
    return conditions_by_layer(ev, by=by, model=model, dataset=dataset)


@dataclass(frozen=True)
class FigureSpec:
    number: int
    name: str  # the file is fig{number}_{name}.html
    needs: tuple[str, ...]  # files in the data folder
    draw: Callable[[_Tables, str | None, str | None], go.Figure]


FIGURES = (
    FigureSpec(2, "ev_delta_lm_vs_l0", ("eval.csv",), _fig2),
    FigureSpec(4, "firing_frequencies", ("frequencies.csv", "eval.csv"),
               lambda t, m, d: firing_frequencies(t("frequencies.csv", "frequencies"), t("eval.csv", "eval"),
                                                  model=m, dataset=d)),
    FigureSpec(5, "by_token_position", ("positions.csv",),
               lambda t, m, d: by_token_position(t("positions.csv", "positions"), model=m, dataset=d)),
    FigureSpec(6, "conditions_by_layer", ("eval.csv",), _fig6),
    FigureSpec(7, "neighborhood", ("neighborhood/members.csv", "neighborhood/edges.csv"),
               lambda t, m, d: neighborhood_figure(t("neighborhood/members.csv", "members"),
                                                   t("neighborhood/edges.csv", "edges"))),
    FigureSpec(8, "max_cos_cdf", ("compare/features_b.csv", "compare/summary.json"),
               lambda t, m, d: max_cos_cdf(t("compare/features_b.csv", "features_b"), t("compare/summary.json"))),
    FigureSpec(10, "all_saes_by_layer", ("eval.csv",),
               lambda t, m, d: all_saes_by_layer(t("eval.csv", "eval"), model=m, dataset=d)),
    FigureSpec(11, "inference_modes", ("eval.csv",),
               lambda t, m, d: inference_modes(t("eval.csv", "eval"), model=m, dataset=d)),
    FigureSpec(12, "k_annealing", ("training_log.csv",),
               lambda t, m, d: k_annealing(t("training_log.csv", "training_log"))),
)


def draw_all(data_dir: str | Path = "figures/data", out_dir: str | Path = "figures", *,
             only: Sequence[int] | None = None, formats: Sequence[str] = FORMATS, plotlyjs: str = "directory",
             model: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Draw every figure whose tables are in `data_dir` into `out_dir`; returns one row per figure:
    figure, name, status ("written" or "skipped"), paths (list of files written), note.

    A missing table or one without the rows a figure needs skips that figure (note says which); a
    malformed table raises FormatError / SAEFileError. formats: any of html, png, svg; PNG/SVG need
    kaleido and a Chrome/Chromium, without them the HTML is written anyway and the note says why.
    plotlyjs: "directory" (one plotly.min.js beside the pages, which need it to open) or "inline"
    (each page self-contained, ~4.8 MB more each).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise SAEError(f"unknown format(s) {', '.join(unknown) or '(none given)'}; formats: {', '.join(FORMATS)}")
    if plotlyjs not in ("directory", "inline"):
        raise SAEError(f"plotlyjs must be 'directory' or 'inline', not {plotlyjs!r}")
    known = {s.number: s for s in FIGURES}
    wanted = list(dict.fromkeys(int(n) for n in only)) if only is not None else list(known)
    bad = [n for n in wanted if n not in known]
    if bad:
        raise SAEError(f"no figure {', '.join(map(str, bad))}; figures drawn from tables: {', '.join(map(str, known))}")
    if not data_dir.is_dir():
        raise SAEFileError(f"no data folder {data_dir} (the tables of docs/figures.md go there)")
    tables = _Tables(data_dir)
    rows, jobs = [], []
    for number in wanted:
        spec = known[number]
        row = {"figure": number, "name": spec.name, "status": "skipped", "paths": [], "note": ""}
        rows.append(row)
        missing = [rel for rel in spec.needs if not (data_dir / rel).is_file()]
        if missing:
            row["note"] = f"needs {', '.join(str(data_dir / rel) for rel in missing)}"
            continue
        try:
            fig = spec.draw(tables, model, dataset)
        except FigureDataError as e:
            row["note"] = str(e)
            continue
        stem = out_dir / f"fig{number}_{spec.name}"
        if "html" in formats:
            row["paths"].append(str(write_html(fig, stem.with_suffix(".html"), plotlyjs)))
        row["status"] = "written"
        jobs += [(fig, stem.with_suffix(f".{fmt}"), fmt, row) for fmt in formats if fmt in STATIC_FORMATS]
    note = static_export([(f, p, fmt) for f, p, fmt, _ in jobs])
    for fig, path, fmt, row in jobs:
        if note:
            row["note"] = note
            html = path.with_suffix(".html")
            if str(html) not in row["paths"]:  # static was asked for alone: the HTML stands in
                row["paths"].append(str(write_html(fig, html, plotlyjs)))
        else:
            row["paths"].append(str(path))
    return pd.DataFrame(rows, columns=["figure", "name", "status", "paths", "note"])
