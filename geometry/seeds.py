"""Seed features for a neighbourhood: by keywords over top contexts or labels, or by a concept direction.

    hits = find_seeds(contexts_8x, ["war", "pandemic"])          # feature, keyword, score, label, ...
    best = best_seeds(hits, 1)

By keywords (`find_seeds`: the share of a feature's top-context activation that falls on words matching
a keyword, and the share of its top documents whose title matches; a keyword matches a whole word, plus
the endings s / es / ed / ing, case-insensitive); by a concept direction (`concept_seeds`: the
difference of the mean activations over two sets of texts, matched to decoder rows by cosine).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geometry.directions import decoder_rows
from geometry.labels import label_lookup
from geometry.options import GeometryError
from sae import load as load_sae
from sae.data.stream import ActivationStream
from sae.eval.resolve import sae_sites
from sae.interp.contexts import TopContexts
from sae.interp.labels import label_features
from sae.lm.models import load_model

SEED_COLUMNS = ["feature", "keyword", "score", "label", "token_score", "title_score", "n_contexts"]


def keyword_pattern(keyword: str) -> re.Pattern:
    """A whole word, with the endings s / es / ed / ing, case-insensitive."""
    word = keyword.strip().lower()
    if not word:
        raise GeometryError("empty keyword")
    return re.compile(rf"(?<![a-z]){re.escape(word)}(?:s|es|ed|ing)?(?![a-z])", re.I)


def _keywords(keywords: str | Iterable[str]) -> list[str]:
    words = [w.strip() for w in (keywords.split(",") if isinstance(keywords, str) else keywords) if w.strip()]
    if not words:
        raise GeometryError("give at least one keyword")
    return list(dict.fromkeys(words))


def _context_scores(ctx, patterns: dict[str, re.Pattern]) -> pd.DataFrame:
    """Per (feature, keyword): share of the top-context activation on matching words; matching titles
    among its top documents, out of n_top (so that one matching document is weak evidence)."""
    top = ctx.top
    ids = np.array(sorted(ctx.vocab), np.int64)
    text_of = np.full((int(ids.max()) + 1) if len(ids) else 1, "", dtype=object)
    text_of[ids] = [ctx.vocab[int(i)] for i in ids]
    f_all, s_all = np.nonzero(top.doc >= 0)
    total = np.zeros(ctx.n_features)
    np.add.at(total, f_all, top.acts[f_all, s_all].sum(1))
    hit = {k: np.zeros(ctx.n_features) for k in patterns}
    titled = {k: np.zeros(ctx.n_features) for k in patterns}
    n_ctx = np.bincount(f_all, minlength=ctx.n_features)
    for f, s in zip(f_all, s_all):
        keep = top.tokens[f, s] >= 0
        pieces = text_of[top.tokens[f, s][keep]]
        text = "".join(pieces)
        title = ctx.titles.get(int(top.doc[f, s]), "")
        ends = np.cumsum([len(p) for p in pieces])
        starts = ends - [len(p) for p in pieces]
        acts = top.acts[f, s][keep]
        for k, pat in patterns.items():
            for m in pat.finditer(text):
                on = (starts < m.end()) & (ends > m.start())
                hit[k][f] += acts[on].sum()
            if title and pat.search(title):
                titled[k][f] += 1
    frames = []
    for k in patterns:
        frames.append(pd.DataFrame({"feature": np.arange(ctx.n_features), "keyword": k,
                                    "token_score": np.divide(hit[k], total, out=np.zeros_like(total), where=total > 0),
                                    "title_score": titled[k] / top.doc.shape[1], "n_contexts": n_ctx}))
    return pd.concat(frames, ignore_index=True)


def _label_scores(labels: pd.DataFrame, patterns: dict[str, re.Pattern]) -> pd.DataFrame:
    """Per (feature, keyword) from a label table: rank-weighted share of matching top tokens, share of
    matching top titles."""
    frames = []
    for k, pat in patterns.items():
        tok, tit = [], []
        for tokens, titles in zip(labels.get("top_tokens", labels["label"]).astype(str),
                                  labels.get("top_titles", pd.Series("", index=labels.index)).astype(str)):
            words = [w for w in tokens.split(", ") if w]
            weights = 1.0 / np.arange(1, len(words) + 1)
            tok.append(float(weights[[bool(pat.search(w)) for w in words]].sum() / weights.sum()) if words else 0.0)
            names = [t for t in titles.split("; ") if t]
            tit.append(float(np.mean([bool(pat.search(t)) for t in names])) if names else 0.0)
        frames.append(pd.DataFrame({"feature": labels["feature"].to_numpy(), "keyword": k, "token_score": tok,
                                    "title_score": tit,
                                    "n_contexts": labels.get("n_contexts", pd.Series(np.inf, index=labels.index))}))
    return pd.concat(frames, ignore_index=True)


def find_seeds(source, keywords: str | Iterable[str], *, labels: pd.DataFrame | None = None,
               min_score: float = 0.1, min_contexts: int = 3) -> pd.DataFrame:
    """Features matching keywords, one row per (feature, keyword) with score >= min_score, best first.

    source: a `sae.interp.contexts.TopContexts` (scores from the top contexts' words and document titles) or a
    label table from `sae.interp.labels.label_features` (scores from its top tokens and titles). score =
    max(token_score, title_score); features with fewer than `min_contexts` top contexts (or, for a label
    table, n_contexts when it has that column) are left out. label from `labels` (or the table itself;
    for contexts without `labels`, computed by the offline labeller for the hits)."""
    patterns = {k: keyword_pattern(k) for k in _keywords(keywords)}
    if isinstance(source, TopContexts):
        scores = _context_scores(source, patterns)
    elif isinstance(source, pd.DataFrame) and {"feature", "label"} <= set(source.columns):
        scores = _label_scores(source, patterns)
        labels = source if labels is None else labels
    else:
        raise GeometryError("find_seeds needs TopContexts (sae.interp.contexts) or a label table (feature, label, ...)")
    scores["score"] = scores[["token_score", "title_score"]].max(axis=1)
    hits = scores[(scores["score"] >= min_score) & (scores["n_contexts"] >= min_contexts)].copy()
    if labels is None and len(hits):
        labels = label_features(source, features=np.unique(hits["feature"]))
    hits["label"] = label_lookup(labels, hits["feature"].to_numpy())
    return hits.sort_values(["score", "feature"], ascending=[False, True], ignore_index=True)[SEED_COLUMNS]


def best_seeds(hits: pd.DataFrame, n: int = 1) -> pd.DataFrame:
    """Features ranked by their summed score over the keywords (so one that matches wars *and* pandemics
    beats one that matches only wars): feature, score, n_keywords, keywords, label."""
    if hits.empty:
        return pd.DataFrame(columns=["feature", "score", "n_keywords", "keywords", "label"])
    g = hits.groupby("feature")
    out = pd.DataFrame({"score": g["score"].sum(), "n_keywords": g["keyword"].nunique(),
                        "keywords": g["keyword"].agg(lambda k: ", ".join(sorted(set(k)))), "label": g["label"].first()})
    return out.reset_index().sort_values(["score", "feature"], ascending=[False, True], ignore_index=True).head(n)


@torch.no_grad()
def concept_seeds(sae, texts_a: Iterable[str], texts_b: Iterable[str], *, model="embedded", tokenizer=None,
                  n: int = 10, tokens: int = 50_000, device: str | None = None) -> pd.DataFrame:
    """Features whose decoder rows point along a concept: v = mean activation (at the SAE's input site)
    over texts_a minus over texts_b, at most `tokens` ordinary tokens each; the n rows with the largest
    cos(row, v). Returns DataFrame (feature, cos), best first."""
    if isinstance(sae, (str, Path)):
        sae = load_sae(sae)
    hook = sae_sites(sae)[0].hook
    if isinstance(model, (str, Path)):
        model, tokenizer, _ = load_model(str(model), device=device)
    means = []
    for texts in (list(texts_a), list(texts_b)):
        if not texts:
            raise GeometryError("concept_seeds needs at least one text on each side")
        stream = ActivationStream(model, tokenizer, source=texts, hooks=[hook], shuffle=False, max_tokens=tokens,
                                  progress=False)
        total, count = torch.zeros(sae.d_in, dtype=torch.float64), 0
        for chunk in stream.chunks():
            total += chunk[hook].double().sum(0)
            count += len(chunk[hook])
        means.append(total / max(count, 1))
    v = (means[0] - means[1]).float()
    if float(v.norm()) == 0:
        raise GeometryError("the two sets of texts have the same mean activation: no concept direction")
    cos = decoder_rows(sae) @ (v / v.norm())
    top = cos.topk(min(n, len(cos)))
    return pd.DataFrame({"feature": top.indices.numpy(), "cos": top.values.numpy()})
