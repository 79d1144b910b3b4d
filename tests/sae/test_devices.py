"""Devices are checked once where they are given: one message saying what this machine has."""

from __future__ import annotations

import pytest
import torch

import sae
from sae.devices import DeviceError, available_devices, check_device
from sae.train import TrainConfig
from sae.train.cli import main as train_main


def test_available_devices_start_with_the_cpu():
    have = available_devices()
    assert have[0] == "cpu" and len(have) == 1 + (torch.cuda.device_count() if torch.cuda.is_available() else 0) + (
        "mps" in have)
    assert check_device("cpu") == torch.device("cpu") and check_device(None) is None


@pytest.mark.parametrize("device, message", [("gpu", "unknown device 'gpu'"), ("cuda:99", "'cuda:99' is not available"),
                                             ("tpu", "unknown device 'tpu'")])
def test_a_device_this_machine_lacks_is_one_message(device, message):
    with pytest.raises(DeviceError, match=message) as e:
        check_device(device)
    assert "this machine has cpu" in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_every_entry_point_refuses_cuda_without_cuda(tmp_path):
    for call in (lambda: sae.load("demo:L15R-8x", device="cuda"), lambda: TrainConfig(device="cuda"),
                 lambda: train_main(["--sae", "L15R-8x", "--device", "cuda", "--out", str(tmp_path / "r")])):
        with pytest.raises(DeviceError, match="'cuda' is not available here; this machine has cpu"):
            call()
    assert not (tmp_path / "r").exists()  # refused before any work
