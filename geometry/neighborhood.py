"""Neighbourhoods of seed features across SAEs (the Llama Scope paper's Fig. 7), and how to find seeds.

    python -m geometry.neighborhood demo:L15R-8x --keywords war,pandemic,famine,plague,disaster,crisis \\
        --members demo:L15R-8x-Vanilla=6,demo:L15R-8x=6,demo:L15R-32x=24 --out out/threats

    from geometry.neighborhood import find_seeds, best_seeds, concept_seeds, neighborhood

This module is the command line; it re-exports the API of geometry.seeds (finding seeds),
geometry.seed_neighborhood (the neighbourhood) and geometry.neighborhood_run (the whole run the
command makes, `run_neighborhood(NeighborhoodSettings(...))`), whose docstrings say how each works.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from geometry.neighborhood_run import NeighborhoodRun, NeighborhoodSettings, run_neighborhood
from geometry.options import GeometryError
from geometry.seed_neighborhood import Neighborhood, class_references, member_classes, neighborhood
from geometry.seeds import SEED_COLUMNS, best_seeds, concept_seeds, find_seeds, keyword_pattern
from geometry.stamps import current, make_stamp, write_stamp
from sae.cli import field_arguments, from_arguments
from sae.errors import run_cli
from sae.io import check_writable

__all__ = ["SEED_COLUMNS", "Neighborhood", "NeighborhoodRun", "NeighborhoodSettings", "best_seeds", "build_parser",
           "class_references", "concept_seeds", "find_seeds", "keyword_pattern", "main", "member_classes",
           "neighborhood", "parse_members", "run_neighborhood"]


def parse_members(text: str) -> dict[str, int]:
    """`A=6,B=6,C=24` -> {"A": 6, "B": 6, "C": 24}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, n = part.rpartition("=")
        if not eq or not name or not n.isdigit() or int(n) < 1:
            raise GeometryError(f"--members takes SPEC=N pairs separated by commas (N >= 1), not {part!r}")
        out[name] = int(n)
    if not out:
        raise GeometryError("--members is empty")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The flags of NeighborhoodSettings (default and help from its fields)."""
    p = argparse.ArgumentParser(
        prog="python -m geometry.neighborhood",
        description="Regenerate the Llama Scope paper's Fig. 7 for any seed on any SAEs: find seed features (by "
        "index, keywords over labels and top contexts, or a concept direction), take each member SAE's nearest "
        "decoder rows, lay them out with UMAP, and write members.csv, edges.csv, summary.json and neighborhood.html. "
        "Top contexts (and labels) are collected on a token budget and kept for reruns.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    of = partial(field_arguments, NeighborhoodSettings)
    p.add_argument("seed_sae", **of("seed_sae"))
    p.add_argument("--members", required=True, type=parse_members, **of("members"))
    p.add_argument("--out", required=True, type=Path, **of("out"))
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--seeds", **of("seeds"))
    how.add_argument("--keywords", **of("keywords"))
    how.add_argument("--concept", nargs=2, type=Path, metavar=("TEXTS_A", "TEXTS_B"), **of("concept"))
    p.add_argument("--n-seeds", type=int, **of("n_seeds"))
    p.add_argument("--min-score", type=float, **of("min_score"))
    p.add_argument("--none-ok", action="store_true", **of("none_ok"))
    p.add_argument("--tokens", type=int, **of("tokens"))
    p.add_argument("--contexts-dir", type=Path, **of("contexts_dir"))
    p.add_argument("--n-random", type=int, **of("n_random"))
    p.add_argument("--no-labels", action="store_true", **of("no_labels"))
    p.add_argument("--model", **of("model"))
    p.add_argument("--dataset", **of("dataset"))
    p.add_argument("--edge-cut", type=float, **of("edge_cut"))
    p.add_argument("--all-features", action="store_true", **of("all_features"))
    p.add_argument("--seed", type=int, **of("seed"))
    p.add_argument("--n-neighbors", type=int, **of("n_neighbors"))
    p.add_argument("--atlas", **of("atlas"))
    p.add_argument("--quiet", action="store_true", **of("quiet"))
    p.add_argument("--rebuild", action="store_true", **of("rebuild"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = from_arguments(NeighborhoodSettings, args)
    check_writable(settings.out)
    saes = list(dict.fromkeys([settings.seed_sae, *settings.members]))
    inputs = [settings.contexts_dir or settings.out / "contexts", *(settings.concept or ())]
    if not settings.rebuild and current(settings.out, make_stamp(settings, saes, inputs)):
        print(f"the neighbourhood in {settings.out} is up to date (same SAEs, contexts, settings and code; "
              "--rebuild draws it anew)")
        return 0
    run = run_neighborhood(settings)
    write_stamp(settings.out, make_stamp(settings, saes, inputs))  # the contexts it may have collected
    if run.neighborhood is None:
        print(f"{run.note}: no neighbourhood drawn")
        return 0
    if args.quiet:
        return 0
    if run.hits is not None:
        print("keyword hits (best per keyword):")
        print(run.hits.groupby("keyword", sort=False).head(3).to_string(index=False, max_colwidth=70))
    nb, s = run.neighborhood, run.neighborhood.summary
    eps = ", ".join(f"{n} {v:.3f}" for n, v in s["epsilon"].items())
    print(f"\n{s['title']}: {sum(s['members'].values())} members {s['members']}; min pairwise cos "
          f"{s['min_pairwise_cos']:.3f} (epsilon {eps}); {s['n_edges']} cross-SAE edges at cos >= {args.edge_cut}")
    print(nb.members[["sae", "feature", "is_seed", "cos_to_seed", "class", "label"]].to_string(
        index=False, max_colwidth=60, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
