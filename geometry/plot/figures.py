"""The Llama Scope paper's data figures (2, 4, 5, 6, 7, 8, 10, 11, 12) drawn from tables: `make figures`.

    python -m geometry.figures --data figures/data --out figures

Every figure is a function of pandas DataFrames returning a plotly Figure; none reads a model or
weights. The tables are those `python -m sae.evaluate` (eval.csv, frequencies.csv, positions.csv),
`sae.train` (log.csv) and `python -m geometry.compare` / `geometry.neighborhood` write, so the same
code draws the figures of the embedded demo suite and of the real Llama Scope SAEs. Layout of the data
folder and the columns each figure reads: README.md, section Figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from sae.errors import FormatError, SAEError, SAEFileError
from sae.io import atomic_path, write_text

from geometry.report import cdf

PAPER_LAYERS = (7, 15, 23)  # the layers of Fig. 2 and Fig. 4
POSITIONS = ("R", "A", "M", "TC")
STATIC_FORMATS = ("png", "svg")
FORMATS = ("html", *STATIC_FORMATS)
STATIC_WIDTH = 1100  # layout pixels of PNG/SVG (PNG at scale 2); the HTML pages fill the window
_PALETTE = qualitative.D3
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
_SYMBOLS = {"TopK": "circle", "Vanilla": "square-open"}
_NEVER = "never"  # x tick of the bar that counts features which never fired (Fig. 4)


class FigureDataError(SAEError):
    """A well-formed table that lacks the rows a figure needs (draw_all skips that figure)."""


# ---- table schemas -----------------------------------------------------------------------------------
# kind -> (required columns, the numeric ones among them)
SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "eval": (("sae", "model", "dataset", "mode", "arch", "layer", "position", "width", "l0", "mse",
              "explained_variance_uncentred", "delta_lm_loss"),
             ("layer", "l0", "mse", "explained_variance_uncentred", "delta_lm_loss")),
    "frequencies": (("sae", "model", "dataset", "mode", "layer", "position", "feature", "tokens", "frequency"),
                    ("layer", "feature", "tokens", "frequency")),
    "positions": (("sae", "model", "dataset", "mode", "layer", "bucket_start", "bucket_end", "tokens", "l0", "mse"),
                  ("layer", "bucket_start", "bucket_end", "tokens", "l0", "mse")),
    "training_log": (("sae", "run", "step", "mse", "alive"), ("step", "mse", "alive")),
    "features_b": (("feature", "best_cos"), ("feature", "best_cos")),
    "members": (("sae", "feature", "is_seed", "cos_to_seed", "label", "x", "y", "class"), ("feature", "x", "y")),
    "edges": (("sae_a", "feature_a", "sae_b", "feature_b", "cos"), ("feature_a", "feature_b", "cos")),
}
_STRING_COLUMNS = ("sae", "model", "dataset", "mode", "arch", "position", "width", "run")


OPTIONAL_ROWS = {"edges"}  # a neighbourhood may have no pair above the edge cut


def check_table(df: pd.DataFrame, kind: str, what: str | None = None) -> pd.DataFrame:
    """A copy of `df` with its numeric columns as numbers; FormatError if it is not a `kind` table.

    kind: a key of SCHEMAS. what: how the message names the table (a path; default "<kind> table").
    """
    what = what or f"{kind} table"
    required, numeric = SCHEMAS[kind]
    if not isinstance(df, pd.DataFrame):
        raise FormatError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise FormatError(f"{what}: missing column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}")
    if df.empty and kind not in OPTIONAL_ROWS:
        raise FormatError(f"{what} has no rows")
    out = df.copy()
    for col in numeric:
        values = pd.to_numeric(out[col], errors="coerce")
        bad = values.isna() & out[col].notna()
        if bad.any():
            raise FormatError(f"{what}: column {col!r} holds a non-numeric value ({out[col][bad].iloc[0]!r})")
        out[col] = values
    for col in set(_STRING_COLUMNS) & set(out.columns):
        out[col] = out[col].astype(str)
    if kind == "frequencies" and not out["frequency"].between(0, 1).all():
        raise FormatError(f"{what}: frequencies must lie in [0, 1]")
    return out


def read_table(path: str | Path, kind: str) -> pd.DataFrame:
    """Read and check one CSV table (SAEFileError if unreadable, FormatError if malformed)."""
    path = Path(path)
    if not path.is_file():
        raise SAEFileError(f"missing table: {path}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SAEFileError(f"{path} is not a readable CSV table: {str(e).splitlines()[0]}") from None
    return check_table(df, kind, str(path))


def read_summary(path: str | Path) -> dict:
    """A geometry.compare summary.json with the keys Fig. 8 reads."""
    path = Path(path)
    if not path.is_file():
        raise SAEFileError(f"missing file: {path}")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path} is not valid JSON: {e}") from None
    _summary_parts(summary, str(path))
    return summary


def _summary_parts(summary: dict, what: str) -> tuple[str, str, float, dict, dict]:
    """(name of A, name of B, epsilon of A, baseline and isotropic quantiles {level: max cos} of B -> A)
    from a geometry.compare summary; FormatError naming the key that is missing or bad."""
    try:
        mc = summary["max_cos"]
        baseline, isotropic = ({float(k): float(v) for k, v in mc[key]["quantiles"].items()}
                               for key in ("baseline_b_to_a", "isotropic_b_to_a"))
        return str(summary["a"]["name"]), str(summary["b"]["name"]), float(summary["epsilon"]["a"]), baseline, isotropic
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{what} is not a geometry.compare summary (bad or missing key: {e})") from None


# ---- row selection -----------------------------------------------------------------------------------
def _one(df: pd.DataFrame, what: str, **wanted: str | None) -> pd.DataFrame:
    """Rows with one value in each named column: the value given, else the first in table order."""
    for col, want in wanted.items():
        value = df[col].iloc[0] if want is None else str(want)
        rows = df[df[col] == value]
        if rows.empty:
            raise FigureDataError(f"{what}: no rows with {col} {value!r}; it has {', '.join(df[col].unique())}")
        df = rows
    return df


def _own_mode(df: pd.DataFrame) -> pd.Series:
    """The inference mode each row really ran in: `native` means the SAE's own activation (`arch`)."""
    return df["mode"].where(df["mode"] != "native", df["arch"])


def _native(df: pd.DataFrame) -> pd.DataFrame:
    """One row per SAE (x model x dataset) in its own activation: mode `native` or the mode equal to its arch."""
    return df[_own_mode(df) == df["arch"]].drop_duplicates(["sae", "model", "dataset"])


def _variant(df: pd.DataFrame) -> pd.Series:
    """`Vanilla` for ReLU + L1 SAEs, `TopK` for TopK SAEs (also once post-processed to JumpReLU)."""
    return pd.Series(np.where(df["arch"] == "relu", "Vanilla", "TopK"), index=df.index)


def _width_order(widths) -> list[str]:
    def key(w: str) -> tuple[float, str]:
        try:
            return float(w.rstrip("x")), w
        except ValueError:
            return float("inf"), w

    return sorted(set(widths), key=key)


def _colors(values: Sequence[str]) -> dict[str, str]:
    return {v: _PALETTE[i % len(_PALETTE)] for i, v in enumerate(values)}


def _layers(available, layers: Sequence[int] | None, what: str) -> list[int]:
    """The layers to draw: those asked for, else the paper's 7/15/23 where present, else all."""
    available = sorted({int(x) for x in available})
    if layers is not None:
        chosen = [int(x) for x in layers if int(x) in available]
        if not chosen:
            raise FigureDataError(f"{what}: none of layers {list(layers)} in the table (it has {available})")
        return chosen
    return [x for x in PAPER_LAYERS if x in available] or available


def _ev_column(df: pd.DataFrame, ev: str) -> str:
    """The eval table's column for explained variance `ev`: "uncentred" (paper Eq. 6) or "centred"."""
    if ev not in ("uncentred", "centred"):
        raise SAEError(f"ev must be 'uncentred' or 'centred', not {ev!r}")
    col = f"explained_variance_{ev}"
    if col not in df:
        raise FormatError(f"eval table: missing column {col}")
    return col


def _condition(df: pd.DataFrame) -> str:
    """'model, dataset' of rows that share both (for titles)."""
    return f"{df['model'].iloc[0]}, {df['dataset'].iloc[0]}"


def _nonempty(df: pd.DataFrame, what: str, need: str) -> pd.DataFrame:
    if df.empty:
        raise FigureDataError(f"{what}: no rows {need}")
    return df


def _legend_once(fig: go.Figure, trace: go.Scatter | go.Bar, row: int, col: int, seen: set) -> None:
    trace.showlegend = trace.legendgroup not in seen
    seen.add(trace.legendgroup)
    fig.add_trace(trace, row=row, col=col)


def _line_rows(df: pd.DataFrame, x: str, x_title: str, metrics: Sequence[tuple[str, str]], colour_by: str,
               dash_by: str | None = None, name: Callable[[str, str], str] = lambda c, d: c, *,
               hover: str | None = None, markers: bool = True) -> go.Figure:
    """One row per metric (column, y-axis title) against column `x`, one line per value of `colour_by`
    (colour) and `dash_by` (dash), both in order of first appearance; hover adds the column `hover`."""
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.08)
    colours = _colors(list(dict.fromkeys(df[colour_by])))
    dash_col = df[dash_by] if dash_by else pd.Series("", index=df.index)
    dashes = {v: _DASHES[i % len(_DASHES)] for i, v in enumerate(dict.fromkeys(dash_col))}
    for (c, d), g in df.groupby([df[colour_by], dash_col], sort=False):
        g = g.sort_values(x, kind="stable")
        label = name(c, d)
        head = f"{label}<br>%{{text}}" if hover else label
        for r, (y, title) in enumerate(metrics, start=1):
            fig.add_trace(go.Scatter(x=g[x], y=g[y], mode="lines+markers" if markers else "lines", name=label,
                                     legendgroup=label, showlegend=r == 1, text=g[hover] if hover else None,
                                     line={"color": colours[c], "dash": dashes[d]},
                                     hovertemplate=f"{head}<br>{x_title} %{{x:.4g}}<br>{title} %{{y:.4g}}<extra></extra>"),
                          row=r, col=1)
    for r, (_, title) in enumerate(metrics, start=1):
        fig.update_yaxes(title_text=title, row=r, col=1)
    fig.update_xaxes(title_text=x_title, row=len(metrics), col=1)
    return fig


def _by_width(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by width (8x before 32x), keeping the table's order otherwise."""
    return df.sort_values("width", key=lambda w: w.map(_width_order(w).index), kind="stable")


# ---- the figures -------------------------------------------------------------------------------------
def ev_delta_lm_vs_l0(eval: pd.DataFrame, *, layers: Sequence[int] | None = None, model: str | None = None,
                      dataset: str | None = None, ev: str = "uncentred") -> go.Figure:
    """Fig. 2: explained variance (top) and delta LM loss (bottom) against L0 at the residual stream,
    one column per layer, TopK vs Vanilla (symbol) and 8x vs 32x (colour); one point per SAE.

    ev: "uncentred" (the paper's Eq. 6) or "centred" (pooled). model, dataset: which rows (default:
    the first in the table).
    """
    df = check_table(eval, "eval")
    ev_col = _ev_column(df, ev)
    what = "Fig. 2"
    df = _native(_one(df, what, model=model, dataset=dataset))
    df = _nonempty(df[df["position"] == "R"], what, "at position R")
    df = df.assign(variant=_variant(df)).sort_values("l0")
    cols = _layers(df["layer"], layers, what)
    widths = _width_order(df["width"])
    colors = _colors(widths)
    fig = make_subplots(rows=2, cols=len(cols), subplot_titles=[f"L{x}R" for x in cols], shared_xaxes="columns",
                        vertical_spacing=0.08, horizontal_spacing=0.06)
    seen: set = set()
    for c, layer in enumerate(cols, start=1):
        for variant, width in ((v, w) for v in _SYMBOLS for w in widths):
            g = df[(df["layer"] == layer) & (df["variant"] == variant) & (df["width"] == width)]
            if g.empty:
                continue
            name = f"{variant} {width}"
            for row, y in ((1, ev_col), (2, "delta_lm_loss")):
                trace = go.Scatter(x=g["l0"], y=g[y], mode="lines+markers", name=name, legendgroup=name, text=g["sae"],
                                   marker={"color": colors[width], "symbol": _SYMBOLS[variant], "size": 10},
                                   line={"color": colors[width], "dash": "solid" if variant == "TopK" else "dot"},
                                   hovertemplate="%{text}<br>L0 %{x:.1f}<br>%{y:.4f}<extra></extra>")
                _legend_once(fig, trace, row, c, seen)
    fig.update_xaxes(title_text="L0", row=2)
    fig.update_yaxes(title_text=f"explained variance ({ev})", row=1, col=1)
    fig.update_yaxes(title_text="delta LM loss (nats)", row=2, col=1)
    fig.update_layout(title=f"Reconstruction vs sparsity, TopK vs Vanilla ({_condition(df)})",
                      height=650, legend_title_text="SAE")
    return fig


def firing_frequencies(frequencies: pd.DataFrame, eval: pd.DataFrame, *, layers: Sequence[int] | None = None,
                       model: str | None = None, dataset: str | None = None, bins: int = 40) -> go.Figure:
    """Fig. 4: histograms of log10 firing frequency of the TopK SAEs at the residual stream, one
    column per layer, 8x vs 32x overlaid, as the fraction of each SAE's features per bin. Features that
    never fired in the evaluated tokens (log10 0 = -inf) are counted in a separate bar at the left,
    ticked `never`.

    eval supplies each SAE's width and architecture (the frequency table has neither).
    """
    what = "Fig. 4"
    freq = check_table(frequencies, "frequencies")
    meta = _native(check_table(eval, "eval"))[["sae", "model", "dataset", "arch", "width"]]
    freq = _one(freq, what, model=model, dataset=dataset).merge(meta, on=["sae", "model", "dataset"], how="inner")
    freq = freq[(_own_mode(freq) == freq["arch"]) & (freq["arch"] != "relu") & (freq["position"] == "R")]
    _nonempty(freq, what, "of TopK SAEs at position R whose SAE is also in the eval table")
    cols = _layers(freq["layer"], layers, what)
    freq = freq[freq["layer"].isin(cols)]
    lo = float(np.floor(np.log10(1.0 / freq["tokens"].max())))  # the rarest possible non-zero frequency
    edges = np.linspace(lo, 0.0, bins + 1)
    width_bin = edges[1] - edges[0]
    never_x = lo - 1.0
    colors = _colors(_width_order(freq["width"]))
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=[f"L{x}R" for x in cols], shared_yaxes=True,
                        horizontal_spacing=0.04)
    seen: set = set()
    for c, layer in enumerate(cols, start=1):
        panel = freq[freq["layer"] == layer]
        panel = panel.assign(w=panel["width"].map(_width_order(panel["width"]).index))
        for (_, sae_label), g in panel.groupby(["w", "sae"]):
            f = g["frequency"].to_numpy()
            width = g["width"].iloc[0]
            counts, _ = np.histogram(np.log10(f[f > 0]), bins=edges)
            share = counts / len(f)
            tokens = int(g["tokens"].max())
            common = {"legendgroup": width, "name": width, "marker_color": colors[width], "opacity": 0.6}
            _legend_once(fig, go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=share, width=width_bin, **common,
                                     hovertext=[sae_label] * len(share),
                                     hovertemplate="%{hovertext}<br>log10 freq %{x:.2f}<br>%{y:.3%} of features"
                                                   "<extra></extra>"),
                         1, c, seen)
            fig.add_trace(go.Bar(x=[never_x], y=[float(np.mean(f == 0))], width=0.6, showlegend=False, **common,
                                 hovertext=[sae_label],
                                 hovertemplate=f"%{{hovertext}}<br>never fired in {tokens:,} tokens<br>"
                                               "%{y:.3%} of features<extra></extra>"),
                          row=1, col=c)
    ticks = list(range(int(lo), 1))
    fig.update_xaxes(tickvals=[never_x, *ticks], ticktext=[_NEVER, *(f"1e{t}" for t in ticks)],
                     title_text="firing frequency (log10)")
    fig.update_yaxes(title_text="fraction of features", row=1, col=1)
    fig.update_layout(barmode="overlay", height=420, legend_title_text="width",
                      title=f"Firing frequencies of the TopK SAEs ('{_NEVER}': did not fire in the evaluated tokens)")
    return fig


def by_token_position(positions: pd.DataFrame, *, saes: Sequence[str] | None = None, model: str | None = None,
                      dataset: str | None = None, mode: str | None = None) -> go.Figure:
    """Fig. 5: MSE (top) and L0 (bottom) against token position within the document, one line per SAE.

    x is the middle of each position bucket ((start + end - 1) / 2, log axis); model, dataset, mode:
    which rows (default: the first in the table).
    """
    what = "Fig. 5"
    df = _one(check_table(positions, "positions"), what, model=model, dataset=dataset, mode=mode)
    if saes is not None:
        df = _nonempty(df[df["sae"].isin([str(s) for s in saes])], what, f"for SAEs {list(saes)}")
    df = df.sort_values(["layer", "sae"], kind="stable")
    df = df.assign(x=(df["bucket_start"] + df["bucket_end"] - 1) / 2,
                   hover=[f"positions {a:.0f}-{b - 1:.0f}, {t:,.0f} tokens"
                          for a, b, t in zip(df["bucket_start"], df["bucket_end"], df["tokens"])])
    fig = _line_rows(df, "x", "token position (bucket middle)", (("mse", "MSE"), ("l0", "L0")), "sae", hover="hover")
    fig.update_xaxes(type="log")
    fig.update_layout(title=f"Reconstruction error and L0 along the context ({_condition(df)})",
                      height=600, legend_title_text="SAE")
    return fig


def conditions_by_layer(eval: pd.DataFrame, *, by: str = "model", model: str | None = None,
                        dataset: str | None = None, position: str = "R") -> go.Figure:
    """Fig. 6: L0 (top) and delta LM loss (bottom) per layer of the TopK SAEs under two or more
    conditions (the paper: base vs instruct model), one line per condition (dash) and width (colour).

    by: the column whose values are the conditions, "model" or "dataset"; the other is fixed (the
    value given, else the first in the table).
    """
    if by not in ("model", "dataset"):
        raise SAEError(f"by must be 'model' or 'dataset', not {by!r}")
    what = "Fig. 6"
    df = check_table(eval, "eval")
    fixed = {"dataset": dataset} if by == "model" else {"model": model}
    df = _native(_one(df, what, **fixed))
    df = _nonempty(df[(df["position"] == position) & (df["arch"] != "relu")], what, f"of TopK SAEs at position {position}")
    conditions = list(dict.fromkeys(df[by]))
    if len(conditions) < 2:
        raise FigureDataError(f"{what}: needs two values of {by!r} to compare, the table has {conditions}")
    fig = _line_rows(_by_width(df), "layer", "layer", (("l0", "L0"), ("delta_lm_loss", "delta LM loss (nats)")), "width",
                     by, lambda width, cond: f"{cond} · {width}", hover="sae")
    fig.update_layout(title=f"TopK SAEs at position {position} under each {by}", height=600, legend_title_text=by)
    return fig


def max_cos_cdf(features_b: pd.DataFrame, summary: dict) -> go.Figure:
    """Fig. 8: CDF of each B feature's max cosine to A (features left out as dead, zero or NaN are not
    counted) against random directions (quantiles from summary.json: against A itself, and the
    isotropic closed form), with epsilon = sqrt(12 ln F / D) of A marked.

    features_b, summary: features_b.csv and summary.json of `python -m geometry.compare A B --out DIR`.
    """
    fb = check_table(features_b, "features_b")
    a, b, eps, baseline, isotropic = _summary_parts(summary, "summary")
    if "excluded" in fb:  # "" (read back from CSV: NaN) for compared features, else why left out
        fb = fb[fb["excluded"].astype("string").fillna("") == ""]
    best = _nonempty(fb, "Fig. 8", "for live B features")["best_cos"].to_numpy()
    fig = go.Figure()
    xs, ys = cdf(best)
    fig.add_trace(go.Scatter(x=xs, y=ys, name=f"{b} -> {a} (median {np.median(best):.3f})", mode="lines"))
    for name, q, dash in ((f"random directions -> {a}", baseline, "dash"), ("isotropic random", isotropic, "dot")):
        levels = sorted(q)
        fig.add_trace(go.Scatter(x=[q[lv] for lv in levels], y=levels, name=name, mode="lines+markers",
                                 line={"dash": dash}, marker={"size": 5}))
    fig.add_vline(x=eps, line_dash="dot", line_color="gray", annotation_text=f"epsilon {eps:.3f}")
    fig.update_xaxes(title_text=f"max cosine to {a}", range=[0, 1.01])
    fig.update_yaxes(title_text="fraction of features", range=[0, 1.01])
    fig.update_layout(title=f"Each {b} feature's max cosine to {a}, against random directions", height=460)
    return fig


def all_saes_by_layer(eval: pd.DataFrame, *, model: str | None = None, dataset: str | None = None,
                      positions: Sequence[str] = POSITIONS, ev: str = "uncentred") -> go.Figure:
    """Fig. 10: L0, explained variance and delta LM loss (rows) of every TopK SAE against layer, one
    column per position (R, A, M, TC), one line per width."""
    what = "Fig. 10"
    df = check_table(eval, "eval")
    ev_col = _ev_column(df, ev)
    df = _native(_one(df, what, model=model, dataset=dataset))
    df = df[df["arch"] != "relu"]
    cols = [p for p in positions if (df["position"] == p).any()]
    if not cols:
        raise FigureDataError(f"{what}: no TopK SAEs at positions {', '.join(positions)}")
    widths = _width_order(df["width"])
    colors = _colors(widths)
    rows = (("l0", "L0"), (ev_col, f"EV ({ev})"), ("delta_lm_loss", "delta LM loss"))
    fig = make_subplots(rows=3, cols=len(cols), subplot_titles=[f"position {p}" for p in cols], shared_xaxes=True,
                        vertical_spacing=0.06, horizontal_spacing=0.05)
    seen: set = set()
    for c, pos in enumerate(cols, start=1):
        for width in widths:
            g = df[(df["position"] == pos) & (df["width"] == width)].sort_values("layer")
            if g.empty:
                continue
            for r, (y, _) in enumerate(rows, start=1):
                _legend_once(fig, go.Scatter(x=g["layer"], y=g[y], mode="lines+markers", name=width, legendgroup=width,
                                             text=g["sae"], line={"color": colors[width]},
                                             hovertemplate="%{text}<br>layer %{x}<br>%{y:.4g}<extra></extra>"), r, c, seen)
    for r, (_, title) in enumerate(rows, start=1):
        fig.update_yaxes(title_text=title, row=r, col=1)
    fig.update_xaxes(title_text="layer", row=3)
    fig.update_layout(title="Every TopK SAE by layer, position and width", height=800, legend_title_text="width")
    return fig


def inference_modes(eval: pd.DataFrame, *, model: str | None = None, dataset: str | None = None,
                    position: str = "R", modes: Sequence[str] = ("topk", "jumprelu")) -> go.Figure:
    """Fig. 11: L0 (top) and MSE (bottom) per layer of the TopK-trained SAEs under TopK and JumpReLU
    inference (dash), per width (colour). `native` rows count as the mode of their own `arch`."""
    what = "Fig. 11"
    df = _one(check_table(eval, "eval"), what, model=model, dataset=dataset)
    df = df.assign(run_mode=_own_mode(df))
    df = df[(df["arch"] != "relu") & (df["position"] == position) & df["run_mode"].isin(modes)]
    df = df.drop_duplicates(["sae", "run_mode"])
    missing = [m for m in modes if not (df["run_mode"] == m).any()]
    if missing:
        raise FigureDataError(f"{what}: no rows in {', '.join(missing)} mode at position {position} "
                              f"(python -m sae.evaluate ... --modes {','.join(modes)})")
    df = _by_width(df.sort_values("run_mode", key=lambda m: m.map(list(modes).index), kind="stable"))
    fig = _line_rows(df, "layer", "layer", (("l0", "L0"), ("mse", "MSE")), "width", "run_mode",
                     lambda width, mode: f"{mode} · {width}", hover="sae")
    fig.update_layout(title=f"TopK vs JumpReLU inference of the same SAEs (position {position})", height=600,
                      legend_title_text="inference")
    return fig


def k_annealing(log: pd.DataFrame) -> go.Figure:
    """Fig. 12: training MSE (top, log axis) and the fraction of features alive (bottom) against step,
    one line per run (colour: e.g. k-anneal / no-anneal) and SAE (dash).

    log: rows of sae.train's log.csv with two more columns, `sae` and `run`.
    """
    df = check_table(log, "training_log")
    one_sae = df["sae"].nunique() == 1
    metrics = (("mse", "MSE (normalised space)"), ("alive", "fraction of features alive"))
    fig = _line_rows(df, "step", "training step", metrics, "run", "sae",
                     lambda run, sae: run if one_sae else f"{sae} · {run}", markers=False)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=2, col=1)
    fig.update_layout(title="Training with and without K-annealing", height=600, legend_title_text="run")
    return fig


def neighborhood_figure(members: pd.DataFrame, edges: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Fig. 7: a seed's neighbourhood from members.csv and edges.csv (geometry.neighborhood draws it)."""
    from geometry.neighborhood import figure

    members, edges = check_table(members, "members"), check_table(edges, "edges")
    return figure(members, edges, title=title or "A seed's neighbourhood in three SAEs")


# ---- every figure from a data folder -----------------------------------------------------------------
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


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def find_browser() -> str | None:
    """The Chrome/Chromium kaleido would use (BROWSER_PATH, else PATH and the usual places), or None."""
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    return Chromium.find_browser(skip_local=False)


def _static_export(jobs: list[tuple[go.Figure, Path, str]]) -> str:
    """Write PNG/SVG files through kaleido in one browser session; '' on success, else why not."""
    if not jobs:
        return ""
    if not _importable("kaleido"):
        return "static export skipped: kaleido is not installed (pip install -e '.[geometry]'); HTML written"
    if not find_browser():
        return ("static export skipped: no Chrome/Chromium found (Debian: apt-get install chromium; or set "
                "BROWSER_PATH); HTML written")
    import plotly.io as pio

    try:
        with ExitStack() as stack:
            tmps = [stack.enter_context(atomic_path(path)) for _, path, _ in jobs]
            pio.write_images([f for f, _, _ in jobs], tmps, format=[fmt for _, _, fmt in jobs], width=STATIC_WIDTH,
                             height=[f.layout.height or 500 for f, _, _ in jobs], scale=2)
    except Exception as e:  # kaleido and the browser fail in many ways; the HTML is what matters
        return f"static export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); HTML written"
    return ""


def _write_html(fig: go.Figure, path: Path, plotlyjs: str) -> Path:
    """A full HTML page; with plotlyjs "directory" it loads the plotly.min.js beside it, written here
    unless the one there is already this plotly's."""
    if plotlyjs == "directory":
        from plotly.offline import get_plotlyjs

        js, text = path.parent / "plotly.min.js", get_plotlyjs()
        if not js.is_file() or js.stat().st_size != len(text.encode()) or js.read_text() != text:
            write_text(js, text)
    write_text(path, fig.to_html(include_plotlyjs="directory" if plotlyjs == "directory" else True, full_html=True))
    return path


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
        raise SAEFileError(f"no data folder {data_dir} (the tables of README.md, section Figures, go there)")
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
        if number == 7 and not _importable("geometry.neighborhood"):
            row["note"] = "needs geometry.neighborhood, which this installation lacks"
            continue
        try:
            fig = spec.draw(tables, model, dataset)
        except FigureDataError as e:
            row["note"] = str(e)
            continue
        stem = out_dir / f"fig{number}_{spec.name}"
        if "html" in formats:
            row["paths"].append(str(_write_html(fig, stem.with_suffix(".html"), plotlyjs)))
        row["status"] = "written"
        jobs += [(fig, stem.with_suffix(f".{fmt}"), fmt, row) for fmt in formats if fmt in STATIC_FORMATS]
    note = _static_export([(f, p, fmt) for f, p, fmt, _ in jobs])
    for fig, path, fmt, row in jobs:
        if note:
            row["note"] = note
            html = path.with_suffix(".html")
            if str(html) not in row["paths"]:  # static was asked for alone: the HTML stands in
                row["paths"].append(str(_write_html(fig, html, plotlyjs)))
        else:
            row["paths"].append(str(path))
    return pd.DataFrame(rows, columns=["figure", "name", "status", "paths", "note"])


# ---- command line ------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected figure numbers like 2,4,8, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geometry.figures",
        description="Draw the Llama Scope paper's data figures (2, 4, 5, 6, 7, 8, 10, 11, 12) from the tables in "
        "--data into --out as interactive HTML and static PNG/SVG. A figure whose table is missing is skipped "
        "with a note. Table layout: README.md, section Figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=Path("figures/data"), help="folder of tables (eval.csv, frequencies.csv, "
                   "positions.csv, training_log.csv, compare/, neighborhood/)")
    p.add_argument("--out", type=Path, default=Path("figures"), help="where figN_<name>.html/.png/.svg go")
    p.add_argument("--only", type=_int_list, help="comma-separated figure numbers, e.g. 2,4 (default: all)")
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
