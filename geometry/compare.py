"""Compare two SAE dictionaries: which B (wide) features are copies, splits, combinations or new.

    python -m geometry.compare L15R-8x L15R-32x --json out.json --out report/

The Python API returns the same as data: `compare(a, b, **options) -> Comparison` (geometry.comparison,
re-exported here), where a and b are anything `sae.load` accepts, SparseAutoencoders, or [n, d]
matrices (rows = feature directions). The JSON summary's schema is documented in docs/compare.md.
This module is the command line.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from geometry.comparison import SCHEMA, Comparison, compare
from geometry.inputs import Side, load_array
from geometry.options import Options
from geometry.statistics import QUANTILES, epsilon, isotropic_quantiles
from sae.cli import add_arguments, from_arguments
from sae.errors import run_cli
from sae.io import check_writable

__all__ = ["QUANTILES", "SCHEMA", "Comparison", "Side", "build_parser", "compare", "epsilon", "isotropic_quantiles",
           "load_array", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geometry.compare",
        description="Compare two SAE dictionaries: for every feature of B, is it the same as one of A, a "
        "refinement (split child), a non-negative combination of A features, or new? Prints a summary; "
        "--json and --out write it all.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("a", help="SAE A (usually the narrower): a name (L15R-8x, demo:L15R-8x) or a folder")
    p.add_argument("b", help="SAE B (usually the wider), as A")
    p.add_argument("--json", metavar="FILE", help="write the summary as JSON (schema: docs/compare.md)")
    p.add_argument("--out", metavar="DIR", help="write per-feature CSV tables, summary.json and report.html")
    p.add_argument("--activations", metavar="FILE",
                   help="cached activations [n, d] (.safetensors or .npy) at the SAEs' site: runs the insertion "
                   "test and gives firing frequencies (features that never fire are left out as dead)")
    p.add_argument("--freq-a", metavar="FILE", help="firing frequencies of A's features (.npy, .safetensors, .csv)")
    p.add_argument("--freq-b", metavar="FILE", help="firing frequencies of B's features")
    p.add_argument("--device", help="cpu or cuda[:i] for the similarity pass (default: cuda if available)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "tf32", "bf16"),
                   help="matmul precision; kept candidates are rescored in fp32, so results are exact either way")
    p.add_argument("--block", type=int, help="rows per streamed block (default: a 256 MiB tile on CPU)")
    p.add_argument("--cache-dir", metavar="DIR", help="where the similarity pass is cached (default $SAE_CACHE/geometry)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the similarity cache")
    p.add_argument("--max-points", type=int, default=20000, help="points drawn in the report's scatter plot")
    p.add_argument("--atlas", metavar="URL", help="the feature atlas's folder relative to --out (python -m "
                   "geometry.atlas): a click on a point of the report's scatter plot opens that feature's page")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    add_arguments(p.add_argument_group("comparison options"), Options)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = asdict(from_arguments(Options, args))
    if args.out:
        check_writable(args.out)
    if args.json:
        check_writable(Path(args.json).parent, "--json")
    freq = {k: load_array(v, "freq") for k, v in (("freq_a", args.freq_a), ("freq_b", args.freq_b)) if v}
    result = compare(args.a, args.b, activations=args.activations, device=args.device, precision=args.precision,
                     block=args.block, cache=False if args.no_cache else (args.cache_dir or True), **freq, **opts)
    if not args.quiet:
        print(result.text())
    if args.json:
        result.write_json(args.json)
    if args.out:
        result.write(args.out, max_points=args.max_points, atlas=args.atlas)
    return 0


if __name__ == "__main__":
    run_cli(main)
