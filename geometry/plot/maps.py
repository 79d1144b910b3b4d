"""Scatter maps of feature directions in 2-D: the whole-dictionary feature map (geometry.clusters) and
a seed's neighbourhood (geometry.neighborhood, the paper's Fig. 7). plotly is imported by the functions
that draw, so that the modules computing the layouts load without it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from geometry.plot.links import feature_urls

if TYPE_CHECKING:
    import plotly.graph_objects as go

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#aec7e8", "#ff9896", "#98df8a", "#ffbb78", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5",
           "#dbdb8d", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]


def sae_colors(names: Iterable[str]) -> dict[str, str]:
    """One colour of PALETTE per SAE name, in order."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _cluster_colors(cluster: np.ndarray) -> np.ndarray:
    """cluster: [n] ids -> [n] colours, grey for noise (-1)."""
    return np.where(cluster < 0, "#cccccc", np.array(PALETTE, dtype=object)[np.maximum(cluster, 0) % len(PALETTE)])


def map_figure(points: pd.DataFrame, clusters: pd.DataFrame | None = None, *, annotate: int = 25,
               title: str = "Feature map (UMAP of decoder directions)") -> go.Figure:
    """A plotly figure of a map's points (sae, feature, x, y, cluster, label): Scattergl per SAE."""
    import plotly.graph_objects as go

    names = list(dict.fromkeys(points["sae"]))
    by_sae = sae_colors(names)
    fig = go.Figure()
    by_cluster, plain = [], []
    for name in names:
        d = points[points["sae"] == name]
        text = [f"{name} #{f} · cluster {c}<br>{lab}" for f, c, lab in zip(d["feature"], d["cluster"], d["label"])]
        colors = _cluster_colors(d["cluster"].to_numpy())
        by_cluster.append(colors.tolist())
        plain.append(by_sae[name])
        fig.add_trace(go.Scattergl(x=d["x"].to_numpy(), y=d["y"].to_numpy(), mode="markers", name=name, text=text,
                                   hovertemplate="%{text}<extra></extra>",
                                   marker={"size": 3 if len(points) > 20000 else 5, "color": colors.tolist(),
                                           "opacity": 0.7}))
    if clusters is not None and annotate:
        centres = points[points["cluster"] >= 0].groupby("cluster")[["x", "y"]].median()
        for row in clusters[clusters["cluster"] >= 0].head(annotate).itertuples():
            words = ", ".join(w.split(" (")[0] for w in str(row.top_labels).split(", ")[:3] if w)
            fig.add_annotation(x=centres.loc[row.cluster, "x"], y=centres.loc[row.cluster, "y"], showarrow=False,
                               text=f"{row.cluster}: {words}" if words else str(row.cluster), font={"size": 10},
                               bgcolor="rgba(255,255,255,0.6)")
    fig.update_layout(
        title=title, height=800, template="plotly_white", legend={"itemsizing": "constant"},
        xaxis={"visible": False}, yaxis={"visible": False},
        updatemenus=[{"type": "buttons", "direction": "right", "x": 0, "y": 1.06, "xanchor": "left", "buttons": [
            {"label": "colour: cluster", "method": "restyle", "args": [{"marker.color": by_cluster}]},
            {"label": "colour: SAE", "method": "restyle", "args": [{"marker.color": plain}]}]}],
    )
    return fig


def neighborhood_map(members: pd.DataFrame, edges: pd.DataFrame, title: str = "Neighbourhood", *,
                     text_chars: int = 28, atlas: str | None = None) -> go.Figure:
    """Fig. 7 from the tables alone: members (sae, feature, is_seed, cos_to_seed, label, x, y, class) as
    points coloured by SAE (seeds as stars), short labels beside them, everything on hover; edges as
    grey lines. `atlas`: the points carry their atlas pages' URLs (geometry.plot.links)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    at = {(s, int(f)): (x, y) for s, f, x, y in zip(members["sae"], members["feature"], members["x"], members["y"])}
    xs, ys = [], []
    for r in edges.itertuples():
        (x0, y0), (x1, y1) = at[(r.sae_a, int(r.feature_a))], at[(r.sae_b, int(r.feature_b))]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "rgba(120,120,120,0.45)", "width": 1},
                                 name="cos >= cut", hoverinfo="skip"))
    colors = sae_colors(dict.fromkeys(members["sae"]))
    for name, d in members.groupby("sae", sort=False):
        label = d["label"].fillna("").astype(str)
        short = [lab if len(lab) <= text_chars else lab[: text_chars - 1] + "…" for lab in label]
        cls = d["class"].fillna("").astype(str) if "class" in d else pd.Series("", index=d.index)
        hover = [f"<b>{name} #{f}</b>{' (seed)' if s else ''}<br>{lab}<br>cos to seed {c:.3f}"
                 + (f"<br>class: {k}" if k else "")
                 for f, s, lab, c, k in zip(d["feature"], d["is_seed"], label, d["cos_to_seed"], cls)]
        fig.add_trace(go.Scatter(
            x=d["x"], y=d["y"], mode="markers+text", name=f"{name} ({len(d)})", text=short, textposition="top center",
            customdata=feature_urls(atlas, name, d["feature"]),
            textfont={"size": 9}, hovertext=hover, hoverinfo="text",
            marker={"color": colors[name], "size": np.where(d["is_seed"], 18, 10).tolist(),
                    "symbol": np.where(d["is_seed"], "star", "circle").tolist(), "line": {"width": 0.5, "color": "white"}}))
    fig.update_layout(title=title, height=700, template="plotly_white", xaxis={"visible": False}, yaxis={"visible": False},
                      legend={"title": {"text": "SAE (members)"}})
    return fig
