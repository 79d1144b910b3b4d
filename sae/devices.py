"""Devices checked once, where a command or a constructor is given one: an unavailable or unknown
device is one message saying what this machine has."""

from __future__ import annotations

import torch

from sae.errors import SAEError


class DeviceError(SAEError, ValueError):
    """A device that does not exist here (no CUDA, a GPU index past the last, a misspelt name)."""


def available_devices() -> list[str]:
    """The devices this machine has: cpu, then cuda:0 ... cuda:N-1, then mps where present."""
    out = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(device: str | torch.device | None) -> torch.device | None:
    """`device` as a torch.device (None stays None), or DeviceError naming the available devices."""
    if device is None:
        return None
    have = available_devices()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {device!r}; this machine has {', '.join(have)}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda" and (f"cuda:{dev.index or 0}" in have):
        return dev
    if dev.type == "mps" and "mps" in have:
        return dev
    raise DeviceError(f"device {str(device)!r} is not available here; this machine has {', '.join(have)}")


__all__ = ["DeviceError", "available_devices", "check_device"]
