"""`python -m sae.contexts`: the command line of `sae.interp.contexts.collect_contexts` (parse, collect, print)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sae.interp.contexts import DEFAULT_TOKENS, DEFAULT_WINDOW, collect_contexts, folder_name


def build_parser() -> argparse.ArgumentParser:
    """The flags of `python -m sae.contexts`."""
    p = argparse.ArgumentParser(
        prog="python -m sae.contexts",
        description="Top-activating contexts of every feature of one or more SAEs (one pass through the model "
        "for all of them): top documents, random activating tokens, firing counts. Resumable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sae", nargs="+", help="SAE names (demo:L15R-8x, L15R-8x) or folders")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder; with several SAEs one subfolder per SAE (named after the spec)")
    p.add_argument("--model", default="embedded", help="the model the SAEs read: embedded or an HF folder / hub name")
    p.add_argument("--dataset", default="embedded-train", help="text source (see sae.data.text): embedded-train, a file, hf:...")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="ordinary tokens to stream (whole documents)")
    p.add_argument("--n-top", type=int, default=20, help="top contexts (documents) kept per feature")
    p.add_argument("--n-random", type=int, default=5, help="random activating contexts kept per feature")
    p.add_argument("--window", type=int, nargs=2, default=list(DEFAULT_WINDOW), metavar=("BEFORE", "AFTER"),
                   help="tokens kept before and after a context's own token")
    p.add_argument("--context", type=int, help="tokens per document (default: 1024 or the model's maximum)")
    p.add_argument("--batch-size", type=int, default=8, help="documents per forward")
    p.add_argument("--seed", type=int, default=0, help="seed of the document order and the random contexts' hash")
    p.add_argument("--corpus-order", action="store_true",
                   help="read the documents in corpus order (default: a seeded random order, so that a token budget "
                   "samples the whole corpus; streamed hf: sources are always read in order)")
    p.add_argument("--device", help="device for the model and SAEs (default: cpu)")
    p.add_argument("--resume", action="store_true", help="continue from a state saved in --out (same SAEs and settings)")
    p.add_argument("--checkpoint-s", type=float, default=120.0, help="seconds between checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def main(argv: list[str] | None = None) -> int:
    """Collect the top contexts of the SAEs named on the command line into --out; print a line per SAE."""
    args = build_parser().parse_args(argv)
    out = {spec: args.out if len(args.sae) == 1 else args.out / folder_name(spec) for spec in args.sae}
    result = collect_contexts({spec: spec for spec in args.sae}, model=args.model, dataset=args.dataset,
                              tokens=args.tokens, n_top=args.n_top, n_random=args.n_random, window=tuple(args.window),
                              shuffle=not args.corpus_order, out=out, resume=args.resume, progress=not args.quiet,
                              context=args.context, batch_size=args.batch_size, seed=args.seed, device=args.device,
                              checkpoint_s=args.checkpoint_s)
    if not args.quiet:
        for spec, ctx in result.items():
            fired = int((ctx.counts > 0).sum())
            print(f"{spec}: {ctx.tokens:,} tokens from {ctx.docs:,} documents; {fired:,} of {ctx.n_features:,} "
                  f"features fired; saved in {out[spec]}")
    return 0
