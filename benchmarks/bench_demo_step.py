"""One training step of each demo SAE (L15R-8x, L15R-32x TopK k = 50, L15R-8x-Vanilla), batch 1,024,
d = 576, in the step's matmul dtype fp32 and bf16 side by side, against the floor of its matmuls.

    .venv/bin/python benchmarks/bench_demo_step.py [--repeats 3] [--dead 0.1,0.4]

The TopK rows run with AuxK (k 512 over the dead features: each `--dead` fraction of the features
silent; in the demo's 32x run ~40% count as dead by AuxK's 50,000-token window early on and ~18% at
the end) and without (no feature dead). Floors: the step's matmul FLOPs at the rate a
dense matmul of the 32x ranking shape reaches here in that dtype (TopK: the one ranking matmul; vanilla:
its five forward and backward matmuls). Writes benchmarks/results/bench_demo_step.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_table  # noqa: E402
from sae.data.synthetic import SyntheticData  # noqa: E402
from sae.train import SAESpec, TrainConfig  # noqa: E402
from sae.train.initialise import init_sae  # noqa: E402
from sae.train.step import SAETrainer  # noqa: E402

B, D, K = 1024, 576, 50
SAES = (("L15R-8x", 8, "topk"), ("L15R-32x", 32, "topk"), ("L15R-8x-Vanilla", 8, "relu"))


def best_seconds(fn, repeats: int, calls: int = 8) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def matmul_rate(dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of [B, d] x [d, 32 d] in dtype."""
    a, b = torch.randn(B, D, dtype=dtype), torch.randn(D, 32 * D, dtype=dtype)
    return 2 * B * D * 32 * D / best_seconds(lambda: a @ b, repeats)


def step_seconds(x: torch.Tensor, expansion: int, activation: str, dtype: str, dead: float, repeats: int) -> float:
    config = TrainConfig(total_tokens=10**8, batch_size=B, lr=2e-3, aux_k=512 if dead else 0, aux_coef=1 / 8,
                         dead_tokens=50_000, score_dtype=dtype, threads=torch.get_num_threads())
    spec = SAESpec(name="s", hook_in="x", expansion=expansion, d_in=D, activation=activation, k=K,
                   l1_coefficient=1.4e-3 if activation == "relu" else None)
    job = SAETrainer(spec, init_sae(spec, D, D, config, torch.Generator().manual_seed(0)), config, 1.0, 1.0)
    now = 10**6
    silent = torch.rand(job.n_features, generator=torch.Generator().manual_seed(1)) < dead

    def step():
        job.last_fired.fill_(now).masked_fill_(silent, -1)  # the same dead set every step
        job.step(x, x, 10_000, now)

    return best_seconds(step, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dead", default="0.1,0.4",
                    help="fractions of silent features in the AuxK rows, comma-separated (the demo's 32x: ~40%% "
                         "by AuxK's 50,000-token window early on, ~18%% at the end)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_demo_step.md")
    args = ap.parse_args()
    deads = [float(v) for v in args.dead.split(",")]
    torch.manual_seed(0)
    x = SyntheticData(d=D, seed=0).sample(B)
    x = x * (D**0.5 / x.norm(dim=1).mean())  # the trainer's normalised space
    rates = {dt: matmul_rate(getattr(torch, dt), args.repeats) for dt in ("float32", "bfloat16")}
    rows = []
    for name, expansion, activation in SAES:
        F = expansion * D
        flops = 2 * B * D * F * (1 if activation == "topk" else 5)
        for dead in ((*deads, 0.0) if activation == "topk" else (0.0,)):
            times = {dt: step_seconds(x, expansion, activation, dt, dead, args.repeats) for dt in rates}
            aux = "-" if activation == "relu" else (f"{dead:.0%} dead" if dead else "none dead")
            rows.append(f"| {name} | {aux} | {times['float32'] * 1e3:.1f} | {times['bfloat16'] * 1e3:.1f} | "
                        f"{times['float32'] / times['bfloat16']:.2f} | {flops / rates['bfloat16'] * 1e3:.1f} | "
                        f"{B / times['bfloat16']:,.0f} |")
            print(rows[-1], flush=True)
    write_table(args.out, [
        f"# The demo's training step: batch {B}, d = {D}, k = {K}",
        "",
        f"`python benchmarks/bench_demo_step.py --repeats {args.repeats} --dead {args.dead}`; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads. Matmul [{B}x{D}]x[{D}x{32 * D}]: fp32 "
        f"{rates['float32'] / 1e9:.0f} GFLOP/s, bf16 {rates['bfloat16'] / 1e9:.0f} GFLOP/s.",
    ], ["SAE", "AuxK", "fp32 step ms", "bf16 step ms", "fp32 / bf16", "bf16 matmul floor ms", "tokens/s (bf16)"],
        rows, numeric_from=2)


if __name__ == "__main__":
    main()
