"""The neighbourhood of seed features across SAEs (the Llama Scope paper's Fig. 7).

    nb = neighborhood("8x", [best], {"vanilla": 6, "8x": 6, "32x": 24},
                      {"vanilla": "demo:L15R-8x-Vanilla", "8x": "demo:L15R-8x", "32x": "demo:L15R-32x"},
                      labels={"8x": labels_8x})
    nb.members, nb.edges, nb.summary; nb.figure(); nb.write("out/threats")

In every member SAE, the n features whose decoder rows are closest (cosine) to any seed (the seeds
themselves count in their own SAE, as in the paper: 6 in L15R-8x-Vanilla, 6 in L15R-8x-TopK with the
seed, 24 in L15R-32x-TopK); a 2-D UMAP of their directions (cosine, fixed seed); edges between members
of different SAEs with cos >= `edge_cut`; the smallest pairwise cosine of the whole set against the
paper's epsilon = sqrt(12 ln F / D); and, for members of a wider SAE, their class relative to the
narrower one by geometry.compare's rule (same / refined / composite / novel / ambiguous), computed for
these members only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from geometry import novelty
from geometry.directions import decoder_rows
from geometry.labels import label_lookup
from geometry.layout import umap_2d
from geometry.options import GeometryError, Options
from geometry.plot.links import OPEN_ON_CLICK
from geometry.plot.maps import neighborhood_map
from geometry.similarity import top_k_cosine
from geometry.statistics import epsilon
from sae import ShapeError
from sae.io import write_json, write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

FILES = ("members.csv", "edges.csv", "summary.json", "neighborhood.html")  # what Neighborhood.write writes


@dataclass
class Neighborhood:
    members: pd.DataFrame  # sae, feature, is_seed, cos_to_seed, label, x, y, class
    edges: pd.DataFrame  # sae_a, feature_a, sae_b, feature_b, cos (members of different SAEs, cos >= edge_cut)
    summary: dict  # seeds, counts, min pairwise cos, epsilon per SAE, umap parameters, class references

    def figure(self, *, title: str | None = None, atlas: str | None = None) -> go.Figure:
        return neighborhood_map(self.members, self.edges, title=title or self.summary.get("title", "Neighbourhood"),
                                atlas=atlas)

    def write(self, folder: str | Path, *, atlas: str | None = None) -> Path:
        """The FILES (members.csv, edges.csv, summary.json, neighborhood.html with plotly.js inline) into
        `folder`; with `atlas` (the feature atlas's folder relative to `folder`) a click on a member opens
        its atlas page."""
        folder = Path(folder)
        write_text(folder / "members.csv", self.members.to_csv(index=False))
        write_text(folder / "edges.csv", self.edges.to_csv(index=False))
        write_json(folder / "summary.json", self.summary)
        page = self.figure(atlas=atlas).to_html(include_plotlyjs=True, full_html=True,
                                               post_script=OPEN_ON_CLICK if atlas else None)
        write_text(folder / "neighborhood.html", page)
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


def class_references(members: dict[str, int], sizes: dict[str, int], seed_sae: str) -> dict[str, str | None]:
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
    refs = class_references(members, sizes, seed_sae)
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
