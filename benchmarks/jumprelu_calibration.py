"""Do more calibration tokens close the TopK -> JumpReLU gap? Per-feature thresholds of a saved SAE, set
anew on N random train-split tokens for each N, measured on every held-out token.

    .venv/bin/python benchmarks/jumprelu_calibration.py                          # demo:L15R-32x, N = 32K, 128K
    .venv/bin/python benchmarks/jumprelu_calibration.py --sae demo:L15R-8x --tokens 32768 262144

Rows: the SAE in TopK inference, with its saved thresholds, and with per-feature thresholds from N
tokens (a seeded random sample of the whole cached train split, not its first documents): EV (centred,
pooled), mean L0 and its per-token 5th / 95th percentiles, features that never fire on the held-out
split. Results: benchmarks/results/jumprelu_calibration.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_ablation import HOOK, D, heldout_activations, markdown  # noqa: E402

from sae import load  # noqa: E402
from sae.pipelines.demo import training_stream  # noqa: E402
from sae.train.postprocess import feature_thresholds, inference_stats  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "jumprelu_calibration.md"


def row(label: str, sae, held: list[torch.Tensor]) -> dict:
    s = inference_stats(sae, held, held)
    return {"thresholds": label, "ev": s["ev"], "l0": s["l0"], "l0_p05": s["l0_p05"], "l0_p95": s["l0_p95"],
            "never_fired": s["never_fired"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", default="demo:L15R-32x")
    p.add_argument("--tokens", type=int, nargs="+", default=[32_768, 131_072])
    args = p.parse_args()
    held = list(heldout_activations().split(8192))
    train = torch.cat([c[HOOK] for c in training_stream(D).chunks()])  # [n, d] as cached (bf16 or fp32)
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(1))
    sae = load(args.sae)
    saved = sae.threshold.clone()
    sae.activation = "topk"
    rows = [row("none (TopK inference)", sae, held)]
    sae.activation = "jumprelu"
    rows.append(row("saved", sae, held))
    for n in args.tokens:
        calib = list(train[order[:n]].float().split(8192))
        sae.activation = "topk"
        sae.threshold.copy_(feature_thresholds(sae, calib))
        sae.activation = "jumprelu"
        rows.append(row(f"per-feature, {n:,} random train tokens", sae, held))
        print(rows[-1], flush=True)
    sae.threshold.copy_(saved)
    table = pd.DataFrame(rows)
    RESULTS.write_text(f"# JumpReLU calibration tokens\n\n`{' '.join(sys.argv)}`; {time.strftime('%Y-%m-%d')}; "
                       f"{args.sae}, held-out split "
                       f"({sum(len(h) for h in held):,} tokens).\n\n{markdown(table)}\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
