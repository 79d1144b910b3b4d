"""Colours and traces shared by the paper's figures: a colour per value, one legend entry per group,
and rows of metrics drawn as lines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

PALETTE = qualitative.D3
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def colour_map(values: Sequence[str]) -> dict[str, str]:
    """A colour of PALETTE per value, in order."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(values)}


def legend_once(fig: go.Figure, trace: go.Scatter | go.Bar, row: int, col: int, seen: set) -> None:
    """Add `trace` at (row, col), in the legend only the first time its legendgroup is `seen`."""
    trace.showlegend = trace.legendgroup not in seen
    seen.add(trace.legendgroup)
    fig.add_trace(trace, row=row, col=col)


def line_rows(df: pd.DataFrame, x: str, x_title: str, metrics: Sequence[tuple[str, str]], colour_by: str,
               dash_by: str | None = None, name: Callable[[str, str], str] = lambda c, d: c, *,
               hover: str | None = None, markers: bool = True) -> go.Figure:
    """One row per metric (column, y-axis title) against column `x`, one line per value of `colour_by`
    (colour) and `dash_by` (dash), both in order of first appearance; hover adds the column `hover`."""
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.08)
    colours = colour_map(list(dict.fromkeys(df[colour_by])))
    dash_col = df[dash_by] if dash_by else pd.Series("", index=df.index)
    dashes = {v: DASHES[i % len(DASHES)] for i, v in enumerate(dict.fromkeys(dash_col))}
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
