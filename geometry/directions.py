"""Unit decoder directions of SAEs (given as SparseAutoencoders, specs for `sae.load`, or matrices),
the input of the feature map and of neighbourhoods."""

from __future__ import annotations

from pathlib import Path

import torch

import sae
from geometry.options import GeometryError
from geometry.similarity import unit_rows


def decoder_rows(x) -> torch.Tensor:
    """Unit decoder rows [F, d] (fp32, CPU) of a SparseAutoencoder, a spec for `sae.load`, or an [F, d] matrix."""
    if isinstance(x, (str, Path)):
        x = sae.load(x)
    rows = x.W_dec if isinstance(x, sae.SparseAutoencoder) else x
    rows = torch.as_tensor(rows).detach()
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise sae.ShapeError(f"expected an [n_features, d] decoder matrix, got shape {list(rows.shape)}")
    return unit_rows(rows)


def load_rows(saes: dict) -> dict[str, torch.Tensor]:
    """name -> unit decoder rows, one SAE in memory at a time; every SAE must have the same d."""
    if not saes:
        raise GeometryError("give at least one SAE")
    out = {str(name): decoder_rows(x) for name, x in saes.items()}
    dims = {name: r.shape[1] for name, r in out.items()}
    if len(set(dims.values())) > 1:
        raise sae.ShapeError(f"the SAEs have different d: {', '.join(f'{n} d={d}' for n, d in dims.items())}")
    return out
