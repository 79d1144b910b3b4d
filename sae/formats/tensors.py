"""Reading tensor and JSON files with one clear error per way they can be wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sae.errors import FormatError, SAEFileError
from sae.io import atomic_path

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SAEFileError(f"missing file: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path} should hold a JSON object, not {type(obj).__name__}")
    return obj


def require_keys(cfg: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise FormatError(f"{path} lacks required key(s): {', '.join(missing)}")


def read_tensors(path: Path, *, device: str | torch.device | None = None, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A safetensors file (or, only with allow_pickle, a torch pickle read with weights_only=True)."""
    if not path.is_file():
        raise SAEFileError(f"missing file: {path}")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise SAEFileError(
                f"{path} is a pickle file, which can run code when loaded; convert it to safetensors, "
                "or pass allow_pickle=True (--allow-pickle) to read it with torch.load(weights_only=True)"
            )
        try:
            obj = torch.load(path, map_location=device or "cpu", weights_only=True)
        except Exception as e:  # torch raises several unrelated types for bad pickles
            raise SAEFileError(f"{path} could not be read as a weights-only torch file: {e}") from None
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise FormatError(f"{path} does not hold a flat dict of tensors")
        return obj
    try:
        return load_file(path, device=str(device or "cpu"))
    except (SafetensorError, OSError, ValueError) as e:
        raise SAEFileError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def check_tensors(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], path: Path, *, finite: bool = True) -> None:
    """Every expected tensor is present and has the expected shape (and, with `finite`, no NaN/Inf)."""
    missing = [k for k in shapes if k not in tensors]
    if missing:
        raise FormatError(f"{path} lacks tensor(s) {', '.join(missing)} (has {', '.join(sorted(tensors))})")
    for key, shape in shapes.items():
        got = tuple(tensors[key].shape)
        if got != shape:
            raise FormatError(f"{path}: tensor {key} has shape {list(got)}, expected {list(shape)}")
    if finite:
        for key in shapes:
            require_finite(tensors[key], tensors[key], key, path)


def require_finite(derived: torch.Tensor, source: torch.Tensor, key: str, path: Path) -> None:
    """Raise if `source` (file tensor `key`) holds NaN/Inf; `derived`, computed from it, is what is checked.

    One summation finds a bad value (NaN and Inf survive a sum); counting runs only when one is found.
    """
    if bool(torch.isfinite(derived.sum(dtype=torch.float32))):
        return
    bad = int((~torch.isfinite(source)).sum())
    if bad:
        raise FormatError(f"{path}: tensor {key} holds {bad} NaN/Inf value(s)")


def write_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def dtype_from_name(name: str) -> torch.dtype:
    """'torch.bfloat16', 'bfloat16', 'float32' ... -> torch dtype."""
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise FormatError(f"unknown dtype {name!r}")
    return dtype
