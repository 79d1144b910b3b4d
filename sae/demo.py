"""`make demo`: the embedded default end to end on a CPU.

Fetches SmolLM2-135M-Instruct and the Wikipedia summaries (first run only), trains the demo suite at
layer 15's residual stream (`demo:L15R-8x`, `demo:L15R-32x`, TopK k = 50, post-processed to JumpReLU,
and the `demo:L15R-8x-Vanilla` baseline) into `$SAE_CACHE/demo/`, evaluates them on held-out articles
and writes the tables to `--out`. A second run finds the suite built and only evaluates (the held-out
activations are cached too). `make demo` then compares the two widths with `geometry.compare`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from .errors import run_cli
from .io import cache_dir

SUITE = ("L15R-8x", "L15R-32x", "L15R-8x-Vanilla")
DEFAULT_TOKENS = 50_000
COLUMNS = ["sae", "n_features", "tokens", "l0", "explained_variance_centred", "explained_variance_uncentred",
           "delta_lm_loss", "ce_loss_recovered", "never_fired_fraction", "dense_fraction"]


def build_suite(tokens: int, *, rebuild: bool = False) -> Path:
    """Train and post-process the demo suite unless it is already in the cache; returns its folder."""
    from .formats.tensors import read_json
    from .train import latest_checkpoint
    from .train import main as train_main

    root = cache_dir("demo")
    if not rebuild and all((root / name / "cfg.json").is_file() for name in SUITE):
        print(f"demo suite already built in {root} (make demo DEMO_REBUILD=1 to retrain)")
        return root
    argv = [f"--sae={name}" for name in SUITE] + ["--tokens", str(tokens), "--out", str(root), "--cache"]
    ckpt = latest_checkpoint(root)
    budget = read_json(ckpt / "state.json")["config"]["total_tokens"] if ckpt else None
    if ckpt and budget == tokens and not rebuild:
        argv.append("--resume")  # an interrupted earlier build goes on where it stopped
    elif ckpt:
        print(f"the demo build in {root} used {budget:,} tokens; training anew with {tokens:,}")
        for folder in ("checkpoint", *SUITE):  # only the demo suite's own cache
            shutil.rmtree(root / folder, ignore_errors=True)
    train_main(argv)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sae.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=int(os.environ.get("DEMO_TOKENS", DEFAULT_TOKENS)),
                   help="training tokens for the suite (env DEMO_TOKENS; default %(default)s)")
    p.add_argument("--eval-tokens", type=int, default=20_000, help="held-out tokens to evaluate on")
    p.add_argument("--lm-tokens", type=int, default=5_000,
                   help="of those, tokens that also get delta LM loss / KL / CE recovered (one rerun per SAE)")
    p.add_argument("--rebuild", action="store_true", default=bool(os.environ.get("DEMO_REBUILD")),
                   help="retrain the suite even if it is in the cache (env DEMO_REBUILD)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where the evaluation tables go")
    args = p.parse_args(argv)

    from .evaluate import evaluate

    start = time.perf_counter()
    root = build_suite(args.tokens, rebuild=args.rebuild)
    result = evaluate([f"demo:{name}" for name in SUITE], tokens=args.eval_tokens, lm_tokens=min(args.lm_tokens, args.eval_tokens),
                      progress=True)
    paths = result.write(args.out / "eval")
    table = result.eval[COLUMNS]
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nsuite: {root}\ntables: {', '.join(str(p) for p in paths.values())}"
          f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
