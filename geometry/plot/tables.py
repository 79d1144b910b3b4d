"""The tables the figures read: their schemas, and reading and checking them (docs/figures.md).

The tables are those `python -m sae.evaluate` (eval.csv, frequencies.csv, positions.csv), `sae.train`
(log.csv) and `python -m geometry.compare` / `geometry.neighborhood` write.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sae.errors import FormatError, SAEError, SAEFileError


class FigureDataError(SAEError):
    """A well-formed table that lacks the rows a figure needs (draw_all skips that figure)."""


# kind -> (required columns, the numeric ones among them)
SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "eval": (("sae", "model", "dataset", "mode", "arch", "layer", "position", "width", "l0", "mse",
              "explained_variance_uncentred", "delta_lm_loss"),
             ("layer", "l0", "mse", "explained_variance_uncentred", "delta_lm_loss")),
    "frequencies": (("sae", "model", "dataset", "mode", "layer", "position", "feature", "tokens", "frequency"),
                    ("layer", "feature", "tokens", "frequency")),
    "positions": (("sae", "model", "dataset", "mode", "layer", "bucket_start", "bucket_end", "tokens", "l0", "mse"),
                  ("layer", "bucket_start", "bucket_end", "tokens", "l0", "mse")),
    "training_log": (("sae", "run", "step", "mse", "alive"), ("step", "mse", "alive")),
    "features_b": (("feature", "best_cos"), ("feature", "best_cos")),
    "members": (("sae", "feature", "is_seed", "cos_to_seed", "label", "x", "y", "class"), ("feature", "x", "y")),
    "edges": (("sae_a", "feature_a", "sae_b", "feature_b", "cos"), ("feature_a", "feature_b", "cos")),
}
_STRING_COLUMNS = ("sae", "model", "dataset", "mode", "arch", "position", "width", "run")
OPTIONAL_ROWS = {"edges"}  # a neighbourhood may have no pair above the edge cut


def check_table(df: pd.DataFrame, kind: str, what: str | None = None) -> pd.DataFrame:
    """A copy of `df` with its numeric columns as numbers; FormatError if it is not a `kind` table.

    kind: a key of SCHEMAS. what: how the message names the table (a path; default "<kind> table").
    """
    what = what or f"{kind} table"
    required, numeric = SCHEMAS[kind]
    if not isinstance(df, pd.DataFrame):
        raise FormatError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise FormatError(f"{what}: missing column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}")
    if df.empty and kind not in OPTIONAL_ROWS:
        raise FormatError(f"{what} has no rows")
    out = df.copy()
    for col in numeric:
        values = pd.to_numeric(out[col], errors="coerce")
        bad = values.isna() & out[col].notna()
        if bad.any():
            raise FormatError(f"{what}: column {col!r} holds a non-numeric value ({out[col][bad].iloc[0]!r})")
        out[col] = values
    for col in set(_STRING_COLUMNS) & set(out.columns):
        out[col] = out[col].astype(str)
    if kind == "frequencies" and not out["frequency"].between(0, 1).all():
        raise FormatError(f"{what}: frequencies must lie in [0, 1]")
    return out


def read_table(path: str | Path, kind: str) -> pd.DataFrame:
    """Read and check one CSV table (SAEFileError if unreadable, FormatError if malformed)."""
    path = Path(path)
    if not path.is_file():
        raise SAEFileError(f"missing table: {path}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SAEFileError(f"{path} is not a readable CSV table: {str(e).splitlines()[0]}") from None
    return check_table(df, kind, str(path))


def read_summary(path: str | Path) -> dict:
    """A geometry.compare summary.json with the keys Fig. 8 reads."""
    path = Path(path)
    if not path.is_file():
        raise SAEFileError(f"missing file: {path}")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path} is not valid JSON: {e}") from None
    summary_parts(summary, str(path))
    return summary


def summary_parts(summary: dict, what: str) -> tuple[str, str, float, dict, dict]:
    """(name of A, name of B, epsilon of A, baseline and isotropic quantiles {level: max cos} of B -> A)
    from a geometry.compare summary; FormatError naming the key that is missing or bad."""
    try:
        mc = summary["max_cos"]
        baseline, isotropic = ({float(k): float(v) for k, v in mc[key]["quantiles"].items()}
                               for key in ("baseline_b_to_a", "isotropic_b_to_a"))
        return str(summary["a"]["name"]), str(summary["b"]["name"]), float(summary["epsilon"]["a"]), baseline, isotropic
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{what} is not a geometry.compare summary (bad or missing key: {e})") from None
