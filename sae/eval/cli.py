"""`python -m sae.evaluate`: the command line of `sae.eval.evaluate.evaluate` (parse, evaluate, write, print)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from sae.data.massive import MASSIVE_FACTOR
from sae.data.text import DEFAULT_CONTEXT
from sae.eval.evaluate import DEFAULT_LM_TOKENS, DEFAULT_TOKENS, evaluate
from sae.eval.metrics import DEAD_WINDOW, DENSE_THRESHOLD

SUMMARY_COLUMNS = ["sae", "model", "mode", "tokens", "l0", "explained_variance_uncentred", "explained_variance_centred",
                   "delta_lm_loss", "ce_loss_recovered", "never_fired_fraction"]


def build_parser() -> argparse.ArgumentParser:
    """The flags of `python -m sae.evaluate`."""
    p = argparse.ArgumentParser(
        prog="python -m sae.evaluate",
        description="Evaluate SAEs on a language model and a corpus; writes eval.csv (one row per SAE x model "
        "x dataset x inference mode), frequencies.csv (one row per feature) and positions.csv (per token-position "
        "bucket) plus run.json. Metrics and columns: docs/evaluation.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("saes", nargs="+", metavar="SAE",
                   help="SAEs: names (demo:L15R-8x, L15R-8x) or folders, anything sae.load accepts; each "
                   "SAE's metadata (hook_in/hook_out or layer/position) says where it reads and writes")
    p.add_argument("--model", action="append", default=None,
                   help="'embedded' (SmolLM2-135M-Instruct, the default) or an HF model folder / hub name of a "
                   "Llama-family model (no remote code); repeat to evaluate the same SAEs on several models "
                   "(e.g. base vs instruct)")
    p.add_argument("--dataset", action="append", default=None,
                   help="'embedded-heldout' (the default), 'embedded-train', a .txt/.jsonl/.parquet file or "
                   "folder, or hf:NAME[:CONFIG][@SPLIT] (needs `datasets`); repeat for several")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                   help="ordinary (non-special) tokens to evaluate per model and dataset; dead_fraction needs "
                   "at least --dead-window of them")
    p.add_argument("--lm-tokens", type=int, default=DEFAULT_LM_TOKENS,
                   help="how many of those tokens also get the LM metrics (delta LM loss, KL, CE recovered), "
                   "which cost one partial forward per SAE; -1 = all, 0 = none")
    p.add_argument("--context", type=int, default=None,
                   help=f"tokens per document including BOS (longer documents are truncated); default "
                   f"{DEFAULT_CONTEXT}, or the model's maximum if that is smaller")
    p.add_argument("--batch-size", type=int, default=8, help="documents per forward pass")
    p.add_argument("--pack", action="store_true",
                   help="pack documents into rows of exactly --context tokens (default: one document per row)")
    p.add_argument("--modes", default="native",
                   help="comma-separated inference modes: native (the SAE's own activation), topk (its k), "
                   "jumprelu (its threshold), relu; e.g. native,topk for TopK vs JumpReLU inference")
    p.add_argument("--position-buckets", default="log2",
                   help="token-position buckets of positions.csv: log2 (1,2,4,...), a bucket width (64), or "
                   "comma-separated edges (1,128,512,1024)")
    p.add_argument("--dead-window", type=int, default=DEAD_WINDOW,
                   help="a feature is dead if it never fires in this many tokens; dead_fraction is NaN when "
                   "fewer tokens were evaluated (never_fired_fraction is always given)")
    p.add_argument("--dense-threshold", type=float, default=DENSE_THRESHOLD,
                   help="a feature is dense if it fires on more than this fraction of tokens")
    p.add_argument("--massive-factor", type=float, default=MASSIVE_FACTOR,
                   help="leave out positions whose norm at a site exceeds this many times the site's median in "
                   "the token batch (massive activations, sae.data.massive), like BOS; 0 = keep all")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="model dtype (SAEs run in their own dtype, metrics in float64)")
    p.add_argument("--out", default="out/eval", help="folder for eval.csv, frequencies.csv, positions.csv, run.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the SAEs named on the command line, write the tables to --out and print a summary."""
    args = build_parser().parse_args(argv)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    result = evaluate(
        args.saes,
        model=args.model or ["embedded"],
        datasets=args.dataset or ["embedded-heldout"],
        modes=modes,
        tokens=args.tokens,
        lm_tokens=None if args.lm_tokens < 0 else args.lm_tokens,
        context=args.context,
        batch_size=args.batch_size,
        pack=args.pack,
        position_buckets=args.position_buckets,
        dead_window=args.dead_window,
        dense_threshold=args.dense_threshold,
        massive_factor=args.massive_factor,
        device=device,
        dtype=dtype,
        progress=not args.quiet,
    )
    paths = result.write(args.out)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result.eval[SUMMARY_COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for name, path in paths.items():
        print(f"{name}: {path}", file=sys.stderr)
    return 0
