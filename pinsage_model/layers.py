"""The parts of one PinSage convolution and of the output head.

Each layer k is split into the three steps the Spark chain runs as separate stages:
`project` (map over source nodes), pooling (`pinsage_model.pooling`, per target) and `combine`
(map over targets). `PinSageConv.forward` composes them for a graph in memory, with the pooling
implementation its caller names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pinsage_model.config import LINEAR_POOLINGS, LayerDims
from pinsage_model.pooling import PoolFn

NORMALIZE_EPS = 1e-12


class PinSageConv(nn.Module):
    """One importance-pooling graph convolution (Ying et al. 2018, Algorithm 1).

    For a target u with neighbor rows (v, w_v) and own representation h_u of width self_dim:

        m_v = ReLU(Q h_v + q)                                  h_v: [in_dim] -> m_v: [hidden_dim]
        n_u = pool({m_v}, {w_v})                               [hidden_dim], 0 if u has no rows
        h_u' = normalize(ReLU(W concat(h_u, n_u) + w))         [self_dim + hidden_dim] -> [out_dim]

    pool is the weight-normalised sum (importance), the plain mean, or the element-wise max.
    """

    def __init__(self, dims: LayerDims, pooling: str) -> None:
        super().__init__()
        self.dims = dims
        self.pooling = pooling
        self.Q = nn.Linear(dims.in_dim, dims.hidden_dim)
        self.W = nn.Linear(dims.self_dim + dims.hidden_dim, dims.out_dim)

    def project(self, h_src: torch.Tensor) -> torch.Tensor:
        """Step 1, once per source node: [n, in_dim] -> [n, hidden_dim]."""
        return self.Q(h_src).relu_()

    def combine(self, h_self: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Step 3, once per target: ([n, self_dim], [n, hidden_dim]) -> [n, out_dim], unit norm.

        W concat(h_u, n_u) is computed as W_self h_u + W_pool n_u (the column blocks of W), two
        products into one output, so the [n, self_dim + hidden_dim] concatenation is never copied."""
        return self.finish(h_self, self.pooled_term(pooled.to(self.W.weight.dtype)))

    def pooled_term(self, pooled: torch.Tensor) -> torch.Tensor:
        """W_pool n: the pooled half of W's product, [n, hidden_dim] -> [n, out_dim]. Importance and
        mean pooling are linear, so W_pool applied to each source's projection before pooling gives
        the same pooled term (up to float rounding) with out_dim-wide vectors to pool."""
        return pooled @ self.W.weight[:, self.dims.self_dim :].T

    def message(self, h_src: torch.Tensor, through_w: bool) -> torch.Tensor:
        """What a source sends its targets: its projection, or with `through_w` (linear pooling
        only) W_pool applied to it, `pooled_term(project(h_src))`: [n, in_dim] -> [n, dims.message_dim]."""
        if through_w and self.pooling not in LINEAR_POOLINGS:
            raise ValueError(f"{self.pooling} pooling does not commute with W_pool")
        projected = self.project(h_src)
        return self.pooled_term(projected) if through_w else projected

    def from_pooled(self, h_self: torch.Tensor, pooled: torch.Tensor, through_w: bool) -> torch.Tensor:
        """Step 3 from pooled messages: `finish` when they went through W_pool, else `combine`."""
        return self.finish(h_self, pooled) if through_w else self.combine(h_self, pooled)

    def finish(self, h_self: torch.Tensor, pooled_term: torch.Tensor) -> torch.Tensor:
        """normalize(ReLU(W_self h_self + pooled_term + w)): ([n, self_dim], [n, out_dim]) -> [n, out_dim]."""
        h = pooled_term + self.W.bias
        if self.dims.self_dim:
            h = h.addmm_(h_self.to(h.dtype), self.W.weight[:, : self.dims.self_dim].T)
        return F.normalize(h.relu_(), p=2.0, dim=1, eps=NORMALIZE_EPS)

    def forward(
        self,
        h_src: torch.Tensor,
        h_self: torch.Tensor,
        nbr_src: torch.Tensor,
        nbr_dst: torch.Tensor,
        nbr_weight: torch.Tensor,
        *,
        pool: PoolFn,
    ) -> torch.Tensor:
        """The layer on a graph in memory: every source projected once, then pooled per neighbor
        row by `pool` (`pooling.pool_gathered` for inference, `pooling.pool_projected` for
        training steps), then combined per target.

        nbr_src indexes rows of h_src, nbr_dst rows of h_self (the targets), nbr_weight is [rows].
        """
        projected = self.project(h_src)
        pooled = pool(projected, nbr_src, nbr_dst, nbr_weight, h_self.shape[0], self.pooling)
        return self.combine(h_self, pooled)


class EmbeddingHead(nn.Module):
    """Final dense layers on a pin's last representation: z = G2 ReLU(G1 h + g), then optionally
    L2-normalised. [n, embed_dim] -> [n, embed_dim]."""

    def __init__(self, embed_dim: int, normalize_output: bool) -> None:
        super().__init__()
        self.normalize_output = normalize_output
        self.G1 = nn.Linear(embed_dim, embed_dim)
        self.G2 = nn.Linear(embed_dim, embed_dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.G2(self.G1(h).relu_())
        return F.normalize(z, p=2.0, dim=1, eps=NORMALIZE_EPS) if self.normalize_output else z
