"""The training objectives of the paper's section 3.3 on a batch's embeddings: the max-margin hinge
and, as an alternative, the softmax cross-entropy over the same negatives."""

from __future__ import annotations

import math

import torch

from pinsage_model.training.sampling import Batch

LOSSES = ("margin", "softmax")


def max_margin_loss(z: torch.Tensor, batch: Batch, margin: float) -> torch.Tensor:
    """Mean over every (query, negative) pair of max(0, z_q . z_n - z_q . z_pos + margin).

    z: [T, d] embeddings of the batch's computation-graph targets. Each query meets the shared
    negatives [n] and its own hard negatives [h]; pairs masked out (a negative that is the query or
    its positive) do not count."""
    zq = z[batch.query]  # [b, d]
    positive = (zq * z[batch.pos]).sum(1, keepdim=True)  # [b, 1]
    shared = zq @ z[batch.negatives].T  # [b, n]
    hard = torch.einsum("bd,bhd->bh", zq, z[batch.hard])  # [b, h]
    hinge = torch.relu(torch.cat([shared, hard], 1) - positive + margin)
    mask = torch.cat([batch.negative_mask, batch.hard_mask], 1).to(hinge.dtype)
    return (hinge * mask).sum() / mask.sum().clamp(min=1.0)


def softmax_loss(z: torch.Tensor, batch: Batch, temperature: float) -> torch.Tensor:
    """Mean over queries of the cross-entropy of picking the positive out of itself, the shared
    negatives and the query's hard negatives, with logits z_q . z / temperature.

    Unlike the hinge, whose gradient stops once a negative is `margin` below the positive, every
    negative keeps a share of the gradient in proportion to exp(score / temperature): the closest
    ones dominate, which is what orders the top of the ranking."""
    zq = z[batch.query]
    positive = (zq * z[batch.pos]).sum(1, keepdim=True)
    shared = zq @ z[batch.negatives].T
    hard = torch.einsum("bd,bhd->bh", zq, z[batch.hard])
    logits = torch.cat([positive, shared, hard], 1) / temperature
    keep = torch.cat([torch.ones_like(positive, dtype=torch.bool), batch.negative_mask, batch.hard_mask], 1)
    logits = logits.masked_fill(~keep, -math.inf)
    return (torch.logsumexp(logits, 1) - logits[:, 0]).mean()


def batch_loss(z: torch.Tensor, batch: Batch, loss: str, margin: float, temperature: float) -> torch.Tensor:
    """The loss named `loss` (one of LOSSES) with its parameter."""
    if loss == "softmax":
        return softmax_loss(z, batch, temperature)
    return max_margin_loss(z, batch, margin)
