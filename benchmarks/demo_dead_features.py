"""Are the demo's silent features dead, or do they memorise training documents?

    .venv/bin/python benchmarks/demo_dead_features.py          # after `make demo`

For each TopK SAE of the demo, from files `make demo` wrote: the firing counts on the held-out split
(`out/demo/eval/frequencies_<SAE>.csv`) and the top contexts on the train split
(`out/demo/contexts/<SAE>`, one context per document, `n_top` documents kept per feature). A
feature that never fires on the held-out split but fires on training text in only one or two documents
has learnt those documents, not a concept. Results: benchmarks/results/demo_dead_features.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae.formats.names import folder_name  # noqa: E402
from sae.interp.store import TopContexts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "demo_dead_features.md"


def row(name: str, out: Path) -> dict:
    held = pd.read_csv(out / "eval" / f"frequencies_{name}.csv")["frequency"].to_numpy()
    ctx = TopContexts.load(out / "contexts" / folder_name(f"demo:{name}"))
    docs = (ctx.top.doc >= 0).sum(1)  # distinct train documents it fires in (at most n_top)
    silent = held == 0
    fires_train = ctx.counts > 0
    few = fires_train & (docs <= 2)
    return {
        "sae": name, "features": len(held), "train_tokens": ctx.tokens,
        "never_on_heldout": silent.mean(), "never_on_train_sample": (~fires_train).mean(),
        "silent_on_heldout_but_fire_on_train": (silent & fires_train).mean(),
        "of_those_in_<=2_train_docs": (silent & few).sum() / max((silent & fires_train).sum(), 1),
        "live_on_heldout_in_<=2_train_docs": (~silent & few).sum() / max((~silent & fires_train).sum(), 1),
        "median_docs_silent": float(np.median(docs[silent & fires_train])) if (silent & fires_train).any() else np.nan,
        "median_docs_live": float(np.median(docs[~silent & fires_train])) if (~silent & fires_train).any() else np.nan,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="the demo's output folder")
    args = p.parse_args()
    table = pd.DataFrame([row(name, args.out) for name in ("L15R-8x", "L15R-32x")])
    text = (f"# Silent features of the demo suite\n\n`{' '.join(sys.argv)}`; {time.strftime('%Y-%m-%d')}. Fractions "
            "of features; docs = distinct train documents among a feature's top contexts on the train sample.\n\n"
            + table.T.to_string(header=False, float_format=lambda v: f"{v:.3f}") + "\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
