"""Step time of distributed SAE training (sae.train.parallel) next to one process, and the encoder-matmul floor.

    python benchmarks/bench_parallel.py          # CPU: 1 process (1 and 2 threads), 2 processes as tp 2 and as ddp 2
    python benchmarks/bench_parallel.py --gpu    # one GPU: d = 4096, F = 131,072, k = 50, batch 4,096

CPU (default shape: the demo's 8x SAE, d = 576, F = 4,608, k = 50, batch 4,096): a correctness
platform, not a speed one. Every layout trains the same TopK SAE (k = 50 throughout, the default bf16 /
fp32 ranking choice) with `sae.train.train` on the same random activations for `--steps` steps after a
2-step warm-up; distributed layouts run as real processes (gloo on 127.0.0.1, one thread each). The
floor is the encoder's ranking matmul (2 x rows x d x features FLOPs, in the ranking's dtype) as one
process of that layout computes it: all F for one process, F / 2 for a tp-2 shard, B / 2 rows for a
ddp-2 replica.

`--gpu` times one process on cuda:0 at Llama Scope's shape (d = 4096, F = 131,072 = 32x, k = 50,
batch 4,096) against the same floor on that GPU (bf16 ranking where the GPU has it; also the fp32
matmul for reference); results go to bench_parallel_gpu.md unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sae.precision import resolve_dtype  # noqa: E402
from sae.train import SAESpec, TrainConfig, train  # noqa: E402
from sae.train.parallel import Sharding, setup  # noqa: E402


def activations(n: int, d: int, device: str, seed: int = 0) -> torch.Tensor:
    """Random activations with a mean offset (the step's cost does not depend on their content)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) + 2.0).to(device)


def time_training(sh: Sharding, x: torch.Tensor, F: int, k: int, batch: int, steps: int, threads: int) -> dict:
    """Seconds per step of train() (its loop only), after a 2-step warm-up."""
    spec = SAESpec(n_features=F, k=k, k_anneal=False)
    cfg = TrainConfig(total_tokens=steps * batch, batch_size=batch, threads=threads, log_every=steps,
                      device=str(x.device))
    train(x, spec, replace(cfg, total_tokens=2 * batch), progress=False, sharding=sh)
    r = train(x, spec, cfg, progress=False, sharding=sh)
    return {"step_s": r.seconds / r.steps, "tokens_per_s": r.tokens_per_second}


def matmul_floor(rows: int, d: int, F: int, dtype: torch.dtype, device: str, repeats: int = 5) -> float:
    """Seconds for one [rows, d] @ [d, F] + bias in `dtype`: the ranking matmul alone."""
    x = torch.randn(rows, d, device=device).to(dtype)
    W = torch.randn(d, F, device=device).to(dtype)
    b = torch.randn(F, device=device).to(dtype)
    torch.addmm(b, x, W)
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        torch.addmm(b, x, W)
    _sync(device)
    return (time.perf_counter() - t) / repeats


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _worker(rank: int, world: int, port: int, tp: int, a: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    sh = setup(tp)
    try:
        x = activations(a["tokens"], a["d"], "cpu")
        res = time_training(sh, x, a["features"], a["k"], a["batch"], a["steps"], threads=1)
        rows, F = (a["batch"] // sh.ddp, a["features"] // sh.tp)
        res["floor_s"] = matmul_floor(rows, a["d"], F, resolve_dtype("auto", torch.device("cpu")), "cpu")
        if sh.is_main:
            Path(out).write_text(json.dumps(res))
    finally:
        sh.close()


def run_distributed(tp: int, a: dict) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.start_processes(_worker, args=(2, port, tp, a, str(out)), nprocs=2, start_method="spawn")
        return json.loads(out.read_text())


def run_one_process(a: dict, threads: int, device: str) -> dict:
    torch.set_num_threads(threads)
    x = activations(a["tokens"], a["d"], device)
    res = time_training(Sharding(), x, a["features"], a["k"], a["batch"], a["steps"], threads=threads)
    res["floor_s"] = matmul_floor(a["batch"], a["d"], a["features"], resolve_dtype("auto", torch.device(device)), device)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", action="store_true", help="one GPU at d = 4096, F = 131,072, k = 50 (overrides the shape)")
    p.add_argument("--d", type=int, default=576, help="activation width (576)")
    p.add_argument("--features", type=int, default=4608, help="SAE features F (4,608)")
    p.add_argument("--k", type=int, default=50, help="TopK k (50)")
    p.add_argument("--batch", type=int, default=4096, help="global batch, tokens per step (4,096)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per layout (after 2 warm-up steps)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over all layouts; each keeps its fastest (shared machines)")
    p.add_argument("--only", default="", help="comma list of: 1p1t,1p2t,tp2,ddp2 (CPU layouts)")
    p.add_argument("--out", type=Path, help="markdown table (default benchmarks/results/bench_parallel[_gpu].md)")
    args = p.parse_args(argv)
    if args.gpu:
        args.d, args.features, args.k = 4096, 131_072, 50
    a = {"d": args.d, "features": args.features, "k": args.k, "batch": args.batch, "steps": args.steps,
         "tokens": args.batch * 16}
    device = "cuda" if args.gpu else "cpu"
    rank_dtype = resolve_dtype("auto", torch.device(device))
    rows = []
    if args.gpu:
        res = run_one_process(a, torch.get_num_threads(), device)
        res["floor_fp32_s"] = matmul_floor(args.batch, args.d, args.features, torch.float32, device)
        rows.append(("one GPU", torch.cuda.get_device_name(0), res))
    else:
        layouts = {"1p1t": ("one process", "1 x 1 thread", lambda: run_one_process(a, 1, device)),
                   "1p2t": ("one process", "1 x 2 threads", lambda: run_one_process(a, 2, device)),
                   "tp2": ("tp 2 (features split)", "2 x 1 thread", lambda: run_distributed(2, a)),
                   "ddp2": ("ddp 2 (replicated SAE)", "2 x 1 thread", lambda: run_distributed(1, a))}
        only = [o for o in args.only.split(",") if o] or list(layouts)
        best: dict[str, dict] = {}
        for round_ in range(args.repeats):  # interleaved, so every layout sees the machine's load alike
            for key in only:
                name, procs, fn = layouts[key]
                print(f"round {round_ + 1}: {name}, {procs} ...", file=sys.stderr)
                res = fn()
                if key not in best or res["step_s"] < best[key]["step_s"]:
                    best[key] = {**res, "floor_s": min(res["floor_s"], best.get(key, res)["floor_s"])}
        rows = [(layouts[key][0], layouts[key][1], best[key]) for key in only]
    command = " ".join(["python benchmarks/bench_parallel.py", *(sys.argv[1:] if argv is None else argv)])
    text = report(args, command, a, rows, rank_dtype)
    out = args.out or ROOT / "benchmarks" / "results" / ("bench_parallel_gpu.md" if args.gpu else "bench_parallel.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


def report(args, command: str, a: dict, rows: list, rank_dtype: torch.dtype) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"# Distributed SAE training step: d = {a['d']:,}, F = {a['features']:,}, k = {a['k']}, batch {a['batch']:,}",
        "",
        f"Command: `{command}` ({a['steps']} timed steps per row "
        f"after 2 warm-up steps, best of {1 if args.gpu else args.repeats} rounds; random activations; TopK, k constant).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, load average {load:.1f} "
        "at the end; ranking matmul in " + str(rank_dtype).replace("torch.", "") + ".",
        "Floor: the encoder's ranking matmul alone, as one process of the layout computes it.",
        "",
        "| layout | processes | s / step | tokens/s | vs 1 process on the same cores | floor s (per process) | step / floor |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    base = next((r for _, procs, r in rows if procs == "1 x 2 threads"), None)  # as many cores as 2 x 1 thread
    for name, procs, r in rows:
        rel = f"{base['step_s'] / r['step_s']:.2f}x" if base and procs != "1 x 1 thread" else ""
        lines.append(f"| {name} | {procs} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {rel} | {r['floor_s']:.4f} | "
                     f"{r['step_s'] / r['floor_s']:.1f} |")
    if args.gpu and rows:
        r = rows[0][2]
        lines += ["", f"fp32 encoder matmul on this GPU: {r['floor_fp32_s']:.4f} s "
                  f"({2 * a['batch'] * a['d'] * a['features'] / r['floor_fp32_s'] / 1e12:.1f} TFLOP/s); "
                  f"{rank_dtype} floor: {2 * a['batch'] * a['d'] * a['features'] / r['floor_s'] / 1e12:.1f} TFLOP/s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
