"""`make demo`: the embedded default end to end on a CPU.

Fetches SmolLM2-135M-Instruct and the Wikipedia summaries (first run only), trains the demo suite at
layer 15's residual stream (`demo:L15R-8x`, `demo:L15R-32x`, TopK k = 50, post-processed to JumpReLU,
and the `demo:L15R-8x-Vanilla` baseline) into `$SAE_CACHE/demo/`, evaluates them on held-out articles
and writes the tables to `--out`. A second run finds the suite built and, in the same `--out`, its
evaluation written, and only prints the table (another budget or a retrained suite evaluates again).
`make demo` then compares the two widths with `geometry.compare` and draws the threats neighbourhood
with `geometry.neighborhood`.

The budget: `--distinct-tokens` training tokens are captured once (disk cache) and the SAEs train
several epochs over them, `--tokens` in all, in batches of 1,024: on 2 CPU cores the model, not the
SAE step, is the slow part, so re-reading cached activations buys far more steps per minute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from .errors import run_cli
from .io import cache_dir, write_json

SUITE = ("L15R-8x", "L15R-32x", "L15R-8x-Vanilla")
DEFAULT_TOKENS = 300_000
DEFAULT_DISTINCT = 60_000
BATCH_SIZE = 1024
VANILLA_L1 = 3e-3  # lands near the paper's vanilla L0 (~150) at the default budget (README, "The demo")
COLUMNS = ["sae", "mode", "n_features", "tokens", "l0", "explained_variance_centred", "explained_variance_uncentred",
           "delta_lm_loss", "ce_loss_recovered", "never_fired_fraction", "dense_fraction"]


def build_suite(tokens: int, distinct: int, *, rebuild: bool = False) -> Path:
    """Train and post-process the demo suite unless it is already in the cache; returns its folder."""
    from .formats.tensors import read_json
    from .train import latest_checkpoint
    from .train import main as train_main

    root = cache_dir("demo")
    budget = {"tokens": tokens, "distinct_tokens": distinct}
    marker = root / "build.json"
    built = read_json(marker) if marker.is_file() else None
    if not rebuild and built == budget and all((root / name / "cfg.json").is_file() for name in SUITE):
        print(f"demo suite already built in {root} with {built['tokens']:,} tokens (DEMO_REBUILD=1 to retrain)")
        return root
    argv = [f"--sae={name}" for name in SUITE] + [
        "--tokens", str(tokens), "--distinct-tokens", str(distinct), "--batch-size", str(BATCH_SIZE),
        "--b-dec-init", "mean", "--l1", str(VANILLA_L1), "--threshold-tokens", str(min(32_768, distinct)),
        "--out", str(root), "--cache",
        # a checkpoint of all three SAEs (~370 MB) every quarter: ~1.5 s each, resumable all the same
        "--checkpoint-every", str(max(1, tokens // BATCH_SIZE // 4)),
    ]
    if latest_checkpoint(root) and built == budget and not rebuild:
        argv.append("--resume")  # an interrupted earlier build goes on where it stopped
    else:
        if latest_checkpoint(root):
            print(f"the demo suite in {root} was built with another budget; training anew with {tokens:,} tokens")
        for folder in ("checkpoint", *SUITE):  # only the demo suite's own files
            shutil.rmtree(root / folder, ignore_errors=True)
        marker.unlink(missing_ok=True)
    write_json(marker, budget)
    train_main(argv)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sae.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=int(os.environ.get("DEMO_TOKENS", DEFAULT_TOKENS)),
                   help="training tokens for the suite (env DEMO_TOKENS; default %(default)s)")
    p.add_argument("--distinct-tokens", type=int, default=int(os.environ.get("DEMO_DISTINCT", DEFAULT_DISTINCT)),
                   help="of those, distinct corpus tokens (captured once, then epochs; env DEMO_DISTINCT; "
                   "default %(default)s)")
    p.add_argument("--eval-tokens", type=int, default=20_000, help="held-out tokens to evaluate on")
    p.add_argument("--lm-tokens", type=int, default=5_000,
                   help="of those, tokens that also get delta LM loss / KL / CE recovered (one rerun per SAE)")
    p.add_argument("--rebuild", action="store_true", default=bool(os.environ.get("DEMO_REBUILD")),
                   help="retrain the suite even if it is in the cache (env DEMO_REBUILD)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where the evaluation tables go")
    args = p.parse_args(argv)

    start = time.perf_counter()
    root = build_suite(args.tokens, min(args.distinct_tokens, args.tokens), rebuild=args.rebuild)
    table, paths = evaluate_suite(root, args.out / "eval", args.eval_tokens, min(args.lm_tokens, args.eval_tokens))
    print("\n" + table[COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nsuite: {root}\ntables: {', '.join(str(p) for p in paths)}\n({time.perf_counter() - start:.0f} s)")
    return 0


def evaluate_suite(root: Path, out: Path, tokens: int, lm_tokens: int) -> tuple[pd.DataFrame, list[Path]]:
    """Evaluate the suite into `out`, unless `out` already holds this suite's evaluation on this budget."""
    from .evaluate import evaluate
    from .formats.tensors import read_json

    stamp = {"suite": {name: (root / name / "sae_weights.safetensors").stat().st_mtime_ns for name in SUITE},
             "tokens": tokens, "lm_tokens": lm_tokens}
    marker, table_path = out / "demo.json", out / "eval.csv"
    if marker.is_file() and table_path.is_file() and read_json(marker) == stamp:
        print(f"the evaluation of this suite on this budget is already in {out}")
        return pd.read_csv(table_path), [table_path]
    result = evaluate({name: f"demo:{name}" for name in SUITE}, tokens=tokens, modes=("native", "topk"),
                      lm_tokens=lm_tokens, progress=True)
    paths = list(result.write(out).values())
    write_json(marker, stamp)
    return result.eval, paths


if __name__ == "__main__":
    run_cli(main)
