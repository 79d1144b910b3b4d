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
from dataclasses import MISSING, dataclass
from pathlib import Path

from geometry.feature_map import METHODS, FeatureMap, cluster_table, feature_map, knn_graph, leiden, pca_rows
from geometry.labels import read_labels
from geometry.options import check_settings
from sae.cli import add_arguments, from_arguments, option
from sae.errors import run_cli
from sae.io import check_writable

__all__ = ["METHODS", "FeatureMap", "build_parser", "cluster_table", "feature_map", "knn_graph", "leiden", "main",
           "pca_rows", "read_labels"]


@dataclass
class MapOptions:
    """The flags of `python -m geometry.clusters` (the SAEs are argparse's own)."""

    out: Path = option(MISSING, "output folder", parse=Path)
    labels_dir: Path | None = option(None, "folder of label tables <name>.csv (feature, label, top_tokens), e.g. the "
                                     "labels/ folder written by geometry.neighborhood", parse=Path)
    method: str = option("leiden", "clustering: Leiden on the kNN graph, or HDBSCAN on the 2-D layout",
                         choices=METHODS)
    n_neighbors: int = option(15, "neighbours per feature in the kNN graph and UMAP", min=2)
    pca_dims: int = option(64, "PCA dimensions before the kNN (0: full decoder rows)", min=0)
    resolution: float = option(1.0, "Leiden resolution (higher: more, smaller clusters)", above=0)
    min_cluster_size: int = option(20, "HDBSCAN's smallest cluster", min=2)
    min_dist: float = option(0.1, "UMAP min_dist (at most its spread, 1)", min=0, max=1)
    n_epochs: int | None = option(None, "UMAP epochs (default: umap-learn's choice)", min=1)
    seed: int = option(0, "seed for PCA, Leiden and UMAP")
    device: str | None = option(None, "device for the kNN pass (default: cuda if available)")
    no_cache: bool = option(False, "neither read nor write the kNN cache", switch=True)
    quiet: bool = option(False, "print nothing", switch=True)

    def __post_init__(self) -> None:
        check_settings(self)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geometry.clusters",
        description="Map every feature of one or more SAEs: 2-D UMAP of decoder directions, Leiden or HDBSCAN "
        "clusters, per-cluster SAE composition and top labels; writes points.csv, clusters.csv, summary.json and "
        "an interactive WebGL map.html.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sae", nargs="+", help="SAE names (demo:L15R-8x, L15R-32x) or folders")
    add_arguments(p, MapOptions)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    o = from_arguments(MapOptions, args)
    check_writable(o.out)
    labels = read_labels(o.labels_dir, args.sae)
    m = feature_map({s: s for s in args.sae}, labels=labels, method=o.method, n_neighbors=o.n_neighbors,
                    seed=o.seed, pca_dims=o.pca_dims or None, resolution=o.resolution,
                    min_cluster_size=o.min_cluster_size, min_dist=o.min_dist, n_epochs=o.n_epochs,
                    device=o.device, cache=not o.no_cache)
    m.write(o.out)
    if not o.quiet:
        s = m.summary
        print(f"{s['n_points']:,} features, {s['n_clusters']} clusters ({s['method']}), "
              f"{s['timings_s']['total']:.0f} s; written to {o.out}")
        cols = ["cluster", "size"] + [f"n_{n}" for n in args.sae] + ["top_labels"]
        print(m.clusters[cols].head(15).to_string(index=False))
    return 0


if __name__ == "__main__":
    run_cli(main)
