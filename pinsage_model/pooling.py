"""Neighborhood pooling over segments.

Two implementations of one pooled vector, chosen by the caller:

- The executors' `partial_pool`/`merge`/`finalize` keep mergeable partial states in float64: each
  batch's weighted sums are one float32 sparse-dense product (`weighted_sums`, no [rows, hidden]
  gather nor float64 copy of it), added to the float64 state per segment. The Spark job sees a
  target's neighbor rows in sorted Arrow batches, and a target may straddle two batches.
  `pool_gathered` (whole-graph inference) pools the same way in one product per layer, with each
  row's weight normalised first.
- `pool_projected` (training steps) pools straight from the projections in their dtype, with a
  cheap backward.

Both take (projected [sources, hidden], src [rows], dst [rows], weights [rows] or None,
num_segments, mode) and return [num_segments, hidden] (`PoolFn`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pinsage_model.config import POOLINGS

# (projected, src, dst, weights, num_segments, mode) -> pooled: `pool_gathered` or `pool_projected`.
# torch marks its CSR tensors beta; `weighted_sums` uses only their product with a dense matrix.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

PoolFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, int, str], torch.Tensor]


@dataclass
class PoolState:
    """Per-segment partial aggregate.

    importance: acc = sum_v w_v * x_v, norm = sum_v w_v
    mean:       acc = sum_v x_v,       norm = number of rows
    max:        acc = max_v x_v (-inf where empty), norm = number of rows
    """

    acc: torch.Tensor  # [num_segments, hidden], float64
    norm: torch.Tensor  # [num_segments], float64

    def rows(self, index: slice | torch.Tensor) -> PoolState:
        return PoolState(self.acc[index], self.norm[index])


def _check(mode: str, weights) -> None:
    if mode not in POOLINGS:
        raise ValueError(f"unknown pooling {mode!r}")
    if mode == "importance" and weights is None:
        raise ValueError("importance pooling needs weights")


def _empty_state(num_segments: int, hidden: int, mode: str, weights, device=None) -> PoolState:
    """The partial state of `num_segments` segments that have no rows yet, after checking that
    `mode` is a pooling and that importance pooling has its `weights`."""
    _check(mode, weights)
    fill = float("-inf") if mode == "max" else 0.0
    acc = torch.full((num_segments, hidden), fill, dtype=torch.float64, device=device)
    return PoolState(acc, torch.zeros(num_segments, dtype=torch.float64, device=device))


def _csr(
    segment: torch.Tensor, index: torch.Tensor, values: torch.Tensor, num_segments: int, columns: int
) -> torch.Tensor:
    """The [num_segments, columns] CSR matrix with values[r] at (segment[r], index[r]); `index` and
    `values` are given with their rows grouped by segment (the counts per segment give the row
    pointers, whatever the order of `segment` itself)."""
    crow = torch.zeros(num_segments + 1, dtype=torch.int64, device=segment.device)
    crow[1:] = torch.cumsum(torch.bincount(segment, minlength=num_segments), 0)
    return torch.sparse_csr_tensor(
        crow,
        index,
        values,
        (num_segments, columns),
        device=values.device,
        check_invariants=False,  # crow and the indices come from segment and index by construction
    )


def weighted_sums(
    values: torch.Tensor,
    index: torch.Tensor,
    segment: torch.Tensor,
    weights: torch.Tensor,
    num_segments: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_r weights[r] * values[index[r]] over the rows r of each segment, in the values' dtype:
    one sparse-dense product S @ values with S [num_segments, len(values)] in CSR form, S[u, v] the
    summed weight of the rows of segment u that name v. It never builds the [rows, hidden] gather of
    `values`; the CSR product is row-parallel, so each sum comes out the same on every run with the
    same inputs. [sources, hidden] -> [num_segments, hidden].

    With `out` ([num_segments, hidden], the values' dtype) the sums are added to it in place and
    `out` is returned: a caller accumulating over chunks of sources holds one matrix, not two."""
    hidden = values.shape[1]
    if segment.numel() == 0 or hidden == 0:
        if out is not None:
            return out
        return torch.zeros((num_segments, hidden), dtype=values.dtype, device=values.device)
    # CSR wants the rows grouped by segment; the (segment, index) order makes the layout canonical.
    order = torch.argsort(segment * max(1, values.shape[0]) + index, stable=True)
    matrix = _csr(segment, index[order], weights[order].to(values.dtype), num_segments, values.shape[0])
    if out is not None:
        return out.addmm_(matrix, values)
    return matrix @ values


def _accumulate(
    state: PoolState,
    messages: torch.Tensor,
    segment: torch.Tensor,
    weights,
    mode: str,
    index: torch.Tensor | None = None,
) -> None:
    """Add the rows of `segment` [rows] to `state` (made by `_empty_state`, which checked `mode`
    and `weights`), in place: row r's message is messages[index[r]], or messages[r] without `index`.

    weights: [rows] (importance only). Importance and mean sums are `weighted_sums` in the messages'
    dtype (float32), added to the float64 state once per segment; the weights' totals are float64.
    Max is exact in any dtype."""
    if index is None:
        index = torch.arange(segment.shape[0], device=segment.device)
    if mode == "max":
        x = messages[index].to(torch.float64)
        state.acc.scatter_reduce_(0, segment.unsqueeze(1).expand(-1, x.shape[1]), x, reduce="amax")
        state.norm.index_add_(0, segment, torch.ones_like(segment, dtype=torch.float64))
        return
    if mode == "importance":
        w = weights.to(torch.float64)
    else:
        w = torch.ones(segment.shape[0], dtype=torch.float64, device=segment.device)
    state.acc += weighted_sums(messages, index, segment, w, state.acc.shape[0]).to(torch.float64)
    state.norm.index_add_(0, segment, w)


def partial_pool(
    messages: torch.Tensor,
    segment: torch.Tensor,
    weights: torch.Tensor | None,
    num_segments: int,
    mode: str,
    index: torch.Tensor | None = None,
) -> PoolState:
    """Aggregate the rows of `segment` into `num_segments` partial states.

    segment: [rows] int64 index of each row's segment; weights: [rows] (importance only). Row r's
    message is messages[index[r]] ([sources, hidden], e.g. a broadcast projection table), or
    messages[r] ([rows, hidden]) without `index`.
    """
    state = _empty_state(num_segments, messages.shape[1], mode, weights, messages.device)
    _accumulate(state, messages, segment, weights, mode, index)
    return state


def fold(partials: PoolState, segment: torch.Tensor, num_segments: int, mode: str) -> PoolState:
    """Merge partial states [rows] into `num_segments` states, row r into segment[r], in row order:
    what `merge` gives one pair at a time (sums in float64, or the maximum)."""
    _check(mode, partials.norm)
    state = _empty_state(num_segments, partials.acc.shape[1], mode, partials.norm, partials.acc.device)
    acc = partials.acc.to(torch.float64)
    if mode == "max":
        state.acc.scatter_reduce_(0, segment.unsqueeze(1).expand(-1, acc.shape[1]), acc, reduce="amax")
    else:
        state.acc.index_add_(0, segment, acc)
    state.norm.index_add_(0, segment, partials.norm.to(torch.float64))
    return state


def merge(a: PoolState, b: PoolState, mode: str) -> PoolState:
    """Combine two partial states of the same segments."""
    acc = torch.maximum(a.acc, b.acc) if mode == "max" else a.acc + b.acc
    return PoolState(acc, a.norm + b.norm)


def finalize(state: PoolState, mode: str) -> torch.Tensor:
    """Pooled vectors as float32; a segment with no rows pools to the zero vector."""
    empty = state.norm <= 0
    if mode == "max":
        pooled = state.acc.clone()
    else:
        pooled = state.acc / torch.where(empty, torch.ones_like(state.norm), state.norm).unsqueeze(1)
    pooled[empty] = 0.0
    return pooled.to(torch.float32)


def pool_projected(
    projected: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    weights: torch.Tensor | None,
    num_segments: int,
    mode: str,
) -> torch.Tensor:
    """Pooling straight from the projected sources, in their dtype, for training steps.

    Importance and mean pooling are the weighted mean of `pool_gathered`, written as one sparse
    product A @ projected with A[u, v] = w_v / sum w (importance) or 1 / rows (mean): it never
    builds the [rows, hidden] message matrix, nor its float64 copy, and its backward is
    A^T @ grad. Max pooling is `_padded_max`, in the projections' dtype (the maximum of float32
    values is exact, so no float64 copy is needed); a segment without rows pools to 0 as in
    `finalize`. The Spark executors and inference keep the float64 partial states.
    [sources, hidden] -> [num_segments, hidden]."""
    if mode not in POOLINGS:
        raise ValueError(f"unknown pooling {mode!r}")
    if mode == "max":
        return _padded_max(projected, src, dst, num_segments)
    if mode == "importance":
        if weights is None:
            raise ValueError("importance pooling needs weights")
        w = weights.to(torch.float64)
    else:
        w = torch.ones(dst.shape[0], dtype=torch.float64, device=dst.device)
    total = torch.zeros(num_segments, dtype=torch.float64, device=dst.device).index_add_(0, dst, w)
    coeff = (w / total[dst].clamp(min=torch.finfo(torch.float64).tiny)).to(projected.dtype)
    # The product runs on A in CSR form (rows grouped by segment: a training block's already are),
    # its backward on A^T as an uncoalesced COO matrix: on the CPU neither is sorted or coalesced.
    if dst.numel() > 1 and not bool((dst[1:] >= dst[:-1]).all()):
        order = torch.argsort(dst, stable=True)
        src, dst, coeff = src[order], dst[order], coeff[order]
    matrix = _csr(dst, src, coeff, num_segments, projected.shape[0])
    transposed = torch.sparse_coo_tensor(
        torch.stack([src, dst]),
        coeff,
        (projected.shape[0], num_segments),
        device=projected.device,
        check_invariants=False,
    )
    return _SparseProduct.apply(projected, matrix, transposed)


class _SparseProduct(torch.autograd.Function):
    """matrix @ x, with the gradient transposed @ grad (`transposed` is matrix^T)."""

    @staticmethod
    def forward(ctx, x, matrix, transposed):
        ctx.transposed = transposed
        return matrix @ x

    @staticmethod
    def backward(ctx, grad):
        return torch.sparse.mm(ctx.transposed, grad), None, None


def _padded_max(projected: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, num_segments: int):
    """Per-segment maximum through a dense [segments, most rows, hidden] gather: the sources are
    padded with a -inf row, each segment's rows fill one slot row of an index matrix, and `max`
    reduces it. Its backward is a plain gather's (an index_add of the gradient where each maximum
    was; of tied rows, one takes it), several times faster on the CPU than a scatter_reduce's. The
    neighbor tables' top-T bound keeps the padding small."""
    hidden = projected.shape[1]
    counts = torch.bincount(dst, minlength=num_segments)
    if dst.numel() == 0:
        return torch.zeros((num_segments, hidden), dtype=projected.dtype, device=projected.device)
    order = torch.argsort(dst, stable=True)
    seg = dst[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(seg.numel(), device=seg.device) - starts[seg]
    pad = projected.shape[0]  # the index of the -inf row
    index = torch.full((num_segments, int(counts.max())), pad, dtype=torch.long, device=dst.device)
    index[seg, slot] = src[order]
    padded = torch.cat([projected, projected.new_full((1, hidden), float("-inf"))])
    pooled = padded.index_select(0, index.view(-1)).view(*index.shape, hidden).max(1).values
    return torch.where((counts > 0).unsqueeze(1), pooled, torch.zeros_like(pooled))


# Rows of messages gathered at a time by `pool_gathered` for max pooling: 8-128 MB of float64 for
# hidden widths 64-1024, however large the graph.
GATHER_CHUNK_ROWS = 1 << 14


def pool_gathered(
    projected: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    weights: torch.Tensor | None,
    num_segments: int,
    mode: str,
    chunk_rows: int = GATHER_CHUNK_ROWS,
) -> torch.Tensor:
    """Pooling for whole-graph inference, what `partial_pool` then `finalize` give for the messages
    projected[src]. Importance and mean pool with one `weighted_sums` product over every row, each
    row's weight divided by its segment's float64 total first, so no [rows, hidden] message matrix
    nor [segments, hidden] float64 state is built; a segment whose total is not positive pools to
    0. Max gathers `chunk_rows` rows at a time into the float64 state, the same (bit for bit)
    whatever the chunk size. [sources, hidden] -> [num_segments, hidden]."""
    _check(mode, weights)
    if mode != "max":
        if mode == "importance":
            w = weights.to(torch.float64)
        else:
            w = torch.ones(dst.shape[0], dtype=torch.float64, device=dst.device)
        total = torch.zeros(num_segments, dtype=torch.float64, device=dst.device).index_add_(0, dst, w)
        mine = total[dst]
        coeff = torch.where(mine > 0, w / torch.where(mine > 0, mine, 1.0), 0.0)
        return weighted_sums(projected, src, dst, coeff, num_segments).to(torch.float32)
    state = _empty_state(num_segments, projected.shape[1], mode, weights, projected.device)
    for start in range(0, dst.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        _accumulate(state, projected, dst[rows], None, mode, src[rows])
    return finalize(state, mode)
