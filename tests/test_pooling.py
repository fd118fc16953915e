"""Both pooling implementations against a plain per-target reference: the training pooling's values
and gradient, the inference pooling bit for bit whatever its chunk size, and the executors'
partial states merged across a batch boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinsage_model.pooling import (
    PoolState,
    finalize,
    fold,
    merge,
    partial_pool,
    pool_gathered,
    pool_projected,
    weighted_sums,
)

MODES = ["importance", "mean", "max"]


def rows(seed: int, sources: int, targets: int, count: int, hidden: int):
    """Random neighbor rows (src, dst, weight) and projections; the last target has no rows."""
    gen = torch.Generator().manual_seed(seed)
    projected = torch.rand((sources, hidden), generator=gen)
    src = torch.randint(0, sources, (count,), generator=gen)
    dst = torch.randint(0, targets - 1, (count,), generator=gen)
    weight = torch.rand(count, generator=gen) + 0.1
    return projected, src, dst, weight


def reference_pool(projected: torch.Tensor, src, dst, weight, targets: int, mode: str) -> torch.Tensor:
    """Each target's weighted mean (importance), mean or maximum of its rows' projections, one
    target at a time in float64; 0 for a target without rows. Differentiable through plain torch."""
    out = []
    for u in range(targets):
        mine = (dst == u).nonzero().squeeze(1)
        if not len(mine):
            out.append(torch.zeros(projected.shape[1], dtype=torch.float64))
            continue
        x = projected[src[mine]].double()
        if mode == "max":
            out.append(x.max(0).values)
        else:
            w = weight[mine].double() if mode == "importance" else torch.ones(len(mine), dtype=torch.float64)
            out.append((w[:, None] * x).sum(0) / w.sum())
    return torch.stack(out)


def numpy_pool(projected: np.ndarray, src, dst, weight, targets: int, mode: str) -> np.ndarray:
    """The same pooling in numpy float64, row by row."""
    acc = np.full((targets, projected.shape[1]), -np.inf if mode == "max" else 0.0)
    norm = np.zeros(targets)
    for s, d, w in zip(src, dst, weight, strict=True):
        x = projected[s].astype(np.float64)
        if mode == "max":
            acc[d] = np.maximum(acc[d], x)
        else:
            acc[d] += (w if mode == "importance" else 1.0) * x
        norm[d] += w if mode == "importance" else 1.0
    pooled = acc if mode == "max" else acc / np.where(norm > 0, norm, 1.0)[:, None]
    pooled[norm == 0] = 0.0
    return pooled


@pytest.mark.parametrize("mode", MODES)
def test_training_pooling_equals_the_reference_pooling_and_its_gradient(mode):
    projected, src, dst, weight = rows(seed=3, sources=9, targets=5, count=30, hidden=4)
    projected.requires_grad_(True)
    upstream = torch.rand((5, 4), generator=torch.Generator().manual_seed(4))

    fast = pool_projected(projected, src, dst, weight, 5, mode)
    expected = reference_pool(projected, src, dst, weight, 5, mode)
    torch.testing.assert_close(fast.double(), expected.detach(), rtol=0, atol=1e-6)
    assert torch.equal(fast[4], torch.zeros(4))

    (fast * upstream).sum().backward()
    fast_grad, projected.grad = projected.grad.clone(), None
    (expected * upstream.double()).sum().backward()
    torch.testing.assert_close(fast_grad, projected.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_inference_pooling_is_bit_for_bit_the_same_whatever_the_chunk_size(mode):
    projected, src, dst, weight = rows(seed=5, sources=11, targets=6, count=97, hidden=3)
    weight = weight.double()
    whole = pool_gathered(projected, src, dst, weight, 6, mode, chunk_rows=97)
    expected = numpy_pool(projected.numpy(), src.numpy(), dst.numpy(), weight.numpy(), 6, mode)
    np.testing.assert_allclose(whole.numpy(), expected, rtol=0, atol=1e-6)
    assert whole.dtype == torch.float32 and torch.equal(whole[5], torch.zeros(3))
    for chunk in (1, 7, 96, 1000):
        got = pool_gathered(projected, src, dst, weight, 6, mode, chunk_rows=chunk)
        assert torch.equal(got, whole), f"chunks of {chunk} rows"
    none = pool_gathered(projected, src[:0], dst[:0], weight[:0], 6, mode)
    assert torch.equal(none, torch.zeros((6, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_partial_states_merged_across_a_batch_boundary_equal_the_whole_graph_pooling(mode):
    """An executor may see a target's rows in two Arrow batches: the merged partial states pool to
    what the whole-graph inference pools, up to the float32 sums' order (a few units in the last
    place: each part is summed in float32 before the float64 merge)."""
    projected, src, dst, weight = rows(seed=7, sources=8, targets=4, count=40, hidden=5)
    order = torch.argsort(dst, stable=True)
    src, dst, weight = src[order], dst[order], weight[order]
    messages = projected[src]
    w = weight if mode == "importance" else None
    first = partial_pool(messages[:17], dst[:17], None if w is None else w[:17], 4, mode)
    second = partial_pool(messages[17:], dst[17:], None if w is None else w[17:], 4, mode)
    merged = finalize(merge(first, second, mode), mode)
    whole = pool_gathered(projected, src, dst, w, 4, mode)
    torch.testing.assert_close(merged, whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_partial_states_folded_by_segment_equal_merging_them_one_by_one(mode):
    """Projections broadcast in parts: each part's partial state per target (float32 on the way),
    folded into the targets in part order, equal `merge` applied part after part, and pool to what
    the whole-graph inference pools."""
    projected, src, dst, weight = rows(seed=11, sources=12, targets=5, count=60, hidden=4)
    w = weight if mode == "importance" else None
    part = src % 3
    states = []
    for p in range(3):
        mine = part == p
        state = partial_pool(projected, dst[mine], None if w is None else w[mine], 5, mode, src[mine])
        states.append(PoolState(state.acc.float().double(), state.norm))  # the table holds acc as float32
    expected = states[0]
    for state in states[1:]:
        expected = merge(expected, state, mode)
    # Rows as the merge pass sees them: the targets' partials, part by part, targets interleaved.
    seg = torch.arange(5).repeat(3)
    acc = torch.cat([s.acc for s in states]).float()
    norm = torch.cat([s.norm for s in states])
    has_rows = norm > 0  # a part that reaches no row of a target writes no partial for it
    folded = fold(PoolState(acc[has_rows], norm[has_rows]), seg[has_rows], 5, mode)
    if mode == "max":  # the state of a target a part missed is -inf, which folding never sees
        assert torch.equal(folded.acc, expected.acc)
    else:
        torch.testing.assert_close(folded.acc, expected.acc, rtol=1e-15, atol=0)
    assert torch.equal(folded.norm, expected.norm)
    whole = pool_gathered(projected, src, dst, w, 5, mode)
    torch.testing.assert_close(finalize(folded, mode), whole, rtol=1e-6, atol=1e-7)


def test_weighted_sums_added_in_place_to_out_equal_a_row_by_row_sum():
    """Two chunks of sources added into one `out` give, per segment, what numpy sums row by row in
    float64; a chunk without rows leaves `out` as it was."""
    projected, src, dst, weight = rows(seed=5, sources=40, targets=9, count=150, hidden=6)
    start = torch.rand((9, 6), dtype=torch.float32)
    out = start.clone()
    for chunk in (slice(0, 20), slice(20, 40)):
        mine = (src >= chunk.start) & (src < chunk.stop)
        got = weighted_sums(projected[chunk], src[mine] - chunk.start, dst[mine], weight[mine], 9, out=out)
        assert got is out
    empty = torch.empty(0, dtype=torch.int64)
    assert weighted_sums(projected, empty, empty, torch.empty(0), 9, out=out) is out
    expected = start.double().numpy().copy()
    for s, d, w in zip(src.tolist(), dst.tolist(), weight.double().tolist(), strict=True):
        expected[d] += w * projected[s].double().numpy()
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_unknown_pooling_and_missing_weights_are_refused():
    projected, src, dst, weight = rows(seed=1, sources=3, targets=2, count=4, hidden=2)
    for pool in (pool_gathered, pool_projected):
        with pytest.raises(ValueError, match="unknown pooling 'sum'"):
            pool(projected, src, dst, weight, 2, "sum")
        with pytest.raises(ValueError, match="importance pooling needs weights"):
            pool(projected, src, dst, None, 2, "importance")
