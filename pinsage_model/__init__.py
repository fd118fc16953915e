"""PinSage model: layer parts, composition and checkpoint IO, shared by training and Spark inference."""

from pinsage_model.checkpoint import (
    Checkpoint,
    CheckpointError,
    build_model,
    parse_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from pinsage_model.config import POOLINGS, LayerDims, ModelConfig
from pinsage_model.layers import EmbeddingHead, PinSageConv
from pinsage_model.model import Neighborhood, PinSage, random_model

__all__ = [
    "POOLINGS",
    "Checkpoint",
    "CheckpointError",
    "EmbeddingHead",
    "LayerDims",
    "ModelConfig",
    "Neighborhood",
    "PinSage",
    "PinSageConv",
    "build_model",
    "parse_checkpoint",
    "random_model",
    "read_checkpoint",
    "save_checkpoint",
]
