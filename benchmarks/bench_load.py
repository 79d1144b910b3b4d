"""Loading a Llama Scope checkpoint vs reading its file, side by side in one run.

    .venv/bin/python benchmarks/bench_load.py                 # 32x shape: 131,072 x 4096, ~2 GiB bf16
    .venv/bin/python benchmarks/bench_load.py --features 32768 # 8x shape

Writes a random checkpoint in the exact release layout to a temp folder, then alternates, `--repeats`
times: (a) reading the file's bytes into memory (page cache warm), (b) `sae.load(folder)`
(read + fp32 + fold norms + unit decoder norms), (c) `sae.load(folder, dtype=bfloat16)`.
Reports the medians and the ratio to (a).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llama_scope_fixture import hyperparams  # noqa: E402

import sae  # noqa: E402


def write_checkpoint(folder: Path, d: int, f: int) -> Path:
    g = torch.Generator().manual_seed(0)
    (folder / "checkpoints").mkdir(parents=True)
    tensors = {
        "encoder.weight": torch.randn(f, d, generator=g, dtype=torch.bfloat16),
        "encoder.bias": torch.zeros(f, dtype=torch.bfloat16),
        "decoder.weight": torch.randn(d, f, generator=g, dtype=torch.bfloat16),
        "decoder.bias": torch.zeros(d, dtype=torch.bfloat16),
    }
    path = folder / "checkpoints" / "final.safetensors"
    save_file(tensors, path)
    hp = hyperparams(d, f, hook_in="blocks.15.hook_resid_post", hook_out="blocks.15.hook_resid_post",
                     theta=0.35546875, norm_in=10.8125, norm_out=10.8125)
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    return path


def timed(fn) -> float:
    gc.collect()
    t = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t
    del out
    gc.collect()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--features", type=int, default=131072)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "Llama3_1-8B-Base-L15R-32x"
        path = write_checkpoint(folder, args.d, args.features)
        size = path.stat().st_size / 2**30
        runs = {"read file (bytes)": [], "sae.load (fp32)": [], "sae.load (bf16)": []}
        timed(path.read_bytes)  # warm the page cache
        for _ in range(args.repeats):
            runs["read file (bytes)"].append(timed(path.read_bytes))
            runs["sae.load (fp32)"].append(timed(lambda: sae.load(folder)))
            runs["sae.load (bf16)"].append(timed(lambda: sae.load(folder, dtype=torch.bfloat16)))
    base = statistics.median(runs["read file (bytes)"])
    print(f"checkpoint {args.features} x {args.d} bf16, {size:.2f} GiB, torch threads {torch.get_num_threads()}")
    print(f"{'what':28s} {'median s':>9s} {'x read':>7s}")
    for name, times in runs.items():
        med = statistics.median(times)
        print(f"{name:28s} {med:9.2f} {med / base:7.2f}")


if __name__ == "__main__":
    main()
