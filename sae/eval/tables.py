"""The evaluation's tables: eval.csv (one row per SAE x model x dataset x mode), frequencies.csv (one row
per feature), positions.csv (one row per token-position bucket), their columns, and `EvalResult`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae.eval.metrics import MetricSums, NextTokenSums, lm_metrics
from sae.eval.resolve import Target
from sae.io import atomic_path, write_json

EVAL_COLUMNS = [
    "sae", "model", "dataset", "mode", "arch", "layer", "position", "hook_in", "hook_out", "d_in", "d_out",
    "n_features", "width", "k", "context", "tokens", "massive_tokens", "lm_tokens", "l0", "mse", "explained_variance_uncentred",
    "explained_variance_centred", "ce_clean", "ce_spliced", "delta_lm_loss", "kl_div", "ce_zero_ablation",
    "ce_loss_recovered", "frequency_tokens", "never_fired_fraction", "dead_fraction", "dense_fraction",
    "dead_window", "input_norm", "target_norm",
]
FREQUENCY_COLUMNS = ["sae", "model", "dataset", "mode", "layer", "position", "feature", "fires", "tokens", "frequency"]
POSITION_COLUMNS = [
    "sae", "model", "dataset", "mode", "layer", "position", "bucket_start", "bucket_end", "tokens", "l0", "mse",
    "explained_variance_uncentred",
]
TABLE_COLUMNS = {"eval": EVAL_COLUMNS, "frequencies": FREQUENCY_COLUMNS, "positions": POSITION_COLUMNS}


@dataclass
class EvalResult:
    """The three tables (pandas DataFrames) and the run's settings."""

    eval: Any
    frequencies: Any
    positions: Any
    settings: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write eval.csv, frequencies.csv, positions.csv and run.json (atomically) into `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in TABLE_COLUMNS:
            path = out / f"{name}.csv"
            with atomic_path(path) as tmp:
                getattr(self, name).to_csv(tmp, index=False)
            paths[name] = path
        paths["run"] = write_json(out / "run.json", self.settings)
        return paths


def run_tables(targets: Sequence[Target], sums: Sequence[MetricSums], *, model: str, dataset: str, context: int,
               massive_tokens: int, clean: NextTokenSums, zero: dict[Any, NextTokenSums], edges: Sequence[int],
               dead_window: int, dense_threshold: float) -> dict[str, Any]:
    """The three tables (DataFrames) of one model x dataset: targets[i] with its sums[i]; clean and
    zero[output site]: the next-token sums of the clean and zero-ablated model; edges: position buckets."""
    import pandas as pd

    rows, freq_rows, pos_rows = [], [], []
    for t, s in zip(targets, sums):
        base = t.base
        rows.append({
            "sae": t.label, "model": model, "dataset": dataset, "mode": t.mode, "arch": base.activation,
            "layer": t.layer, "position": t.position, "hook_in": t.inp.hook, "hook_out": t.out.hook,
            "d_in": base.d_in, "d_out": base.d_out, "n_features": base.n_features,
            "width": f"{base.n_features / base.d_in:g}x", "k": base.k if t.sae.activation == "topk" else None,
            "context": context, "massive_tokens": massive_tokens, "lm_tokens": s.lm.tokens,
            **s.summary(dead_window, dense_threshold), **lm_metrics(clean, s.lm, zero[t.out]),
            "frequency_tokens": s.tokens, "dead_window": dead_window,
        })
        key = {"sae": t.label, "model": model, "dataset": dataset, "mode": t.mode, "layer": t.layer,
               "position": t.position}
        freq_rows.append(pd.DataFrame({
            **key, "feature": range(base.n_features), "fires": s.fires.numpy(), "tokens": s.tokens,
            "frequency": s.frequencies().numpy(),
        }))
        pos_rows += [{**key, **row} for row in s.position_summary(edges)]
    return {
        "eval": pd.DataFrame(rows, columns=EVAL_COLUMNS),
        "frequencies": pd.concat(freq_rows, ignore_index=True)[FREQUENCY_COLUMNS],
        "positions": pd.DataFrame(pos_rows, columns=POSITION_COLUMNS),
    }


def concat_tables(parts: Sequence[dict[str, Any]], settings: dict) -> EvalResult:
    """One EvalResult from the tables of several runs (`run_tables`), in order."""
    import pandas as pd

    frames = {
        name: pd.concat([p[name] for p in parts], ignore_index=True) if parts else pd.DataFrame(columns=cols)
        for name, cols in TABLE_COLUMNS.items()
    }
    return EvalResult(frames["eval"], frames["frequencies"], frames["positions"], settings)
