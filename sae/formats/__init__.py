"""Reading and writing SAE files: Llama Scope, SAELens and native layouts, behind `load` and `save`."""

from __future__ import annotations

from pathlib import Path

import torch

from sae.devices import check_device
from sae.errors import BadNameError, SAEFileError
from sae.formats import llama_scope, saelens
from sae.formats.names import looks_like_name, parse_name
from sae.formats.tensors import PICKLE_SUFFIXES, dtype_from_name
from sae.hub import resolve
from sae.model import SparseAutoencoder

FORMATS = ("native", "saelens", "llama-scope")


def load(
    spec: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    local_dir: str | Path | None = None,
    allow_pickle: bool = False,
) -> SparseAutoencoder:
    """Load an SAE from a name (`L15R-8x`, `llama-scope:L15R-8x`, `demo:L15R-32x`) or a folder.

    Folders may be in Llama Scope layout (hyperparams.json + checkpoints/final.safetensors), SAELens
    layout (cfg.json + sae_weights.safetensors) or native layout. Llama Scope names are looked up in
    `local_dir` / $LLAMA_SCOPE_DIR, then the HF hub cache, then downloaded (that folder only).
    The result reads raw activations and returns raw units; `dtype` defaults to float32 and its
    parameters do not require grad (call `.requires_grad_()` to fine-tune).
    """
    device = check_device(device)
    if isinstance(dtype, str):
        dtype = dtype_from_name(dtype)
    folder = _folder(spec, local_dir)
    kw = {"device": device, "dtype": dtype, "allow_pickle": allow_pickle}
    if llama_scope.is_llama_scope_folder(folder):
        sae = llama_scope.read(folder, **kw)
    elif saelens.is_saelens_folder(folder):
        sae = saelens.read(folder, **kw)
    else:
        raise SAEFileError(
            f"{folder} holds no SAE: expected hyperparams.json (Llama Scope) or cfg.json (SAELens / native)"
        )
    if isinstance(spec, str) and looks_like_name(spec) and not Path(spec).exists():
        sae.meta.name = str(spec)
    return sae.requires_grad_(False)


def _folder(spec: str | Path, local_dir: str | Path | None) -> Path:
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            return path
        if path.name in ("final.safetensors", "final.pt") and path.parent.name == "checkpoints":
            return path.parent.parent  # a Llama Scope weights file: its folder holds hyperparams.json
        if path.suffix == ".safetensors" or path.suffix in PICKLE_SUFFIXES or path.name.endswith(".json"):
            return path.parent
        raise SAEFileError(f"{path} is not an SAE folder or weights file")
    if isinstance(spec, str) and looks_like_name(spec):
        return resolve(parse_name(spec), local_dir=local_dir)
    raise SAEFileError(f"no such file or folder: {spec} (nor is it an SAE name such as L15R-8x or demo:L15R-8x)")


def save(sae: SparseAutoencoder, path: str | Path, format: str = "native") -> Path:
    """Write `sae` to folder `path` in `native`, `saelens` or `llama-scope` layout; returns the folder."""
    folder = Path(path)
    if format == "llama-scope":
        return llama_scope.write(sae, folder)
    if format in ("native", "saelens"):
        return saelens.write(sae, folder, native=format == "native")
    raise BadNameError(f"unknown format {format!r}; formats: {', '.join(FORMATS)}")
