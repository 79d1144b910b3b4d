"""`compare` against the GEMM floor, side by side in one run.

    .venv/bin/python benchmarks/bench_compare.py --scale 0.125          # 4,096 vs 16,384 rows x 4096
    .venv/bin/python benchmarks/bench_compare.py --scale 1 --repeats 1  # Llama Scope 8x vs 32x shapes

A = 32,768 x scale rows, B = 131,072 x scale rows (x d), random (or --data planted). Each measurement
runs in its own process, alternating `--repeats` times:
  floor    bare blocked matmul: B streamed in the same blocks against resident A (the FLOPs of the pass)
  naive    the same matmul + torch.topk both ways (column direction merged per block): the old way
  compare  the whole `geometry.compare.compare` (every analysis but the functional one), no cache
Reports the best time of each, the ratio compare / floor (target <= 1.25), and compare's peak RSS
(the inputs included: the high-water mark is reset after the data are made).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from geometry.compare import compare  # noqa: E402
from geometry.planted import planted  # noqa: E402
from geometry.similarity import default_block as _default_block  # noqa: E402
from geometry.similarity import unit_rows


def make_data(scale: float, d: int, data: str) -> tuple[torch.Tensor, torch.Tensor]:
    n_a, n_b = max(int(32768 * scale), 64), max(int(131072 * scale), 256)
    if data == "planted":
        p = planted(n_a, d, n_b=n_b, seed=0)
        return p.a, p.b
    g = torch.Generator().manual_seed(0)
    return torch.randn(n_a, d, generator=g), torch.randn(n_b, d, generator=g)


def floor(a: torch.Tensor, b: torch.Tensor, k: int, naive: bool) -> None:
    block = _default_block(len(a), torch.device("cpu"))
    tile = torch.empty(block, len(a))
    run_v = torch.full((len(a), k), -torch.inf)
    for s in range(0, len(b), block):
        t = tile[: len(b[s : s + block])]
        torch.mm(b[s : s + block], a.T, out=t)
        if naive:
            t.topk(k, dim=1)
            cv = t.topk(min(k, len(t)), dim=0).values.T
            run_v = torch.cat([run_v, cv], 1).topk(k, dim=1).values


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run_phase(args) -> dict:
    a, b = make_data(args.scale, args.d, args.data)
    if args.phase != "compare":  # the floor is the bare matmul: rows normalised beforehand
        a, b = unit_rows(a), unit_rows(b)
    reset_peak_rss()
    t = time.perf_counter()
    info = {}
    if args.phase == "compare":
        c = compare(a, b, cache=False, k=args.k)
        info = {"timings_s": c.summary["timings_s"], "classes_b": c.summary["classes_b"]}
    else:
        floor(a, b, args.k, naive=args.phase == "naive")
    return {"phase": args.phase, "seconds": time.perf_counter() - t, "peak_rss_gib": peak_rss_gib(),
            "threads": torch.get_num_threads(), **info}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.125, help="fraction of the 32,768 / 131,072 rows")
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--data", choices=("random", "planted"), default="random")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each phase; the best counts")
    ap.add_argument("--naive", action="store_true", help="also time matmul + torch.topk both ways")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--phase", choices=("floor", "naive", "compare"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args)))
        return
    phases = ["floor", "compare"] + (["naive"] if args.naive else [])
    runs: dict[str, list[dict]] = {p: [] for p in phases}
    base = [sys.executable, __file__, "--scale", str(args.scale), "--d", str(args.d), "--k", str(args.k), "--data", args.data]
    for _ in range(args.repeats):
        for phase in phases:
            out = subprocess.run(base + ["--phase", phase], capture_output=True, text=True, check=True, cwd=ROOT)
            runs[phase].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{phase:8s} {runs[phase][-1]['seconds']:8.2f} s  peak RSS {runs[phase][-1]['peak_rss_gib']:.2f} GiB",
                  flush=True)
    best = {p: min(r, key=lambda x: x["seconds"]) for p, r in runs.items()}
    n_a, n_b = max(int(32768 * args.scale), 64), max(int(131072 * args.scale), 256)
    result = {
        "shape": {"a": [n_a, args.d], "b": [n_b, args.d]}, "k": args.k, "data": args.data, "scale": args.scale,
        "cpu_count": os.cpu_count(), "torch_threads": best["floor"]["threads"],
        "floor_gflops": 2 * n_a * n_b * args.d / best["floor"]["seconds"] / 1e9,
        "best_s": {p: b["seconds"] for p, b in best.items()},
        "ratio_compare_to_floor": best["compare"]["seconds"] / best["floor"]["seconds"],
        "compare_peak_rss_gib": best["compare"]["peak_rss_gib"],
        "compare_timings_s": best["compare"]["timings_s"],
        "runs": runs,
    }
    if "naive" in best:
        result["ratio_naive_to_floor"] = best["naive"]["seconds"] / best["floor"]["seconds"]
    print(f"A {n_a} x {args.d}, B {n_b} x {args.d}, k={args.k}: floor {result['best_s']['floor']:.1f} s "
          f"({result['floor_gflops']:.0f} GFLOP/s), compare {result['best_s']['compare']:.1f} s, "
          f"ratio {result['ratio_compare_to_floor']:.3f}, compare peak RSS {result['compare_peak_rss_gib']:.2f} GiB"
          + (f", naive/floor {result['ratio_naive_to_floor']:.3f}" if "naive" in best else ""))
    print("compare stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in result["compare_timings_s"].items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
