"""Checkpoint format_version 1: one file that `torch.load(..., weights_only=True)` reads as

    {"format_version": 1, "config": {...ModelConfig...}, "state_dict": {name: tensor}}

A checkpoint is data: it is only ever read with weights_only=True, so a file that carries pickled
code is refused instead of run.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import dataclass, field

import torch

from pinsage_model.config import ModelConfig
from pinsage_model.model import PinSage

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"checkpoint {source}: {problem}")


@dataclass(frozen=True)
class Checkpoint:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    sha256: str
    data: bytes = field(repr=False, default=b"")  # the file's bytes, as shipped to executors


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The exact tensor names and shapes that `config` implies."""
    shapes: dict[str, tuple[int, ...]] = {}
    for k in range(1, config.num_layers + 1):
        dims = config.layer(k)
        shapes[f"convs.{k - 1}.Q.weight"] = (dims.hidden_dim, dims.in_dim)
        shapes[f"convs.{k - 1}.Q.bias"] = (dims.hidden_dim,)
        shapes[f"convs.{k - 1}.W.weight"] = (dims.out_dim, dims.self_dim + dims.hidden_dim)
        shapes[f"convs.{k - 1}.W.bias"] = (dims.out_dim,)
    d = config.embed_dim
    shapes.update({"head.G1.weight": (d, d), "head.G1.bias": (d,), "head.G2.weight": (d, d)})
    return shapes


def checkpoint_bytes(model: PinSage) -> bytes:
    payload = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(model: PinSage, path: str) -> str:
    """Write `model` as a format_version 1 checkpoint atomically; returns its SHA-256."""
    data = checkpoint_bytes(model)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def parse_checkpoint(data: bytes, source: str = "<bytes>") -> Checkpoint:
    """Read and check a checkpoint's bytes: format version, config, tensor names and shapes."""
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if blocked:
            raise CheckpointError(
                source,
                "refused: it names Python objects beyond tensors and plain containers, which could run "
                f"code when unpickled ({blocked[0]})",
            ) from None
        raise CheckpointError(
            source, "not a readable torch checkpoint (the weights-only unpickler rejected it)"
        ) from None
    except Exception as exc:  # torch raises several types for corrupt or truncated files
        raise CheckpointError(source, f"not a readable torch checkpoint ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(source, f"top level must be a dict, got {type(raw).__name__}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(source, f"format_version must be {FORMAT_VERSION}, got {version!r}")
    if not isinstance(raw.get("config"), dict) or not isinstance(raw.get("state_dict"), dict):
        raise CheckpointError(source, "needs a 'config' dict and a 'state_dict' dict")
    try:
        config = ModelConfig.from_dict(raw["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(source, str(exc)) from None
    state = raw["state_dict"]
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        raise CheckpointError(
            source, f"state_dict keys disagree with config: missing {missing}, unexpected {unknown}"
        )
    for name, shape in expected.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise CheckpointError(source, f"state_dict[{name!r}] must be a floating-point tensor")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                source,
                f"state_dict[{name!r}] has shape {list(tensor.shape)} but config implies {list(shape)}",
            )
        if not torch.isfinite(tensor).all():
            raise CheckpointError(source, f"state_dict[{name!r}] holds NaN or Inf")
    return Checkpoint(config, state, hashlib.sha256(data).hexdigest(), data)


def read_checkpoint(path: str, expected_sha256: str | None = None) -> Checkpoint:
    """Read and check a checkpoint file. With `expected_sha256` the file's hash is compared before
    anything in it is parsed, so a swapped file is refused unread."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read ({exc.strerror})") from None
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.strip().lower():
            raise CheckpointError(path, f"sha256 is {actual}, but {expected_sha256} was pinned; not loaded")
    return parse_checkpoint(data, path)


def build_model(checkpoint: Checkpoint, device: torch.device | str = "cpu") -> PinSage:
    """A PinSage module in eval mode with the checkpoint's weights, as float32 on `device`."""
    model = PinSage(checkpoint.config)
    model.load_state_dict({k: v.to(torch.float32) for k, v in checkpoint.state_dict.items()})
    return model.to(device).eval()
