"""A map of whole dictionaries: UMAP of every feature of one or several SAEs, clusters, composition.

    python -m geometry.clusters demo:L15R-8x demo:L15R-32x --labels-dir out/labels --out out/map

    from geometry.clusters import feature_map
    m = feature_map({"8x": "demo:L15R-8x", "32x": "demo:L15R-32x"}, labels={"8x": labels_8x})
    m.points, m.clusters; m.write("out/map")   # points.csv, clusters.csv, summary.json, map.html

The pipeline lives in geometry.feature_map (its docstring lists the steps); this module is the command
line and re-exports that API.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geometry.feature_map import METHODS, FeatureMap, cluster_table, feature_map, knn_graph, leiden, pca_rows
from geometry.labels import read_labels
from sae.errors import run_cli
from sae.io import check_writable

__all__ = ["METHODS", "FeatureMap", "build_parser", "cluster_table", "feature_map", "knn_graph", "leiden", "main",
           "pca_rows", "read_labels"]


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
    check_writable(args.out)
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
