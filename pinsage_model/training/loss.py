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
    as is the query's own example.

    Computed by `_SoftmaxCrossEntropy`: the shared and in-batch candidates' logits are one
    [queries, candidates] product, exponentiated in place, and the backward is written out (two
    products), so no masked, concatenated or log-softmax copy of that matrix is made."""
    others = batch.pos[:in_batch] if in_batch > 0 else batch.pos[:0]
    shared = torch.cat([batch.negatives, others])
    n = batch.negatives.shape[0]
    # The in-batch candidates that are the query's pin or its positive, as (row, column) pairs.
    rows_p, cols_p = _equal_pairs(batch.pos, others)
    rows_q, cols_q = _equal_pairs(batch.query, others)
    drop = (torch.cat([rows_p, rows_q]), torch.cat([cols_p, cols_q]) + n)
    bias_shared = bias_pos = None
    if log_count is not None:
        bias_shared, bias_pos = log_count[shared].to(z.dtype), log_count[batch.pos].to(z.dtype)
    return _SoftmaxCrossEntropy.apply(
        z[batch.query],
        z[batch.pos],
        z[shared],
        z[batch.hard],
        bias_shared,
        bias_pos,
        temperature,
        batch.negative_mask,
        drop,
        batch.hard_mask,
    )


def _equal_pairs(values: torch.Tensor, others: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of every others[col] == values[row], through a sort of `others`."""
    ordered, order = torch.sort(others, stable=True)
    low = torch.searchsorted(ordered, values)
    count = torch.searchsorted(ordered, values, right=True) - low
    rows = torch.repeat_interleave(torch.arange(len(values), device=values.device), count)
    first = torch.cumsum(count, 0) - count
    cols = order[low[rows] + torch.arange(rows.shape[0], device=values.device) - first[rows]]
    return rows, cols


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """mean_i [log(sum_j exp l_ij) - p_i] over queries i, with the positive's logit
    p_i = zq_i . zp_i / t - bp_i among the l_ij: the shared candidates' zq_i . c_j / t - bc_j (left
    out where `keep` [b, n] is false on the first n, and at the `drop` (rows, cols) pairs) and the
    query's own hard negatives' zq_i . h_ik / t (where `hard_keep`). Forward and backward on one
    [b, candidates] buffer of exponentials."""

    @staticmethod
    def forward(ctx, zq, zp, zc, zh, bc, bp, t, keep, drop, hard_keep):
        shared = (zq @ zc.T).div_(t)
        if bc is not None:
            shared.sub_(bc.unsqueeze(0))
        shared[:, : keep.shape[1]].masked_fill_(~keep, -math.inf)
        shared[drop] = -math.inf
        hard = torch.einsum("bd,bhd->bh", zq, zh).div_(t).masked_fill_(~hard_keep, -math.inf)
        positive = (zq * zp).sum(1) / t
        if bp is not None:
            positive = positive - bp
        top = positive
        for part in (shared, hard):
            if part.shape[1]:
                top = torch.maximum(top, part.amax(1))
        shared.sub_(top.unsqueeze(1)).exp_()
        hard.sub_(top.unsqueeze(1)).exp_()
        e_pos = (positive - top).exp()
        total = shared.sum(1) + hard.sum(1) + e_pos
        ctx.save_for_backward(zq, zp, zc, zh, shared, hard, e_pos, total)
        ctx.t = t
        return (total.log() + top - positive).mean()

    @staticmethod
    def backward(ctx, grad):
        zq, zp, zc, zh, e_shared, e_hard, e_pos, total = ctx.saved_tensors
        scale = grad / (zq.shape[0] * ctx.t)  # d loss / d (a dot product) per unit of softmax
        per_row = (scale / total).unsqueeze(1)
        d_shared = e_shared * per_row  # [b, candidates]
        d_hard = e_hard * per_row  # [b, h]
        d_pos = (e_pos * per_row.squeeze(1) - scale).unsqueeze(1)  # (softmax - 1) of the positive
        g_zq = torch.addmm(d_pos * zp, d_shared, zc) + torch.einsum("bh,bhd->bd", d_hard, zh)
        g_zc = d_shared.T @ zq
        g_zh = d_hard.unsqueeze(2) * zq.unsqueeze(1)
        return g_zq, d_pos * zq, g_zc, g_zh, None, None, None, None, None, None


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
