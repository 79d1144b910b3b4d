"""A map of whole dictionaries: UMAP of every feature of one or several SAEs, clusters, composition.

    python -m geometry.clusters demo:L15R-8x demo:L15R-32x --labels-dir out/labels --out out/map

    from geometry.clusters import feature_map
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

import argparse
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import sae
from sae.errors import run_cli
from sae.io import write_json, write_text

from geometry.options import GeometryError
from geometry.similarity import top_k_cosine, unit_rows

METHODS = ("leiden", "hdbscan")
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#aec7e8", "#ff9896", "#98df8a", "#ffbb78", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5",
           "#dbdb8d", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]


# ---------------------------------------------------------------------------------------------------
# shared with geometry.neighborhood
# ---------------------------------------------------------------------------------------------------
def decoder_rows(x) -> torch.Tensor:
    """Unit decoder rows [F, d] (fp32, CPU) of a SparseAutoencoder, a spec for `sae.load`, or an [F, d] matrix."""
    if isinstance(x, (str, Path)):
        x = sae.load(x)
    rows = x.W_dec if isinstance(x, sae.SparseAutoencoder) else x
    rows = torch.as_tensor(rows).detach()
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise sae.ShapeError(f"expected an [n_features, d] decoder matrix, got shape {list(rows.shape)}")
    return unit_rows(rows)


def load_rows(saes: dict) -> dict[str, torch.Tensor]:
    """name -> unit decoder rows, one SAE in memory at a time; every SAE must have the same d."""
    if not saes:
        raise GeometryError("give at least one SAE")
    out = {str(name): decoder_rows(x) for name, x in saes.items()}
    dims = {name: r.shape[1] for name, r in out.items()}
    if len(set(dims.values())) > 1:
        raise sae.ShapeError(f"the SAEs have different d: {', '.join(f'{n} d={d}' for n, d in dims.items())}")
    return out


def sae_colors(names) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def label_lookup(labels: pd.DataFrame | None, features: np.ndarray, column: str = "label") -> np.ndarray:
    """The `column` of a labels table (feature, label, ...) for these features; '' where missing."""
    if labels is None or column not in labels:
        return np.full(len(features), "", dtype=object)
    series = labels.set_index("feature")[column].astype(str)
    return series.reindex(features).fillna("").to_numpy(dtype=object)


def umap_2d(x: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, metric: str = "cosine",
            knn: tuple[np.ndarray, np.ndarray] | None = None, n_epochs: int | None = None) -> tuple[np.ndarray, dict]:
    """2-D UMAP of the rows of x (or of a precomputed kNN graph (indices, distances) over them, self first);
    returns the layout [n, 2] and the parameters used. A fixed seed gives the same layout every time."""
    import umap

    n = len(x)
    if n < 4:
        raise GeometryError(f"a 2-D layout needs at least 4 points, got {n}")
    k = min(n_neighbors, n - 1)
    params = {"method": "umap", "umap_version": umap.__version__, "n_neighbors": k, "min_dist": min_dist,
              "metric": metric, "random_state": seed, "n_epochs": n_epochs, "init": "spectral",
              "precomputed_knn": knn is not None}
    kw = {}
    if knn is not None:
        kw["precomputed_knn"] = (knn[0][:, :k], knn[1][:, :k], None)
    reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, metric=metric, random_state=seed,
                        n_epochs=n_epochs, **kw)
    with warnings.catch_warnings():  # seed => no parallelism; small inputs => spectral-init notes
        warnings.simplefilter("ignore")
        xy = reducer.fit_transform(np.asarray(x, np.float32))
    return np.asarray(xy, np.float64), params


# ---------------------------------------------------------------------------------------------------
# the map
# ---------------------------------------------------------------------------------------------------
@dataclass
class FeatureMap:
    points: pd.DataFrame  # sae, feature, x, y, cluster, label
    clusters: pd.DataFrame  # cluster, size, n_<sae>, share_<sae>, enrichment_<sae>, top_labels
    summary: dict  # parameters, counts, timings

    def figure(self, *, annotate: int = 25):
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
    timings: dict[str, float] = {}
    t0 = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[name] = now - last
        last = now

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
    lap("load")
    z, pca = pca_rows(x, pca_dims, seed)
    del x
    lap("pca")
    k = min(n_neighbors, len(z) - 1)
    knn_idx, knn_dist = knn_graph(z, k, cache=cache, device=device)
    lap("knn")
    if method == "leiden":
        cluster = leiden(knn_idx, knn_dist, resolution=resolution, seed=seed)
        lap("cluster")
    xy, layout = umap_2d(z.numpy(), n_neighbors=k, min_dist=min_dist, seed=seed, knn=(knn_idx, knn_dist),
                         n_epochs=n_epochs)
    lap("umap")
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        cluster = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(xy)
        lap("cluster")
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
    lap("tables")
    summary = {
        "schema": "geometry.clusters/1", "saes": {n: {"n_features": int(len(keep[n]) + left_out[n]),
                                                    "n_mapped": int(len(keep[n])), "left_out": left_out[n]} for n in names},
        "n_points": int(len(points)), "d": int(d),
        "method": method, "n_clusters": int(clusters["cluster"].ge(0).sum()), "noise": int((cluster < 0).sum()),
        "params": {"n_neighbors": k, "seed": seed, "resolution": resolution if method == "leiden" else None,
                   "min_cluster_size": min_cluster_size if method == "hdbscan" else None, **pca, "umap": layout},
        "timings_s": {**timings, "total": time.perf_counter() - t0},
    }
    return FeatureMap(points, clusters, summary)


# ---------------------------------------------------------------------------------------------------
# the figure
# ---------------------------------------------------------------------------------------------------
def _cluster_colors(cluster: np.ndarray) -> np.ndarray:
    return np.where(cluster < 0, "#cccccc", np.array(PALETTE, dtype=object)[np.maximum(cluster, 0) % len(PALETTE)])


def map_figure(points: pd.DataFrame, clusters: pd.DataFrame | None = None, *, annotate: int = 25,
               title: str = "Feature map (UMAP of decoder directions)"):
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


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def read_labels(folder: str | Path | None, names: list[str]) -> dict[str, pd.DataFrame]:
    """Label tables `<folder>/<name>.csv`, where present: name = the spec made file-safe (demo:L15R-8x ->
    demo_L15R-8x.csv, as geometry.neighborhood writes them) or, for a folder, its last part."""
    from sae.interp.contexts import folder_name

    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise sae.SAEFileError(f"no such labels folder: {folder}")
    out = {}
    for name in names:
        path = folder / f"{folder_name(name)}.csv"
        if not path.is_file():
            path = folder / f"{Path(name).name}.csv"
        if path.is_file():
            try:
                out[name] = pd.read_csv(path, keep_default_na=False)
            except (ValueError, OSError) as e:
                raise sae.SAEFileError(f"{path} could not be read: {e}") from None
            if "feature" not in out[name] or "label" not in out[name]:
                raise sae.FormatError(f"{path} needs columns feature and label")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geometry.clusters",
        description="Map every feature of one or more SAEs: 2-D UMAP of decoder directions, Leiden or HDBSCAN "
        "clusters, per-cluster SAE composition and top labels; writes points.csv, clusters.csv, summary.json and "
        "an interactive WebGL map.html.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sae", nargs="+", help="SAE names (demo:L15R-8x, L15R-32x) or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--labels-dir", type=Path,
                   help="folder of label tables <name>.csv (feature, label, top_tokens), e.g. the labels/ folder "
                   "written by geometry.neighborhood")
    p.add_argument("--method", default="leiden", choices=METHODS, help="clustering: Leiden on the kNN graph, or "
                   "HDBSCAN on the 2-D layout")
    p.add_argument("--n-neighbors", type=int, default=15, help="neighbours per feature in the kNN graph and UMAP")
    p.add_argument("--pca-dims", type=int, default=64, help="PCA dimensions before the kNN (0: full decoder rows)")
    p.add_argument("--resolution", type=float, default=1.0, help="Leiden resolution (higher: more, smaller clusters)")
    p.add_argument("--min-cluster-size", type=int, default=20, help="HDBSCAN's smallest cluster")
    p.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist")
    p.add_argument("--n-epochs", type=int, help="UMAP epochs (default: umap-learn's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed for PCA, Leiden and UMAP")
    p.add_argument("--device", help="device for the kNN pass (default: cuda if available)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the kNN cache")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = read_labels(args.labels_dir, args.sae)
    m = feature_map({s: s for s in args.sae}, labels=labels, method=args.method, n_neighbors=args.n_neighbors,
                    seed=args.seed, pca_dims=args.pca_dims or None, resolution=args.resolution,
                    min_cluster_size=args.min_cluster_size, min_dist=args.min_dist, n_epochs=args.n_epochs,
                    device=args.device, cache=not args.no_cache)
    m.write(args.out)
    if not args.quiet:
        s = m.summary
        print(f"{s['n_points']:,} features, {s['n_clusters']} clusters ({s['method']}), "
              f"{s['timings_s']['total']:.0f} s; written to {args.out}")
        cols = ["cluster", "size"] + [f"n_{n}" for n in args.sae] + ["top_labels"]
        print(m.clusters[cols].head(15).to_string(index=False))
    return 0


if __name__ == "__main__":
    run_cli(main)
