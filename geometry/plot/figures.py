"""The Llama Scope paper's data figures (2, 4, 5, 6, 7, 8, 10, 11, 12), each a function of pandas
DataFrames returning a plotly Figure; none reads a model or weights.

The tables are those `python -m sae.evaluate` (eval.csv, frequencies.csv, positions.csv), `sae.train`
(log.csv) and `python -m geometry.compare` / `geometry.neighborhood` write, so the same code draws the
figures of the embedded demo suite and of the real Llama Scope SAEs. Layout of the data folder and the
columns each figure reads: docs/figures.md. `draw_all` (geometry.plot.draw) draws them all
from a folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from geometry.plot.maps import neighborhood_map
from geometry.plot.report import cdf
from geometry.plot.rows import (
    by_width,
    condition_title,
    ev_column,
    native_rows,
    nonempty,
    own_mode,
    pick_layers,
    select,
    variant_of,
    width_order,
)
from geometry.plot.tables import FigureDataError, check_table, summary_parts
from geometry.plot.traces import colour_map, legend_once, line_rows
from sae.errors import SAEError
from sae.lm.sites import POSITIONS

SYMBOLS = {"TopK": "circle", "Vanilla": "square-open"}  # marker of each SAE variant (Fig. 2)
NEVER = "never"  # x tick of the bar that counts features which never fired (Fig. 4)


def ev_delta_lm_vs_l0(eval: pd.DataFrame, *, layers: Sequence[int] | None = None, model: str | None = None,
                      dataset: str | None = None, ev: str = "uncentred") -> go.Figure:
    """Fig. 2: explained variance (top) and delta LM loss (bottom) against L0 at the residual stream,
    one column per layer, TopK vs Vanilla (symbol) and 8x vs 32x (colour); one point per SAE.

    ev: "uncentred" (the paper's Eq. 6) or "centred" (pooled). model, dataset: which rows (default:
    the first in the table).
    """
    df = check_table(eval, "eval")
    ev_col = ev_column(df, ev)
    what = "Fig. 2"
    df = native_rows(select(df, what, model=model, dataset=dataset))
    df = nonempty(df[df["position"] == "R"], what, "at position R")
    df = df.assign(variant=variant_of(df)).sort_values("l0")
    cols = pick_layers(df["layer"], layers, what)
    widths = width_order(df["width"])
    colors = colour_map(widths)
    fig = make_subplots(rows=2, cols=len(cols), subplot_titles=[f"L{x}R" for x in cols], shared_xaxes="columns",
                        vertical_spacing=0.08, horizontal_spacing=0.06)
    seen: set = set()
    for c, layer in enumerate(cols, start=1):
        for variant, width in ((v, w) for v in SYMBOLS for w in widths):
            g = df[(df["layer"] == layer) & (df["variant"] == variant) & (df["width"] == width)]
            if g.empty:
                continue
            name = f"{variant} {width}"
            for row, y in ((1, ev_col), (2, "delta_lm_loss")):
                trace = go.Scatter(x=g["l0"], y=g[y], mode="lines+markers", name=name, legendgroup=name, text=g["sae"],
                                   marker={"color": colors[width], "symbol": SYMBOLS[variant], "size": 10},
                                   line={"color": colors[width], "dash": "solid" if variant == "TopK" else "dot"},
                                   hovertemplate="%{text}<br>L0 %{x:.1f}<br>%{y:.4f}<extra></extra>")
                legend_once(fig, trace, row, c, seen)
    fig.update_xaxes(title_text="L0", row=2)
    fig.update_yaxes(title_text=f"explained variance ({ev})", row=1, col=1)
    fig.update_yaxes(title_text="delta LM loss (nats)", row=2, col=1)
    fig.update_layout(title=f"Reconstruction vs sparsity, TopK vs Vanilla ({condition_title(df)})",
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
    meta = native_rows(check_table(eval, "eval"))[["sae", "model", "dataset", "arch", "width"]]
    freq = select(freq, what, model=model, dataset=dataset).merge(meta, on=["sae", "model", "dataset"], how="inner")
    freq = freq[(own_mode(freq) == freq["arch"]) & (freq["arch"] != "relu") & (freq["position"] == "R")]
    nonempty(freq, what, "of TopK SAEs at position R whose SAE is also in the eval table")
    cols = pick_layers(freq["layer"], layers, what)
    freq = freq[freq["layer"].isin(cols)]
    lo = float(np.floor(np.log10(1.0 / freq["tokens"].max())))  # the rarest possible non-zero frequency
    edges = np.linspace(lo, 0.0, bins + 1)
    width_bin = edges[1] - edges[0]
    never_x = lo - 1.0
    colors = colour_map(width_order(freq["width"]))
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=[f"L{x}R" for x in cols], shared_yaxes=True,
                        horizontal_spacing=0.04)
    seen: set = set()
    for c, layer in enumerate(cols, start=1):
        panel = freq[freq["layer"] == layer]
        panel = panel.assign(w=panel["width"].map(width_order(panel["width"]).index))
        for (_, sae_label), g in panel.groupby(["w", "sae"]):
            f = g["frequency"].to_numpy()
            width = g["width"].iloc[0]
            counts, _ = np.histogram(np.log10(f[f > 0]), bins=edges)
            share = counts / len(f)
            tokens = int(g["tokens"].max())
            common = {"legendgroup": width, "name": width, "marker_color": colors[width], "opacity": 0.6}
            legend_once(fig, go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=share, width=width_bin, **common,
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
    fig.update_xaxes(tickvals=[never_x, *ticks], ticktext=[NEVER, *(f"1e{t}" for t in ticks)],
                     title_text="firing frequency (log10)")
    fig.update_yaxes(title_text="fraction of features", row=1, col=1)
    fig.update_layout(barmode="overlay", height=420, legend_title_text="width",
                      title=f"Firing frequencies of the TopK SAEs ('{NEVER}': did not fire in the evaluated tokens)")
    return fig


def by_token_position(positions: pd.DataFrame, *, saes: Sequence[str] | None = None, model: str | None = None,
                      dataset: str | None = None, mode: str | None = None) -> go.Figure:
    """Fig. 5: MSE (top) and L0 (bottom) against token position within the document, one line per SAE.

    x is the middle of each position bucket ((start + end - 1) / 2, log axis); model, dataset, mode:
    which rows (default: the first in the table).
    """
    what = "Fig. 5"
    df = select(check_table(positions, "positions"), what, model=model, dataset=dataset, mode=mode)
    if saes is not None:
        df = nonempty(df[df["sae"].isin([str(s) for s in saes])], what, f"for SAEs {list(saes)}")
    df = df.sort_values(["layer", "sae"], kind="stable")
    # "L3R-8x-Vanilla": colour by site (L3R), dash by kind (8x-Vanilla); other names are their own site.
    parts = df["sae"].astype(str).str.extract(r"^(L\d+[A-Z]+)-(.+)$")
    site, kind = parts[0].fillna(df["sae"].astype(str)), parts[1].fillna("")
    df = df.assign(x=(df["bucket_start"] + df["bucket_end"] - 1) / 2, site=site, kind=kind,
                   hover=[f"positions {a:.0f}-{b - 1:.0f}, {t:,.0f} tokens"
                          for a, b, t in zip(df["bucket_start"], df["bucket_end"], df["tokens"])])
    fig = line_rows(df, "x", "token position (bucket middle)", (("mse", "MSE (log)"), ("l0", "L0")), "site", "kind",
                    lambda s, k: f"{s} {k}".strip(), hover="hover")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title=f"Reconstruction error and L0 along the context ({condition_title(df)})",
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
    df = native_rows(select(df, what, **fixed))
    df = nonempty(df[(df["position"] == position) & (df["arch"] != "relu")], what, f"of TopK SAEs at position {position}")
    conditions = list(dict.fromkeys(df[by]))
    if len(conditions) < 2:
        raise FigureDataError(f"{what}: needs two values of {by!r} to compare, the table has {conditions}")
    fig = line_rows(by_width(df), "layer", "layer", (("l0", "L0"), ("delta_lm_loss", "delta LM loss (nats)")), "width",
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
    a, b, eps, baseline, isotropic = summary_parts(summary, "summary")
    if "excluded" in fb:  # "" (read back from CSV: NaN) for compared features, else why left out
        fb = fb[fb["excluded"].astype("string").fillna("") == ""]
    best = nonempty(fb, "Fig. 8", "for live B features")["best_cos"].to_numpy()
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
    ev_col = ev_column(df, ev)
    df = native_rows(select(df, what, model=model, dataset=dataset))
    df = df[df["arch"] != "relu"]
    cols = [p for p in positions if (df["position"] == p).any()]
    if not cols:
        raise FigureDataError(f"{what}: no TopK SAEs at positions {', '.join(positions)}")
    widths = width_order(df["width"])
    colors = colour_map(widths)
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
                legend_once(fig, go.Scatter(x=g["layer"], y=g[y], mode="lines+markers", name=width, legendgroup=width,
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
    df = select(check_table(eval, "eval"), what, model=model, dataset=dataset)
    df = df.assign(run_mode=own_mode(df))
    df = df[(df["arch"] != "relu") & (df["position"] == position) & df["run_mode"].isin(modes)]
    df = df.drop_duplicates(["sae", "run_mode"])
    missing = [m for m in modes if not (df["run_mode"] == m).any()]
    if missing:
        raise FigureDataError(f"{what}: no rows in {', '.join(missing)} mode at position {position} "
                              f"(python -m sae.evaluate ... --modes {','.join(modes)})")
    df = by_width(df.sort_values("run_mode", key=lambda m: m.map(list(modes).index), kind="stable"))
    fig = line_rows(df, "layer", "layer", (("l0", "L0"), ("mse", "MSE")), "width", "run_mode",
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
    fig = line_rows(df, "step", "training step", metrics, "run", "sae",
                     lambda run, sae: run if one_sae else f"{sae} · {run}", markers=False)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=2, col=1)
    fig.update_layout(title="Training with and without K-annealing", height=600, legend_title_text="run")
    return fig


def neighborhood_figure(members: pd.DataFrame, edges: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Fig. 7: a seed's neighbourhood from members.csv and edges.csv (as geometry.neighborhood draws it)."""
    members, edges = check_table(members, "members"), check_table(edges, "edges")
    return neighborhood_map(members, edges, title=title or "A seed's neighbourhood in three SAEs")
