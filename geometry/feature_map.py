"""A map of whole dictionaries: UMAP of every feature of one or several SAEs, clusters, composition.

    from geometry.feature_map import feature_map   # also geometry.clusters.feature_map
    m = feature_map({"8x": "demo:L15R-8x", "32x": "demo:L15R-32x"}, labels={"8x": labels_8x})
    m.points      # sae, feature, x, y, cluster, label
    m.clusters    # cluster, size, n_<sae>, share_<sae>, enrichment_<sae>, top_labels
    m.write("out/map")   # points.csv, clusters.csv, summary.json, map.html (WebGL scatter)

Pipeline (every parameter is recorded in `summary`):
1. unit decoder rows of every SAE (all-zero and non-finite rows are left out and counted);
2. PCA to `pca_dims` (64) dimensions (`torch.svd_lowrank`, centred), rows re-normalised;
3. the exact cosine kNN graph in that space with `geometry.similarity.top_k_cosine` (streamed, cached on
   disk, on CUDA when there is one); `pca_dims=None` uses the full rows (exact decoder cosine);
4. clusters: Leiden (igraph + leidenalg, RB-configuration quality at `resolution`) on UMAP's fuzzy
   kNN graph, or HDBSCAN (scikit-learn) on the 2-D layout (cluster -1 = noise);
5. 2-D layout: UMAP (umap-learn, cosine, `random_state=seed`: deterministic, single-threaded) from the
   same kNN graph (`precomputed_knn`), so the graph is computed once.
Per cluster: its size, how many features each SAE has in it (`n_<sae>`), the share of that SAE's
features it holds and the enrichment (share / the SAE's share of all points: where a wider SAE spent its
extra features), and the words most frequent in its members' labels.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from geometry.directions import load_rows
from geometry.labels import label_lookup
from geometry.layout import umap_2d
from geometry.options import GeometryError
from geometry.plot.maps import map_figure
from geometry.similarity import top_k_cosine, unit_rows
from geometry.timer import Timer
from sae.io import write_json, write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

METHODS = ("leiden", "hdbscan")


@dataclass
class FeatureMap:
    points: pd.DataFrame  # sae, feature, x, y, cluster, label
    clusters: pd.DataFrame  # cluster, size, n_<sae>, share_<sae>, enrichment_<sae>, top_labels
    summary: dict  # parameters, counts, timings

    def figure(self, *, annotate: int = 25) -> go.Figure:
        """WebGL scatter (plotly Scattergl, one trace per SAE), coloured by cluster or by SAE (buttons),
        labels on hover; the `annotate` largest clusters are named at their centre."""
        return map_figure(self.points, self.clusters, annotate=annotate)

    def write(self, folder: str | Path) -> Path:
        folder = Path(folder)
        write_text(folder / "points.csv", self.points.to_csv(index=False))
        write_text(folder / "clusters.csv", self.clusters.to_csv(index=False))
        write_json(folder / "summary.json", self.summary)
        write_text(folder / "map.html", self.figure().to_html(include_plotlyjs=True, full_html=True))
        return folder


def pca_rows(x: torch.Tensor, dims: int | None, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Rows projected on their top `dims` principal components (centred) and re-normalised; x itself
    when dims is None or >= d. Returns the rows and the share of the variance kept."""
    if not dims or dims >= x.shape[1]:
        return x, {"pca_dims": None}
    torch.manual_seed(seed)  # svd_lowrank draws a random start
    mean = x.mean(0, keepdim=True)
    _, s, v = torch.svd_lowrank(x, q=min(dims + 10, x.shape[1]), niter=3, M=mean)
    v = v[:, :dims]
    z = x @ v - mean @ v  # centred projection without a centred copy of x
    total = float(torch.linalg.vector_norm(x)) ** 2 - len(x) * float((mean * mean).sum())
    return unit_rows(z), {"pca_dims": dims, "pca_variance_kept": float((s[:dims] ** 2).sum()) / max(total, 1e-30)}


def knn_graph(z: torch.Tensor, k: int, *, cache=True, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN of every row among the others: (indices [n, k+1], cosine distances), self first."""
    n = len(z)
    nb = top_k_cosine(z, z, min(k + 1, n), normalised=True, cache=cache, device=device).a_to_b
    idx, cos = nb.indices.numpy(), nb.values.numpy()
    own = np.arange(n)[:, None]
    not_self = idx != own
    # keep the k best others in order, then put every row itself first (duplicates may outrank it)
    order = np.argsort(~not_self, axis=1, kind="stable")[:, : idx.shape[1] - 1]
    idx = np.concatenate([own, np.take_along_axis(idx, order, 1)], 1)
    cos = np.concatenate([np.ones((n, 1)), np.take_along_axis(cos, order, 1)], 1)
    return idx.astype(np.int64), np.clip(1.0 - cos, 0.0, 2.0).astype(np.float32)


def leiden(knn_idx: np.ndarray, knn_dist: np.ndarray, *, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Leiden communities (RB-configuration, `resolution`) of UMAP's fuzzy graph built from the kNN."""
    import igraph
    import leidenalg
    from umap.umap_ import fuzzy_simplicial_set

    n, k = knn_idx.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph, _, _ = fuzzy_simplicial_set(np.zeros((n, 1), np.float32), k, np.random.RandomState(seed), "cosine",
                                           knn_indices=knn_idx, knn_dists=knn_dist)
    graph = graph.tocoo()
    upper = graph.row < graph.col
    g = igraph.Graph(n=n, edges=np.stack([graph.row[upper], graph.col[upper]], 1).tolist(), directed=False)
    part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights=graph.data[upper].tolist(),
                                    resolution_parameter=resolution, seed=seed)
    return np.asarray(part.membership, np.int64)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0, 1, ... by decreasing size (ties: first appearance); -1 (noise) stays."""
    out = np.full(len(labels), -1, np.int64)
    real = labels >= 0
    ids, first, counts = np.unique(labels[real], return_index=True, return_counts=True)
    rank = np.empty(len(ids), np.int64)
    rank[np.lexsort((first, -counts))] = np.arange(len(ids))
    out[real] = rank[np.searchsorted(ids, labels[real])]
    return out


def cluster_table(points: pd.DataFrame, names: list[str], *, top_words: int = 5) -> pd.DataFrame:
    """cluster, size, n_<sae>, share_<sae> (of that SAE's features), enrichment_<sae> (share of the
    cluster / share of all points), top_labels (most frequent label words, with counts)."""
    counts = pd.crosstab(points["cluster"], points["sae"]).reindex(columns=names, fill_value=0)
    table = pd.DataFrame({"cluster": counts.index, "size": counts.sum(axis=1).to_numpy()})
    totals = counts.sum(axis=0)
    for name in names:
        table[f"n_{name}"] = counts[name].to_numpy()
    for name in names:
        table[f"share_{name}"] = (counts[name] / max(int(totals[name]), 1)).to_numpy()
    for name in names:
        table[f"enrichment_{name}"] = (counts[name] / counts.sum(axis=1) / (totals[name] / totals.sum())).to_numpy()
    words = {}
    for c, labs in points.groupby("cluster")["top_tokens" if "top_tokens" in points else "label"]:
        counter = Counter(w for lab in labs if lab for w in str(lab).split(", ")[:3] if w)
        words[c] = ", ".join(f"{w} ({n})" for w, n in counter.most_common(top_words))
    table["top_labels"] = table["cluster"].map(words).fillna("")
    return table


def feature_map(
    saes: dict,
    *,
    labels: dict[str, pd.DataFrame] | None = None,
    method: str = "leiden",
    n_neighbors: int = 15,
    seed: int = 0,
    pca_dims: int | None = 64,
    resolution: float = 1.0,
    min_cluster_size: int = 20,
    min_dist: float = 0.1,
    n_epochs: int | None = None,
    device: str | None = None,
    cache: bool | str | Path = True,
) -> FeatureMap:
    """Lay out and cluster every feature of `saes` (name -> SparseAutoencoder, spec for `sae.load`, or
    [F, d] matrix); `labels` maps names to label tables (feature, label[, top_tokens]). See the module
    docstring for the pipeline; `cache` stores the kNN pass like geometry.compare's similarity cache."""
    if method not in METHODS:
        raise GeometryError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if n_neighbors < 2:
        raise GeometryError(f"n_neighbors must be at least 2, got {n_neighbors}")
    t = Timer()
    rows = load_rows(saes)
    names = list(rows)
    d = next(iter(rows.values())).shape[1]
    keep = {n: np.flatnonzero(torch.isfinite(r).all(1).numpy() & (r.abs().sum(1) > 0).numpy()) for n, r in rows.items()}
    x = torch.cat([rows[n][torch.from_numpy(keep[n])] for n in names])
    sae_of = np.repeat(np.array(names, dtype=object), [len(keep[n]) for n in names])
    feature = np.concatenate([keep[n] for n in names])
    left_out = {n: int(len(rows[n]) - len(keep[n])) for n in names}
    del rows
    if len(x) < 4:
        raise GeometryError(f"need at least 4 live features, got {len(x)}")
    t.lap("load")
    z, pca = pca_rows(x, pca_dims, seed)
    del x
    t.lap("pca")
    k = min(n_neighbors, len(z) - 1)
    knn_idx, knn_dist = knn_graph(z, k, cache=cache, device=device)
    t.lap("knn")
    if method == "leiden":
        cluster = leiden(knn_idx, knn_dist, resolution=resolution, seed=seed)
        t.lap("cluster")
    xy, layout = umap_2d(z.numpy(), n_neighbors=k, min_dist=min_dist, seed=seed, knn=(knn_idx, knn_dist),
                         n_epochs=n_epochs)
    t.lap("umap")
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        cluster = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(xy)
        t.lap("cluster")
    cluster = _by_size(cluster)
    points = pd.DataFrame({"sae": sae_of, "feature": feature, "x": xy[:, 0], "y": xy[:, 1], "cluster": cluster})
    points["label"], points["top_tokens"] = "", ""
    for name in names:
        at = np.flatnonzero(sae_of == name)
        table = (labels or {}).get(name)
        points.loc[at, "label"] = label_lookup(table, feature[at])
        if table is not None and "top_tokens" in table:
            points.loc[at, "top_tokens"] = label_lookup(table, feature[at], "top_tokens")
    clusters = cluster_table(points, names)
    points = points.drop(columns=["top_tokens"], errors="ignore")
    t.lap("tables")
    summary = {
        "schema": "geometry.clusters/1", "saes": {n: {"n_features": int(len(keep[n]) + left_out[n]),
                                                    "n_mapped": int(len(keep[n])), "left_out": left_out[n]} for n in names},
        "n_points": int(len(points)), "d": int(d),
        "method": method, "n_clusters": int(clusters["cluster"].ge(0).sum()), "noise": int((cluster < 0).sum()),
        "params": {"n_neighbors": k, "seed": seed, "resolution": resolution if method == "leiden" else None,
                   "min_cluster_size": min_cluster_size if method == "hdbscan" else None, **pca, "umap": layout},
        "timings_s": t.done(),
    }
    return FeatureMap(points, clusters, summary)
