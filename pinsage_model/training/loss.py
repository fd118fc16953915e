"""The training objectives of the paper's section 3.3 on a batch's embeddings: the max-margin hinge
and, as an alternative, the softmax cross-entropy over the same negatives."""

from __future__ import annotations

import math

import numpy as np
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


def softmax_loss(
    z: torch.Tensor,
    batch: Batch,
    temperature: float,
    in_batch: int = 0,
    log_count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over queries of the cross-entropy of picking the positive out of itself, the shared
    negatives, the query's hard negatives and, with `in_batch` > 0, the positives of the batch's
    first `in_batch` examples (in-batch negatives), with logits z_q . z / temperature.

    Unlike the hinge, whose gradient stops once a negative is `margin` below the positive, every
    negative keeps a share of the gradient in proportion to exp(score / temperature): the closest
    ones dominate, which is what orders the top of the ranking.

    In-batch negatives are drawn by popularity (a pin is one as often as it is a positive), so on
    their own they would teach pointwise mutual information, not which pin is likeliest. With
    `log_count` ([T] per computation-graph row: the log of how many times that pin is expected
    among one query's sampled candidates), every logit but the hard negatives' is corrected by
    subtracting it, the sampling-bias correction of Yi et al. 2019 ("logQ"). An in-batch candidate
    that is the query's pin or its positive (a duplicate of it elsewhere in the batch) is left out,
    as is the query's own example."""
    zq = z[batch.query]
    positive = (zq * z[batch.pos]).sum(1, keepdim=True)
    shared = zq @ z[batch.negatives].T
    hard = torch.einsum("bd,bhd->bh", zq, z[batch.hard])
    parts = [positive / temperature, shared / temperature, hard / temperature]
    keep = [torch.ones_like(positive, dtype=torch.bool), batch.negative_mask, batch.hard_mask]
    if log_count is not None:
        parts[0] = parts[0] - log_count[batch.pos].unsqueeze(1)
        parts[1] = parts[1] - log_count[batch.negatives].unsqueeze(0)
    if in_batch > 0:
        others = batch.pos[:in_batch]  # [m]
        cross = zq @ z[others].T / temperature  # [b, m]
        if log_count is not None:
            cross = cross - log_count[others].unsqueeze(0)
        parts.append(cross)
        keep.append((others[None, :] != batch.pos[:, None]) & (others[None, :] != batch.query[:, None]))
    logits = torch.cat(parts, 1).masked_fill(~torch.cat(keep, 1), -math.inf)
    return (torch.logsumexp(logits, 1) - logits[:, 0]).mean()


def candidate_log_count(positive_counts: np.ndarray, in_batch: int, shared: int, num_pins: int) -> np.ndarray:
    """log of each pin's expected count among one query's sampled candidates, [pins] float32: the
    `in_batch` in-batch positives (pin j with the share of the epoch's positives that are j) plus
    the `shared` uniform negatives (1 / pins each)."""
    share = positive_counts / max(positive_counts.sum(), 1)
    return np.log(in_batch * share + shared / num_pins).astype(np.float32)


def batch_loss(
    z: torch.Tensor,
    batch: Batch,
    loss: str,
    margin: float,
    temperature: float,
    in_batch: int = 0,
    log_count: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss named `loss` (one of LOSSES) with its parameters (in-batch negatives and their
    correction: softmax only)."""
    if loss == "softmax":
        return softmax_loss(z, batch, temperature, in_batch, log_count)
    return max_margin_loss(z, batch, margin)
