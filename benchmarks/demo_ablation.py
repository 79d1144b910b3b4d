"""The demo's training settings, one change at a time: held-out EV and dead fraction of each.

    .venv/bin/python benchmarks/demo_ablation.py                       # every row, ~ an hour on 2 cores
    .venv/bin/python benchmarks/demo_ablation.py --only paper,demo     # some rows

Every row trains on the same cached activations as `make demo` (layer 15's residual, the whole train
split packed into rows of 256 tokens, massive positions left out), post-processes the TopK SAEs (fold,
unit decoder norms, JumpReLU thresholds from the first 32,768 training tokens, both calibrations) and
measures them on every held-out token (one document per row, massive positions left out): EV (centred,
pooled) in TopK inference and with the global and per-feature JumpReLU thresholds, L0, the fraction of
features that never fire on the held-out split (~100,000 tokens, the paper's window) and that fire on
more than 10% of it, and the training time. Whether the train split limits a wide SAE (it memorises
documents) shows in three never-fired fractions of the saved inference (per-feature JumpReLU; vanilla:
its own): on the held-out split, on as many train-split tokens in corpus order (the first documents,
seen in training), and on the whole train split. `--save DIR` keeps each row's saved SAE and its
held-out firing frequencies for `geometry.compare`. Results: benchmarks/results/demo_ablation.md (and .csv).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae.data.stream import ActivationStream  # noqa: E402
from sae.formats import save  # noqa: E402
from sae.io import atomic_path  # noqa: E402
from sae.pipelines.demo import HOOK, DemoSettings, train_config, training_stream  # noqa: E402
from sae.train import SAESpec, train  # noqa: E402
from sae.train.postprocess import (  # noqa: E402
    feature_thresholds,
    fold_and_normalise,
    inference_stats,
    inference_sums,
    jumprelu_threshold,
)

RESULTS = Path(__file__).resolve().parent / "results"
D = DemoSettings()
WEAK = replace(D, aux_k=256, dead_tokens=200_000, aux_coef=1 / 32)  # Gao et al.'s weight: the demo's until 2026-12-03
# label -> (what changes, settings, expansion, activation); each row changes one thing from the row above it
ROWS = {
    "paper": ("the paper's batch 4,096 and lr 8e-4, no AuxK, 1 epoch (b_dec = mean in every row)",
              replace(D, batch_size=4096, lr=8e-4, aux_k=0, epochs=1), 8, "topk"),
    "batch-1024": ("batch 1,024 (4x the steps)", replace(D, lr=8e-4, aux_k=0, epochs=1), 8, "topk"),
    "lr-2e-3": ("batch 1,024 and lr 2e-3", replace(D, aux_k=0, epochs=1), 8, "topk"),
    "auxk": ("AuxK 256 at weight 1/32, dead after 200K tokens", replace(WEAK, epochs=1), 8, "topk"),
    "auxk-2ep": ("the same, 2 epochs", WEAK, 8, "topk"),
    "demo": ("AuxK 512 at weight 1/8, dead after 50K tokens: the demo's 8x", D, 8, "topk"),
    "demo-32x": ("the demo's settings at 32x", D, 32, "topk"),
    "32x-1ep": ("32x, 1 epoch, AuxK 256 at weight 1/32, dead after 200K tokens", replace(WEAK, epochs=1), 32, "topk"),
    "32x-dead-50k": ("32x, 1 epoch, dead after 50K tokens", replace(WEAK, epochs=1, dead_tokens=50_000), 32, "topk"),
    "32x-aux-strong": ("32x, 1 epoch, the demo's AuxK: dead after 50K tokens, AuxK 512 at weight 1/8",
                       replace(D, epochs=1), 32, "topk"),
    "vanilla-1e-3": ("vanilla, L1 1e-3, the demo's other settings", replace(D, l1=1e-3), 8, "relu"),
    "vanilla": ("vanilla, L1 1.4e-3 (the demo's)", D, 8, "relu"),
    "vanilla-2e-3": ("vanilla, L1 2e-3", replace(D, l1=2e-3), 8, "relu"),
}


def heldout_activations() -> torch.Tensor:
    """Every held-out token at the hook, one document per row (as `sae.eval.evaluate` reads them), cached."""
    stream = ActivationStream("embedded", source="embedded-heldout", hooks=[HOOK], max_tokens=1_000_000,
                              shuffle=False, cache=True)
    return torch.cat([c[HOOK] for c in stream.chunks()]).float()


def measure(sae, calib: list[torch.Tensor], held: list[torch.Tensor]):
    """The row's metrics and the saved SAE (folded; TopK: per-feature JumpReLU thresholds)."""
    out = fold_and_normalise(sae)
    if out.activation != "topk":
        stats = inference_stats(out, held, held)
        return {"l0": stats["l0"], "ev_native": stats["ev"], "never_fired": stats["never_fired"],
                "dense": stats["dense"]}, out
    row = {}
    topk = inference_stats(out, held, held)
    row.update(l0=topk["l0"], ev_topk=topk["ev"], never_fired=topk["never_fired"], dense=topk["dense"])
    out.activation = "jumprelu"
    out.threshold.fill_(jumprelu_threshold(out, calib, out.k))
    glob = inference_stats(out, held, held)
    out.activation = "topk"
    out.threshold.copy_(feature_thresholds(out, calib))
    out.activation = "jumprelu"
    per = inference_stats(out, held, held)
    row.update(ev_jumprelu_global=glob["ev"], l0_global_p95=glob["l0_p95"], ev_jumprelu_per_feature=per["ev"],
               l0_per_feature=per["l0"], l0_per_feature_p95=per["l0_p95"])
    return row, out


def never_fired(sae, batches: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """The fraction of features that fire on none of the tokens, and every feature's firing counts [F]."""
    sums, _ = inference_sums(sae, batches, batches)
    return float((sums.fires == 0).double().mean()), sums.fires


def memorisation(sae, train_x: torch.Tensor, held: list[torch.Tensor]) -> tuple[dict[str, float], torch.Tensor]:
    """Never-fired fractions of the saved SAE on held-out, on as many train tokens, and on the whole train
    split; and the held-out firing counts."""
    n = sum(len(h) for h in held)
    never_held, held_fires = never_fired(sae, held)
    never_window, _ = never_fired(sae, list(train_x[:n].split(4096)))
    never_train, _ = never_fired(sae, list(train_x.split(4096)))
    return {"never_saved_heldout": never_held, "never_saved_train_window": never_window,
            "never_saved_train": never_train}, held_fires


def save_row(sae, fires: torch.Tensor, n_tokens: int, folder: Path) -> None:
    save(sae, folder)
    with atomic_path(folder / "frequencies.csv") as tmp:
        pd.DataFrame({"feature": range(len(fires)), "frequency": (fires.double() / n_tokens).numpy()}).to_csv(
            tmp, index=False)


def markdown(table: pd.DataFrame) -> str:
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    p.add_argument("--out", type=Path, default=RESULTS / "demo_ablation")
    p.add_argument("--save", type=Path, metavar="DIR", help="keep each row's saved SAE in DIR/<row> (with "
                   "frequencies.csv: held-out firing frequencies) for geometry.compare")
    args = p.parse_args()
    labels = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in labels if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows: {', '.join(ROWS)}")
    stream = training_stream(D)
    train_x = torch.cat([c[HOOK] for c in stream.chunks()]).float()
    calib = list(train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1))[:32_768]].split(4096))
    held = list(heldout_activations().split(4096))
    print(f"train {len(train_x):,} tokens ({stream.massive_tokens} massive left out), held-out "
          f"{sum(len(h) for h in held):,} tokens; torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for label in labels:
        what, settings, expansion, activation = ROWS[label]
        spec = SAESpec(name=label, hook_in=HOOK, expansion=expansion, activation=activation)
        config = replace(train_config(settings, len(train_x)), log_every=50)
        t = time.perf_counter()
        sae = train({HOOK: train_x}, spec, config, progress=False).saes[label]
        seconds = time.perf_counter() - t
        row = {"row": label, "change": what, "features": sae.n_features, "steps": config.steps,
               "train_s": round(seconds)}
        metrics, saved = measure(sae, calib, held)
        never, fires = memorisation(saved, train_x, held)
        row.update(metrics, **never)
        if args.save:
            save_row(saved, fires, sum(len(h) for h in held), args.save / label)
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    args.out.with_suffix(".md").write_text(
        f"# Demo ablation\n\n`{' '.join(sys.argv)}`; {time.strftime('%Y-%m-%d')}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Train split {len(train_x):,} tokens, held-out {sum(len(h) for h in held):,} "
        "tokens (EV centred, pooled; never / dense: fraction of features firing on no held-out token / on more "
        "than 10% of them).\n\n" + markdown(table) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
