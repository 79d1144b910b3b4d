"""Which dtype runs fastest here: bfloat16 where the hardware has fast bf16 matmuls, float32 elsewhere.

Fast bf16 means CUDA with bf16 support, or a CPU with AVX512-BF16 or AMX tiles. On other CPUs (AVX2,
AVX512 without the BF16 extension) PyTorch emulates bf16 matmuls and they run 5-50x slower than fp32,
so "auto" picks float32 there. Every "auto" dtype in the project (the language model of a training
stream, the TopK ranking matmul) asks `fast_bf16`.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from sae.errors import SAEError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


@lru_cache(maxsize=None)
def _cpu_fast_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(check() for check in checks if check is not None)
    except RuntimeError:
        return False


def fast_bf16(device: str | torch.device | None = None) -> bool:
    """True where bfloat16 matmuls run at least as fast as float32 ones on `device` (default cpu)."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dev.type == "cpu" and _cpu_fast_bf16()


def resolve_dtype(choice: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """'auto' -> bfloat16 where `fast_bf16(device)`, else float32; a name or a torch.dtype as given;
    None -> float32."""
    if isinstance(choice, torch.dtype):
        return choice
    if choice is None:
        return torch.float32
    if choice == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    if choice not in DTYPES:
        raise SAEError(f"unknown dtype {choice!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[choice]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


__all__ = ["DTYPES", "DTYPE_CHOICES", "dtype_name", "fast_bf16", "resolve_dtype"]
