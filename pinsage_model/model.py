"""PinSage: alternating pin -> board -> pin convolutions plus an output head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pinsage_model.config import ModelConfig
from pinsage_model.layers import EmbeddingHead, PinSageConv
from pinsage_model.pooling import pool_gathered


@dataclass(frozen=True)
class Neighborhood:
    """Neighbor rows of one node type as index tensors: target dst pools source src with weight."""

    dst: torch.Tensor  # [rows] int64, index into the target type's nodes
    src: torch.Tensor  # [rows] int64, index into the source type's nodes
    weight: torch.Tensor  # [rows] float


class PinSage(nn.Module):
    """K convolutions over the pin/board graph and a head on the pins.

    Layer k (1-based) updates boards from pins when k is odd and pins from boards when k is even,
    so each node type's current representation is h(k-1) for the sources and h(k-2) for the
    targets' own term. h_p(0) is the pin features; h_b(-1) is the board features (width 0 when the
    checkpoint has none). The state dict has exactly the keys of checkpoint format_version 1.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.convs = nn.ModuleList(
            PinSageConv(config.layer(k), config.pooling) for k in range(1, config.num_layers + 1)
        )
        self.head = EmbeddingHead(config.embed_dim, config.normalize_output)

    def conv(self, k: int) -> PinSageConv:
        """Layer k, 1-based as in the paper."""
        return self.convs[k - 1]

    def forward(
        self,
        pin_features: torch.Tensor,
        board_features: torch.Tensor,
        board_neighbors: Neighborhood,
        pin_neighbors: Neighborhood,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-wise inference over a whole graph in memory, pooling with `pool_gathered` (the
        executors' pooling in one float32 sparse product per layer: the Spark chain's sums up to
        float32 rounding).

        Returns (pin embeddings z_p [pins, embed_dim], last board representations h_b(K-1)).
        board_features is [boards, board_feature_dim] (width 0 allowed).
        """
        current = {"pin": pin_features, "board": board_features}
        neighbors = {"board": board_neighbors, "pin": pin_neighbors}
        for layer in self.config.schedule():
            nbrs = neighbors[layer.target]
            current[layer.target] = self.conv(layer.k)(
                current[layer.source],
                current[layer.target],
                nbrs.src,
                nbrs.dst,
                nbrs.weight,
                pool=pool_gathered,
            )
        return self.head(current["pin"]), current["board"]


def random_model(config: ModelConfig, seed: int = 0) -> PinSage:
    """A PinSage of `config` with torch's default initialisation drawn from `seed` (demos, tests,
    benchmarks): the same seed gives the same weights."""
    torch.manual_seed(seed)
    return PinSage(config)
