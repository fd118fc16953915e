"""The --device choices resolve to one torch device, and asking for an absent GPU fails clearly."""

from __future__ import annotations

import pytest
import torch

from pinsage_model.devices import DeviceError, resolve_device


def test_cpu_is_the_cpu_and_auto_follows_what_torch_sees():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_a_gpu_index_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", gpu_index=2) == torch.device("cuda:2")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu", gpu_index=2) == torch.device("cpu")


def test_cuda_without_a_gpu_and_unknown_names_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", gpu_index=1) == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA device is visible to torch"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="one of auto, cpu, cuda, got 'tpu'"):
        resolve_device("tpu")
