"""Feature records (the JSON-able dicts of docs/atlas.md) from an SAE's contexts and the atlas's arrays.
Values are exact; the writers round them (the site to 3 significant digits, the Neuronpedia export to 3
decimals)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from geometry.atlas.features import LogitLens, TokenTexts, display_windows, quantile_bins
from geometry.matching import CrossLinks
from sae.interp.store import HIST_EDGES, TopContexts


def _contexts(ctx: TopContexts, tt: TokenTexts, slots, f: int, ranks: np.ndarray) -> list[dict]:
    """The context windows of feature f at `ranks` of `slots` (ctx.top or ctx.random), as record dicts."""
    windows = display_windows(tt, slots.tokens[f, ranks], slots.acts[f, ranks], ctx.window[0])
    return [{"tokens": texts, "acts": acts, "centre": centre, "title": ctx.titles.get(doc, ""), "value": value}
            for (texts, acts, centre), doc, value in zip(windows, slots.doc[f, ranks].tolist(), slots.value[f, ranks].tolist())]


def _samples(ctx: TopContexts, tt: TokenTexts, f: int) -> list[dict]:
    """The random activating contexts, grouped by activation-quantile bins of the feature's histogram."""
    if ctx.hist is None:
        return []
    kept = np.flatnonzero(ctx.random.doc[f] >= 0)
    values = ctx.random.value[f, kept]
    out = []
    bins = quantile_bins(ctx.hist[f])
    for i, (lo, hi, share) in enumerate(bins):
        inside = (values >= lo) & ((values < hi) | (i == len(bins) - 1))
        ranks = kept[inside][np.argsort(-values[inside], kind="stable")]
        out.append({"lo": lo, "hi": hi, "share": share, "contexts": _contexts(ctx, tt, ctx.random, f, ranks)})
    return out


def _hist(ctx: TopContexts, f: int) -> dict:
    """The feature's histogram over the bins from its first to its last non-empty one."""
    if ctx.hist is None or not ctx.hist[f].any():
        return {"edges": [], "counts": []}
    nz = np.flatnonzero(ctx.hist[f])
    lo, hi = int(nz[0]), int(nz[-1]) + 1
    return {"edges": HIST_EDGES[lo:hi + 1].tolist(), "counts": ctx.hist[f, lo:hi].tolist()}


def _pairs(ids: Iterable[int], values: Iterable[float]) -> list[list]:
    return [[int(i), float(v)] for i, v in zip(ids, values) if i >= 0]


def feature_records(ctx: TopContexts, labels: pd.Series, lens: LogitLens, nearest: tuple[np.ndarray, np.ndarray],
                    links: dict[str, CrossLinks], compared: dict[str, pd.DataFrame], slugs: dict[str, str],
                    names: dict[str, str], vocab: list[str], features: Iterable[int]) -> list[dict]:
    """One record per feature of `features`: links to every other SAE of `links` (spec -> CrossLinks),
    with classes and families where `compared` (spec -> DataFrame class, family) has them."""
    out, tt = [], TokenTexts(ctx)
    for f in features:
        record = {
            "id": int(f), "label": str(labels.iloc[f]) if isinstance(labels.iloc[f], str) else "",
            "count": int(ctx.counts[f]), "frequency": float(ctx.counts[f] / max(ctx.tokens, 1)),
            "max": float(ctx.top.value[f, 0]) if ctx.top.doc.shape[1] and ctx.top.doc[f, 0] >= 0 else 0.0,
            "top": _contexts(ctx, tt, ctx.top, f, np.flatnonzero(ctx.top.doc[f] >= 0)),
            "samples": _samples(ctx, tt, f), "hist": _hist(ctx, f),
            "logits": {"top": [[vocab[i], v] for i, v in zip(lens.top_ids[f], lens.top_values[f].tolist())],
                       "bottom": [[vocab[i], v] for i, v in zip(lens.bottom_ids[f], lens.bottom_values[f].tolist())]},
            "nearest": _pairs(nearest[0][f], nearest[1][f]),
            "links": [],
        }
        for spec, cl in links.items():
            known = compared.get(spec)
            record["links"].append({
                "slug": slugs[spec], "name": names[spec],
                "parent": [int(cl.parent[f]), float(cl.match_cos[f, 0])] if cl.parent[f] >= 0 else None,
                "children": [[j, c] for j, c in cl.children[f]],
                "matches": _pairs(cl.match_ids[f], cl.match_cos[f]),
                "class": None if known is None else str(known["class"].iloc[f]),
                "family": None if known is None else int(known["family"].iloc[f]),
            })
        out.append(record)
    return out
