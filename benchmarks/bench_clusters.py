"""Whole-dictionary map at Llama Scope scale: UMAP + clustering of 131,072 + 32,768 features (d = 4096).

    .venv/bin/python benchmarks/bench_clusters.py                 # full scale, Leiden (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_clusters.py --scale 0.05    # a quick run
    .venv/bin/python benchmarks/bench_clusters.py --method hdbscan --pca-dims 0 --device cuda

Synthetic decoder matrices with planted clusters: `--clusters` centres in a random `--subspace`-dimensional
subspace of R^d, every feature = its unit centre + isotropic noise (`--noise`, norm relative to 1; the
default gives cos ~0.6 to its centre), the wide SAE (131,072) and the narrow one (32,768) drawn from the
same clusters. `geometry.clusters.feature_map` runs on both (PCA to 64, exact kNN, Leiden, UMAP);
stage timings, peak RSS and the adjusted Rand index against the planted clusters go to
benchmarks/results/bench_clusters.json (and .md).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from geometry.clusters import feature_map  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def planted(n: int, centres: torch.Tensor, noise: float, g: torch.Generator, chunk: int = 8192):
    """n unit rows around the given unit centres (chosen uniformly), generated in chunks; and their cluster ids."""
    labels = torch.randint(len(centres), (n,), generator=g)
    out = torch.empty(n, centres.shape[1])
    for s in range(0, n, chunk):
        c = centres[labels[s : s + chunk]]
        e = torch.randn(c.shape, generator=g)
        x = c + noise * e / e.norm(dim=1, keepdim=True)
        out[s : s + chunk] = x / x.norm(dim=1, keepdim=True)
    return out, labels.numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of 131,072 + 32,768 features")
    p.add_argument("--d", type=int, default=4096)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--subspace", type=int, default=48)
    p.add_argument("--noise", type=float, default=1.3)
    p.add_argument("--method", default="leiden", choices=("leiden", "hdbscan"))
    p.add_argument("--pca-dims", type=int, default=64)
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--device", help="device for the kNN pass (default: cuda if available)")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_clusters.json")
    args = p.parse_args()

    from sklearn.metrics import adjusted_rand_score

    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(args.d, args.subspace, generator=g))[0]  # [d, subspace] orthonormal
    centres = torch.randn(args.clusters, args.subspace, generator=g) @ basis.T
    centres /= centres.norm(dim=1, keepdim=True)
    n_wide, n_narrow = int(131072 * args.scale), int(32768 * args.scale)
    wide, lab_w = planted(n_wide, centres, args.noise, g)
    narrow, lab_n = planted(n_narrow, centres, args.noise, g)
    truth = np.concatenate([lab_n, lab_w])
    t = time.perf_counter()
    m = feature_map({"narrow": narrow, "wide": wide}, method=args.method, pca_dims=args.pca_dims or None,
                    n_neighbors=args.n_neighbors, device=args.device, cache=False)
    total = time.perf_counter() - t
    clustered = m.points["cluster"].to_numpy() >= 0
    result = {
        "shape": {"narrow": [n_narrow, args.d], "wide": [n_wide, args.d]}, "method": args.method,
        "planted": {"clusters": args.clusters, "subspace": args.subspace, "noise": args.noise},
        "total_s": total, "timings_s": m.summary["timings_s"], "n_clusters": m.summary["n_clusters"],
        "adjusted_rand": float(adjusted_rand_score(truth[clustered], m.points["cluster"][clustered])),
        "clustered_fraction": float(clustered.mean()),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params": m.summary["params"], "device": str(args.device or ("cuda" if torch.cuda.is_available() else "cpu")),
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else [],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in m.summary["timings_s"].items())
    md = (f"{n_narrow:,} + {n_wide:,} features, d = {args.d}, {args.method}, PCA {args.pca_dims}: total {total:.1f} s "
          f"({stages}); {m.summary['n_clusters']} clusters, adjusted Rand {result['adjusted_rand']:.3f} against "
          f"{args.clusters} planted; peak RSS {result['peak_rss_gib']:.1f} GiB; load average after "
          f"{' '.join(result['loadavg_after'])}\n")
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
