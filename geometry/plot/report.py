"""One self-contained interactive HTML page for a Comparison (plotly, plotly.js inline: works offline).

Figures: CDF of max cosine both ways against the random baselines (the paper's Fig. 8), split-factor
histogram, class counts, and best cosine vs decomposition R^2 with feature ids on hover. plotly is
imported by the functions that draw, so that geometry.compare loads without it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from geometry.novelty import CLASSES
from geometry.plot.links import OPEN_ON_CLICK, feature_urls

if TYPE_CHECKING:
    import plotly.graph_objects as go

_COLORS = {"same": "#2ca02c", "refined": "#1f77b4", "composite": "#ff7f0e", "novel": "#d62728", "ambiguous": "#7f7f7f"}


def cdf(x: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """An empirical CDF at most `points` long (quantiles), so the page stays small."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    if len(x) > points:
        x = np.quantile(x, np.linspace(0, 1, points))
    return x, np.linspace(0, 1, len(x))


def cdf_figure(cmp) -> go.Figure:
    """Each side's max cosine to the other against random directions, epsilon and the cut marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("each B feature's max cos to A", "each A feature's max cos to B"))
    fa, fb = cmp.features_a, cmp.features_b
    data = {"b_to_a": fb.loc[fb["excluded"] == "", "best_cos"], "a_to_b": fa.loc[fa["excluded"] == "", "best_cos"]}
    for col, key in enumerate(("b_to_a", "a_to_b"), start=1):
        for name, x, dash in (("observed", data[key], None), ("random directions", cmp.baseline[key], "dash")):
            xs, ys = cdf(x)
            fig.add_trace(go.Scatter(x=xs, y=ys, name=name, line={"dash": dash}, legendgroup=name,
                                     showlegend=col == 1), row=1, col=col)
        eps = cmp.summary["epsilon"]["a" if key == "b_to_a" else "b"]
        fig.add_vline(x=eps, line_dash="dot", line_color="gray", row=1, col=col)
        fig.add_vline(x=cmp.summary["options"]["cut"], line_dash="dot", line_color="black", row=1, col=col)
    fig.update_xaxes(title_text="max cosine (dotted: epsilon, cut)", range=[0, 1.01])
    fig.update_yaxes(title_text="fraction of features")
    fig.update_layout(title="Max cosine against a random baseline (Llama Scope Fig. 8)", height=420)
    return fig


def split_figure(cmp) -> go.Figure:
    """Histogram of children per A feature."""
    import plotly.graph_objects as go

    hist = cmp.summary["split_factor"]["histogram"]
    fig = go.Figure(go.Bar(x=list(hist), y=list(hist.values())))
    fig.update_layout(title=f"Children per A feature (B features with cos >= {cmp.summary['options']['cut']})",
                      xaxis_title="children", yaxis_title="A features", height=380)
    return fig


def class_figure(cmp) -> go.Figure:
    """Counts of the B classes beside the counts of the family types."""
    import plotly.graph_objects as go

    counts = cmp.summary["classes_b"]
    fig = go.Figure(go.Bar(x=list(CLASSES), y=[counts[c] for c in CLASSES], marker_color=[_COLORS[c] for c in CLASSES]))
    fam = cmp.summary["families"]
    fig2 = go.Bar(x=list(fam), y=list(fam.values()), xaxis="x2", yaxis="y2", marker_color="#9467bd")
    fig.add_trace(fig2)
    fig.update_layout(title="Classes of B features | family types", showlegend=False, height=380,
                      xaxis={"domain": [0, 0.48]}, xaxis2={"domain": [0.52, 1], "anchor": "y2"},
                      yaxis2={"anchor": "x2"})
    return fig


def scatter_figure(cmp, max_points: int = 20000, atlas: str | None = None) -> go.Figure:
    """Best cosine against decomposition R^2 of (at most max_points) live B features, by class; with
    `atlas` (the atlas folder, relative to the report) a click opens the B feature's atlas page."""
    import plotly.graph_objects as go

    fb = cmp.features_b[cmp.features_b["class"] != "dead"]
    if len(fb) > max_points:
        fb = fb.sample(max_points, random_state=0)
    fig = go.Figure()
    for c in CLASSES:
        d = fb[fb["class"] == c]
        text = [f"B {f} &rarr; A {m}" for f, m in zip(d["feature"], d["best_match"])]
        fig.add_trace(go.Scattergl(x=d["best_cos"], y=d["r2"], mode="markers", name=c, text=text,
                                   customdata=feature_urls(atlas, cmp.summary["b"]["name"], d["feature"]),
                                   marker={"size": 4, "color": _COLORS[c], "opacity": 0.6},
                                   hovertemplate="%{text}<br>best cos %{x:.3f}<br>R^2 %{y:.3f}<extra>" + c + "</extra>"))
    fig.update_layout(title=f"Best cosine vs R^2 of the non-negative decomposition ({len(fb)} B features)",
                      xaxis_title="best cosine to A", yaxis_title="R^2 (<= max_atoms atoms)", height=520)
    return fig


def report_html(cmp, *, max_points: int = 20000, atlas: str | None = None) -> str:
    """The page: the summary text and the four figures, plotly.js inline once; `atlas`: see scatter_figure."""
    s = cmp.summary
    figs = [cdf_figure(cmp), class_figure(cmp), split_figure(cmp), scatter_figure(cmp, max_points, atlas)]
    parts = [f.to_html(full_html=False, include_plotlyjs=i == 0, post_script=OPEN_ON_CLICK if atlas and i == 3 else None)
             for i, f in enumerate(figs)]
    title = f"{s['a']['name']} vs {s['b']['name']}"
    hint = "<p>Click a point of the last plot to open that feature's atlas page.</p>" if atlas else ""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}pre{background:#f6f6f6;padding:1em;"
        "white-space:pre-wrap}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(cmp.text())}</pre>" + "".join(parts[:3]) + hint + parts[3]
        + "</body></html>"
    )
