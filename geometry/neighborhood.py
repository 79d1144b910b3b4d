"""Neighbourhoods of seed features across SAEs (the Llama Scope paper's Fig. 7), and how to find seeds.

    python -m geometry.neighborhood demo:L15R-8x --keywords war,pandemic,famine,plague,disaster,crisis \\
        --members demo:L15R-8x-Vanilla=6,demo:L15R-8x=6,demo:L15R-32x=24 --out out/threats

    from geometry.neighborhood import find_seeds, best_seeds, concept_seeds, neighborhood
    hits = find_seeds(contexts_8x, ["war", "pandemic"])          # feature, keyword, score, label, ...
    nb = neighborhood("8x", [best], {"vanilla": 6, "8x": 6, "32x": 24},
                      {"vanilla": "demo:L15R-8x-Vanilla", "8x": "demo:L15R-8x", "32x": "demo:L15R-32x"},
                      labels={"8x": labels_8x})
    nb.members, nb.edges, nb.summary; nb.figure(); nb.write("out/threats")

Seeds: by index; by keywords (`find_seeds`: the share of a feature's top-context activation that falls
on words matching a keyword, and the share of its top documents whose title matches; a keyword matches
a whole word, plus the endings s / es / ed / ing, case-insensitive); by a concept direction
(`concept_seeds`: the difference of the mean activations over two sets of texts, matched to decoder
rows by cosine).

A neighbourhood: in every member SAE, the n features whose decoder rows are closest (cosine) to any
seed (the seeds themselves count in their own SAE, as in the paper: 6 in L15R-8x-Vanilla, 6 in
L15R-8x-TopK with the seed, 24 in L15R-32x-TopK); a 2-D UMAP of their directions (cosine, fixed seed);
edges between members of different SAEs with cos >= `edge_cut`; the smallest pairwise cosine of the
whole set against the paper's epsilon = sqrt(12 ln F / D); and, for members of a wider SAE, their
class relative to the narrower one by geometry.compare's rule (same / refined / composite / novel /
ambiguous), computed for these members only.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sae import ShapeError
from sae import load as load_sae
from sae.errors import run_cli
from sae.io import write_json, write_text

from geometry import novelty
from geometry.clusters import decoder_rows, label_lookup, sae_colors, umap_2d
from geometry.compare import epsilon
from geometry.options import GeometryError, Options
from geometry.similarity import top_k_cosine

SEED_COLUMNS = ["feature", "keyword", "score", "label", "token_score", "title_score", "n_contexts"]


# ---------------------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------------------
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
    from sae.interp.contexts import TopContexts

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
        from sae.interp.labels import label_features

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
    from sae.data.stream import ActivationStream
    from sae.eval.evaluate import sae_sites
    from sae.lm.sites import load_model

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


# ---------------------------------------------------------------------------------------------------
# the neighbourhood
# ---------------------------------------------------------------------------------------------------
@dataclass
class Neighborhood:
    members: pd.DataFrame  # sae, feature, is_seed, cos_to_seed, label, x, y, class
    edges: pd.DataFrame  # sae_a, feature_a, sae_b, feature_b, cos (members of different SAEs, cos >= edge_cut)
    summary: dict  # seeds, counts, min pairwise cos, epsilon per SAE, umap parameters, class references

    def figure(self, *, title: str | None = None):
        return figure(self.members, self.edges, title=title or self.summary.get("title", "Neighbourhood"))

    def write(self, folder: str | Path) -> Path:
        """members.csv, edges.csv, summary.json, neighborhood.html (plotly.js inline) into `folder`."""
        folder = Path(folder)
        write_text(folder / "members.csv", self.members.to_csv(index=False))
        write_text(folder / "edges.csv", self.edges.to_csv(index=False))
        write_json(folder / "summary.json", self.summary)
        write_text(folder / "neighborhood.html", self.figure().to_html(include_plotlyjs=True, full_html=True))
        return folder


def member_classes(narrow: torch.Tensor, wide: torch.Tensor, features: np.ndarray, opts: Options = Options()) -> np.ndarray:
    """geometry.compare's class of the wide SAE's `features` relative to the narrow SAE, computed for those
    rows only: unit rows narrow [n_a, d] and wide [n_b, d]; zero / non-finite rows are left out as compare does."""
    live_a = np.flatnonzero((narrow.abs().sum(1) > 0).numpy() & torch.isfinite(narrow).all(1).numpy())
    A = narrow[torch.from_numpy(live_a)]
    q = wide[torch.from_numpy(features)]
    nb = top_k_cosine(q, A, min(opts.k, len(A)), normalised=True).a_to_b
    best = nb.indices[:, 0]
    back = top_k_cosine(A[best], wide, 1, normalised=True).a_to_b.indices[:, 0].numpy()  # best wide row of each parent
    mutual = back == features
    n_cand = min(opts.candidates, nb.values.shape[1])
    dec = novelty.decompose(A, nb.indices[:, :n_cand], nb.values[:, :n_cand], opts.max_atoms)
    return novelty.classify(nb.values[:, 0].numpy(), mutual, dec, opts)


def _references(members: dict[str, int], sizes: dict[str, int], seed_sae: str) -> dict[str, str | None]:
    """For every member SAE, the narrower SAE its classes refer to: the seed SAE if it is narrower, else
    the widest narrower member (first listed on ties); None if no member is narrower."""
    out = {}
    for name in members:
        narrower = [m for m in [seed_sae, *members] if sizes[m] < sizes[name]]
        if not narrower:
            out[name] = None
        elif seed_sae in narrower:
            out[name] = seed_sae
        else:
            out[name] = max(narrower, key=lambda m: (sizes[m], -list(members).index(m)))
    return out


def neighborhood(
    seed_sae: str,
    seeds: int | Iterable[int],
    members: dict[str, int],
    saes: dict,
    labels: dict[str, pd.DataFrame] | None = None,
    edge_cut: float = 0.7,
    seed: int = 0,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    options: Options | None = None,
    title: str | None = None,
    live: dict[str, np.ndarray] | None = None,
) -> Neighborhood:
    """The neighbourhood of `seeds` (feature ids in SAE `seed_sae`) in every SAE of `members` (name -> n).

    saes: name -> SparseAutoencoder, spec for `sae.load`, or [F, d] decoder matrix, for the seed SAE and
    every member. labels: name -> label table (feature, label, ...) for the hover text. `options`:
    geometry.compare's thresholds for the classes. `seed` fixes the UMAP layout. live: name -> [F] bool,
    the features that may be members (e.g. those that fired on the contexts' tokens); default all."""
    opts = options or Options()
    seeds = [int(seeds)] if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seeds:
        raise GeometryError("give at least one seed feature")
    missing = [n for n in [seed_sae, *members] if n not in saes]
    if missing:
        raise GeometryError(f"no SAE given for {', '.join(missing)} (saes has {', '.join(map(str, saes))})")
    bad = {n: k for n, k in members.items() if int(k) < 1}
    if bad:
        raise GeometryError(f"member counts must be positive: {bad}")
    rows = {name: decoder_rows(saes[name]) for name in dict.fromkeys([seed_sae, *members])}
    dims = {r.shape[1] for r in rows.values()}
    if len(dims) > 1:
        raise ShapeError(f"the SAEs have different d: {', '.join(f'{n} d={r.shape[1]}' for n, r in rows.items())}")
    out_of_range = [s for s in seeds if not 0 <= s < len(rows[seed_sae])]
    if out_of_range:
        raise GeometryError(f"seed {out_of_range[0]} out of range: {seed_sae} has {len(rows[seed_sae])} features")
    seed_dirs = rows[seed_sae][torch.tensor(seeds)]
    if bool((seed_dirs.abs().sum(1) == 0).any()):
        raise GeometryError(f"a seed of {seed_sae} has an all-zero decoder row")

    parts = []
    for name, n in members.items():
        r = rows[name]
        pool = np.flatnonzero(live[name]) if live is not None and name in live else np.arange(len(r))
        if not len(pool):
            raise GeometryError(f"{name} has no live feature to take members from")
        nb = top_k_cosine(seed_dirs, r[torch.from_numpy(pool)], min(int(n), len(pool)), normalised=True).a_to_b
        at = nb.indices.numpy().ravel()  # per seed: its n nearest, as rows of the pool
        cand = pd.DataFrame({"feature": np.where(at >= 0, pool[np.clip(at, 0, None)], -1),
                             "cos_to_seed": nb.values.numpy().ravel()})
        if name == seed_sae:  # the seeds count among their own SAE's members
            cand = pd.concat([pd.DataFrame({"feature": seeds, "cos_to_seed": 2.0}), cand])
        cand = cand[cand["feature"] >= 0].sort_values("cos_to_seed", ascending=False, kind="stable")
        cand = cand.drop_duplicates("feature").head(int(n))
        cand["cos_to_seed"] = (r[torch.tensor(cand["feature"].to_numpy())] @ seed_dirs.T).max(1).values.numpy()
        cand.insert(0, "sae", name)
        cand["is_seed"] = (name == seed_sae) & cand["feature"].isin(seeds)
        parts.append(cand)
    table = pd.concat(parts, ignore_index=True)[["sae", "feature", "is_seed", "cos_to_seed"]]
    if len(table) < 4:
        raise GeometryError(f"a neighbourhood needs at least 4 members to lay out, got {len(table)}")
    dirs = torch.cat([rows[s][torch.tensor([f])] for s, f in zip(table["sae"], table["feature"])])
    gram = (dirs @ dirs.T).numpy()

    table["label"] = ""
    for name in members:
        at = np.flatnonzero(table["sae"] == name)
        table.loc[at, "label"] = label_lookup((labels or {}).get(name), table["feature"].to_numpy()[at])
    xy, layout = umap_2d(dirs.numpy(), n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)
    table["x"], table["y"] = xy[:, 0], xy[:, 1]

    sizes = {name: len(r) for name, r in rows.items()}
    refs = _references(members, sizes, seed_sae)
    table["class"] = ""
    for name, ref in refs.items():
        if ref is not None:
            at = np.flatnonzero(table["sae"] == name)
            table.loc[at, "class"] = member_classes(rows[ref], rows[name], table["feature"].to_numpy()[at], opts)

    i, j = np.triu_indices(len(table), 1)
    cross = (table["sae"].to_numpy()[i] != table["sae"].to_numpy()[j]) & (gram[i, j] >= edge_cut)
    edges = pd.DataFrame({"sae_a": table["sae"].to_numpy()[i[cross]], "feature_a": table["feature"].to_numpy()[i[cross]],
                          "sae_b": table["sae"].to_numpy()[j[cross]], "feature_b": table["feature"].to_numpy()[j[cross]],
                          "cos": gram[i[cross], j[cross]]})
    low = int(np.argmin(gram[i, j]))
    d = next(iter(dims))
    summary = {
        "schema": "geometry.neighborhood/1",
        "title": title or f"Neighbourhood of {seed_sae} #{', #'.join(map(str, seeds))}",
        "seed_sae": seed_sae, "seeds": seeds, "members": {n: int((table["sae"] == n).sum()) for n in members},
        "requested": {n: int(k) for n, k in members.items()},
        "min_pairwise_cos": float(gram[i[low], j[low]]),
        "farthest_pair": [f"{table['sae'][m]} #{table['feature'][m]}" for m in (i[low], j[low])],
        "epsilon": {n: epsilon(sizes[n], d) for n in rows},
        "n_features": sizes, "d": d, "edge_cut": edge_cut, "n_edges": len(edges),
        "class_reference": refs, "class_options": {f.name: getattr(opts, f.name) for f in fields(opts)},
        "umap": layout,
    }
    return Neighborhood(table, edges, summary)


def figure(members: pd.DataFrame, edges: pd.DataFrame, title: str = "Neighbourhood", *, text_chars: int = 28):
    """Fig. 7 from the tables alone: members (sae, feature, is_seed, cos_to_seed, label, x, y, class) as
    points coloured by SAE (seeds as stars), short labels beside them, everything on hover; edges as
    grey lines."""
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
            textfont={"size": 9}, hovertext=hover, hoverinfo="text",
            marker={"color": colors[name], "size": np.where(d["is_seed"], 18, 10).tolist(),
                    "symbol": np.where(d["is_seed"], "star", "circle").tolist(), "line": {"width": 0.5, "color": "white"}}))
    fig.update_layout(title=title, height=700, template="plotly_white", xaxis={"visible": False}, yaxis={"visible": False},
                      legend={"title": {"text": "SAE (members)"}})
    return fig


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def parse_members(text: str) -> dict[str, int]:
    """`A=6,B=6,C=24` -> {"A": 6, "B": 6, "C": 24}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, n = part.rpartition("=")
        if not eq or not name or not n.isdigit() or int(n) < 1:
            raise GeometryError(f"--members takes SPEC=N pairs separated by commas (N >= 1), not {part!r}")
        out[name] = int(n)
    if not out:
        raise GeometryError("--members is empty")
    return out


def _read_texts(path: Path) -> list[str]:
    from sae.data.text import iter_texts

    return list(iter_texts(path))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geometry.neighborhood",
        description="Regenerate the Llama Scope paper's Fig. 7 for any seed on any SAEs: find seed features (by "
        "index, keywords over labels and top contexts, or a concept direction), take each member SAE's nearest "
        "decoder rows, lay them out with UMAP, and write members.csv, edges.csv, summary.json and neighborhood.html. "
        "Top contexts (and labels) are collected on a token budget and kept for reruns.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("seed_sae", help="the SAE the seeds belong to (name or folder, e.g. demo:L15R-8x)")
    p.add_argument("--members", required=True, type=parse_members,
                   help="member SAEs and how many neighbours each, e.g. demo:L15R-8x-Vanilla=6,demo:L15R-8x=6,"
                   "demo:L15R-32x=24 (the seed SAE's count includes the seeds)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--seeds", help="seed feature ids, comma-separated")
    how.add_argument("--keywords", help="keywords, comma-separated (e.g. war,pandemic,famine,plague,climate,crisis,"
                     "disaster,nuclear): seeds are the features with the highest summed keyword score")
    how.add_argument("--concept", nargs=2, type=Path, metavar=("TEXTS_A", "TEXTS_B"),
                     help="two text files (.txt / .jsonl): seeds point along mean(A) - mean(B)")
    p.add_argument("--n-seeds", type=int, default=1, help="seeds taken from --keywords or --concept")
    p.add_argument("--min-score", type=float, default=0.1, help="keyword hits below this score are ignored")
    p.add_argument("--none-ok", action="store_true",
                   help="no keyword match is a result, not an error: say so, keep seeds.csv and exit 0")
    p.add_argument("--tokens", type=int, default=100_000, help="token budget for the top contexts (labels, keywords)")
    p.add_argument("--contexts-dir", type=Path, help="where top contexts are kept and resumed (default OUT/contexts)")
    p.add_argument("--no-labels", action="store_true", help="skip contexts and labels (only with --seeds or --concept)")
    p.add_argument("--model", default="embedded", help="the model the SAEs read")
    p.add_argument("--dataset", default="embedded-train", help="corpus for the top contexts")
    p.add_argument("--edge-cut", type=float, default=0.7, help="draw cross-SAE edges at cos >= this")
    p.add_argument("--all-features", action="store_true",
                   help="members from every feature (default: only features that fired on the contexts' tokens)")
    p.add_argument("--seed", type=int, default=0, help="UMAP random state")
    p.add_argument("--n-neighbors", type=int, default=15, help="UMAP n_neighbors (capped at members - 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, print nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sae.interp.contexts import collect_contexts, folder_name
    from sae.interp.labels import label_features

    if args.no_labels and args.keywords:
        raise GeometryError("--keywords needs the top contexts: drop --no-labels")
    names = list(dict.fromkeys([args.seed_sae, *args.members]))
    saes = {name: load_sae(name) for name in names}
    labels: dict[str, pd.DataFrame] = {}
    contexts = {}
    if not args.no_labels:
        where = args.contexts_dir or args.out / "contexts"
        contexts = collect_contexts(saes, model=args.model, dataset=args.dataset, tokens=args.tokens,
                                    out={n: where / folder_name(n) for n in names}, resume=True, progress=not args.quiet)
        for name in names:
            labels[name] = label_features(contexts[name])
            write_text(args.out / "labels" / f"{folder_name(name)}.csv", labels[name].to_csv(index=False))
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise GeometryError(f"--seeds takes feature ids separated by commas, not {args.seeds!r}") from None
        picked = pd.DataFrame({"feature": seeds})
    elif args.keywords:
        hits = find_seeds(contexts[args.seed_sae], args.keywords, labels=labels[args.seed_sae], min_score=args.min_score)
        write_text(args.out / "seeds.csv", hits.to_csv(index=False))
        picked = best_seeds(hits, args.n_seeds)
        if picked.empty:
            message = (f"no feature of {args.seed_sae} matches {args.keywords} with score >= {args.min_score} "
                       f"in {contexts[args.seed_sae].tokens:,} tokens (see {args.out / 'seeds.csv'})")
            if not args.none_ok:
                raise GeometryError(message)
            print(f"{message}: no neighbourhood drawn")
            return 0
        if not args.quiet:
            print("keyword hits (best per keyword):")
            print(hits.groupby("keyword", sort=False).head(3).to_string(index=False, max_colwidth=70))
    else:
        picked = concept_seeds(saes[args.seed_sae], _read_texts(args.concept[0]), _read_texts(args.concept[1]),
                               model=args.model, n=args.n_seeds)
        write_text(args.out / "seeds.csv", picked.to_csv(index=False))
    live = {n: contexts[n].counts > 0 for n in contexts} if contexts and not args.all_features else None
    nb = neighborhood(args.seed_sae, picked["feature"].tolist(), args.members, saes, labels=labels or None,
                      edge_cut=args.edge_cut, seed=args.seed, n_neighbors=args.n_neighbors, live=live)
    nb.write(args.out)
    if not args.quiet:
        s = nb.summary
        eps = ", ".join(f"{n} {v:.3f}" for n, v in s["epsilon"].items())
        print(f"\n{s['title']}: {sum(s['members'].values())} members {s['members']}; min pairwise cos "
              f"{s['min_pairwise_cos']:.3f} (epsilon {eps}); {s['n_edges']} cross-SAE edges at cos >= {args.edge_cut}")
        print(nb.members[["sae", "feature", "is_seed", "cos_to_seed", "class", "label"]].to_string(
            index=False, max_colwidth=60, float_format=lambda v: f"{v:.3f}"))
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
