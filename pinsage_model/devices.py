"""Which torch device to run on, from the `--device` choices every job and the trainer share."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """A device was asked for that this process cannot use."""


def resolve_device(requested: str, gpu_index: int | None = None) -> torch.device:
    """`auto`: CUDA when torch sees a GPU, else the CPU; `cpu`; `cuda`: CUDA, or DeviceError when
    torch sees none. `gpu_index` names the GPU (e.g. the one Spark assigned to a task); without it
    the device is plain `cuda`, torch's current GPU."""
    if requested not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise DeviceError("no CUDA device is visible to torch")
        return torch.device("cpu")
    return torch.device("cuda" if gpu_index is None else f"cuda:{gpu_index}")
