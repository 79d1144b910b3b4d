"""Label tables (feature, label[, top_tokens, ...], as sae.interp.labels writes them) looked up for
features and read from a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import sae
from sae.formats.names import folder_name


def label_lookup(labels: pd.DataFrame | None, features: np.ndarray, column: str = "label") -> np.ndarray:
    """The `column` of a labels table (feature, label, ...) for these features; '' where missing."""
    if labels is None or column not in labels:
        return np.full(len(features), "", dtype=object)
    series = labels.set_index("feature")[column].astype(str)
    return series.reindex(features).fillna("").to_numpy(dtype=object)


def read_labels(folder: str | Path | None, names: list[str]) -> dict[str, pd.DataFrame]:
    """Label tables `<folder>/<name>.csv`, where present: name = the spec made file-safe (demo:L15R-8x ->
    demo_L15R-8x.csv, as geometry.neighborhood writes them) or, for a folder, its last part."""
    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise sae.SAEFileError(f"no such labels folder: {folder}")
    out = {}
    for name in names:
        path = folder / f"{folder_name(name)}.csv"
        if not path.is_file():
            path = folder / f"{Path(name).name}.csv"
        if path.is_file():
            try:
                out[name] = pd.read_csv(path, keep_default_na=False)
            except (ValueError, OSError) as e:
                raise sae.SAEFileError(f"{path} could not be read: {e}") from None
            if "feature" not in out[name] or "label" not in out[name]:
                raise sae.FormatError(f"{path} needs columns feature and label")
    return out
