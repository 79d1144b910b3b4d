"""Which rows of a table a figure draws: one model and dataset, each SAE in its own activation, the
paper's layers, widths in order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from geometry.plot.tables import FigureDataError
from sae.errors import FormatError, SAEError

PAPER_LAYERS = (7, 15, 23)  # the layers of Fig. 2 and Fig. 4


def select(df: pd.DataFrame, what: str, **wanted: str | None) -> pd.DataFrame:
    """Rows with one value in each named column: the value given, else the first in table order."""
    for col, want in wanted.items():
        value = df[col].iloc[0] if want is None else str(want)
        rows = df[df[col] == value]
        if rows.empty:
            raise FigureDataError(f"{what}: no rows with {col} {value!r}; it has {', '.join(df[col].unique())}")
        df = rows
    return df


def own_mode(df: pd.DataFrame) -> pd.Series:
    """The inference mode each row really ran in: `native` means the SAE's own activation (`arch`)."""
    return df["mode"].where(df["mode"] != "native", df["arch"])


def native_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per SAE (x model x dataset) in its own activation: mode `native` or the mode equal to its arch."""
    return df[own_mode(df) == df["arch"]].drop_duplicates(["sae", "model", "dataset"])


def variant_of(df: pd.DataFrame) -> pd.Series:
    """`Vanilla` for ReLU + L1 SAEs, `TopK` for TopK SAEs (also once post-processed to JumpReLU)."""
    return pd.Series(np.where(df["arch"] == "relu", "Vanilla", "TopK"), index=df.index)


def width_order(widths: Iterable[str]) -> list[str]:
    """The distinct widths by their factor (8x before 32x); names without one last."""
    def key(w: str) -> tuple[float, str]:
        try:
            return float(w.rstrip("x")), w
        except ValueError:
            return float("inf"), w

    return sorted(set(widths), key=key)


def pick_layers(available: Iterable[int], layers: Sequence[int] | None, what: str) -> list[int]:
    """The layers to draw: those asked for, else the paper's 7/15/23 where present, else all."""
    available = sorted({int(x) for x in available})
    if layers is not None:
        chosen = [int(x) for x in layers if int(x) in available]
        if not chosen:
            raise FigureDataError(f"{what}: none of layers {list(layers)} in the table (it has {available})")
        return chosen
    return [x for x in PAPER_LAYERS if x in available] or available


def ev_column(df: pd.DataFrame, ev: str) -> str:
    """The eval table's column for explained variance `ev`: "uncentred" (paper Eq. 6) or "centred"."""
    if ev not in ("uncentred", "centred"):
        raise SAEError(f"ev must be 'uncentred' or 'centred', not {ev!r}")
    col = f"explained_variance_{ev}"
    if col not in df:
        raise FormatError(f"eval table: missing column {col}")
    return col


def condition_title(df: pd.DataFrame) -> str:
    """'model, dataset' of rows that share both (for titles)."""
    return f"{df['model'].iloc[0]}, {df['dataset'].iloc[0]}"


def nonempty(df: pd.DataFrame, what: str, need: str) -> pd.DataFrame:
    """df, or FigureDataError "<what>: no rows <need>" if it has none."""
    if df.empty:
        raise FigureDataError(f"{what}: no rows {need}")
    return df


def by_width(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by width (8x before 32x), keeping the table's order otherwise."""
    return df.sort_values("width", key=lambda w: w.map(width_order(w).index), kind="stable")
