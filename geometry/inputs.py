"""The inputs of a comparison: each dictionary as unit rows of its live features (what was left out
and why), and arrays (activations, firing frequencies) read from files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

import sae
from geometry.options import GeometryError, Options


@dataclass
class Side:
    """One dictionary, ready to compare: unit rows of its live features and what was left out."""

    name: str
    n: int
    d: int
    live: np.ndarray  # feature ids of the rows of `dirs`
    dirs: torch.Tensor  # [n_live, d] unit fp32
    excluded: np.ndarray  # [n] "" or why the feature is left out: zero, nonfinite, dead
    freq: np.ndarray | None  # [n] firing frequency, when known

    def counts(self) -> dict:
        why = pd.Series(self.excluded).value_counts()
        return {"name": self.name, "n_features": self.n, "d": self.d, "n_live": len(self.live),
                "n_dead": int(why.get("dead", 0)), "n_zero": int(why.get("zero", 0)),
                "n_nonfinite": int(why.get("nonfinite", 0)), "firing_stats": self.freq is not None}


def named(x, default_name: str) -> tuple[sae.SparseAutoencoder | torch.Tensor | np.ndarray, str]:
    """(SparseAutoencoder or matrix, name): loads names and folders with sae.load."""
    if isinstance(x, (str, Path)):
        return sae.load(x), str(x)
    return x, getattr(getattr(x, "meta", None), "name", None) or default_name


def make_side(x, name: str, freq, opts: Options) -> Side:
    """The Side of a SparseAutoencoder (decoder or encoder rows, as opts.rows says) or an [n, d] matrix;
    freq: [n] firing frequencies or None (features firing at most opts.dead_freq are dead)."""
    if isinstance(x, sae.SparseAutoencoder):
        rows = x.W_dec if opts.rows == "decoder" else x.W_enc.T
    elif opts.rows == "encoder":
        raise GeometryError("rows='encoder' needs SparseAutoencoders, not matrices")
    else:
        rows = x
    rows = torch.as_tensor(rows).detach().to("cpu", torch.float32)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise sae.ShapeError(f"{name}: expected an [n_features, d] matrix, got shape {list(rows.shape)}")
    norms = torch.linalg.vector_norm(rows, dim=1)  # NaN or inf where a row holds one: one cheap pass
    finite = torch.isfinite(norms).numpy()
    excluded = np.where(~finite, "nonfinite", np.where(norms.numpy() == 0, "zero", "")).astype(object)
    if freq is not None:
        freq = np.asarray(freq, dtype=np.float64).ravel()
        if len(freq) != len(rows):
            raise sae.ShapeError(f"{name}: {len(freq)} firing frequencies for {len(rows)} features")
        excluded[(excluded == "") & (freq <= opts.dead_freq)] = "dead"
    live = np.flatnonzero(excluded == "")
    if len(live) == 0:
        raise sae.ShapeError(f"{name} has no live features ({len(rows)} rows: all zero, NaN or never firing)")
    if len(live) < len(rows):
        keep = torch.from_numpy(live)
        dirs = rows[keep].div_(norms[keep][:, None])
    else:
        dirs = rows / norms[:, None]
    return Side(name, len(rows), rows.shape[1], live, dirs, excluded, freq)


def load_array(path: str | Path, what: str = "activations") -> torch.Tensor:
    """A tensor from .safetensors (its only tensor, or the one named `what`), .npy or, for 1-D data,
    .csv (a column named freq/frequency/firing_frequency, or the only column). Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise sae.SAEFileError(f"no such file: {path}")
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(path)
            if len(tensors) != 1 and what not in tensors:
                raise sae.FormatError(f"{path} holds {', '.join(tensors)}; name the tensor '{what}'")
            return tensors.get(what, next(iter(tensors.values())))
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if path.suffix == ".csv":
            df = pd.read_csv(path)
            col = next((c for c in ("freq", "frequency", "firing_frequency") if c in df), df.columns[-1])
            return torch.from_numpy(df[col].to_numpy(np.float64, copy=True))  # pandas' array may be read-only
    except sae.SAEError:
        raise
    except Exception as e:  # numpy, pandas and safetensors raise many types for bad files
        raise sae.SAEFileError(f"{path} could not be read: {e}") from None
    raise sae.SAEFileError(f"{path}: use .safetensors or .npy (or .csv for frequencies); pickles are not read")
