"""The losses against the formulas written out per example in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinsage_model.config import ModelConfig
from pinsage_model.training.loss import candidate_log_count, max_margin_loss, softmax_loss
from pinsage_model.training.sampling import make_batch
from tests.training_data import clustered, in_memory, one_torch_thread  # noqa: F401

SCHEDULE = ModelConfig(2, 8, 0, 16, 8).schedule()


def test_max_margin_loss_is_the_mean_hinge_over_unmasked_pairs():
    graph, _ = in_memory(clustered(seed=2))
    batch = make_batch(
        graph, SCHEDULE, np.array([1, 2]), np.array([3, 4]), np.array([5, 3]), np.array([[6], [7]])
    )
    z = torch.randn(len(batch.graph.targets), 5, generator=torch.Generator().manual_seed(0))
    zn = z.numpy()
    terms = []
    for i in range(2):
        q, p = zn[int(batch.query[i])], zn[int(batch.pos[i])]
        negs = [
            (n, m) for n, m in zip(batch.negatives.tolist(), batch.negative_mask[i].tolist(), strict=True)
        ]
        negs += [(n, m) for n, m in zip(batch.hard[i].tolist(), batch.hard_mask[i].tolist(), strict=True)]
        terms += [max(0.0, q @ zn[n] - q @ p + 0.3) for n, keep in negs if keep]
    assert len(terms) == 5  # pin 3 is query 0's positive
    assert float(max_margin_loss(z, batch, 0.3)) == pytest.approx(np.mean(terms), rel=1e-6)


def test_softmax_loss_is_the_cross_entropy_of_the_positive_among_unmasked_negatives():
    graph, _ = in_memory(clustered(seed=2))
    batch = make_batch(
        graph, SCHEDULE, np.array([1, 2]), np.array([3, 4]), np.array([5, 3]), np.array([[6], [7]])
    )
    z = torch.randn(len(batch.graph.targets), 5, generator=torch.Generator().manual_seed(0))
    zn = z.numpy().astype(np.float64)
    terms = []
    for i in range(2):
        q, p = zn[int(batch.query[i])], zn[int(batch.pos[i])]
        kept = [
            n for n, m in zip(batch.negatives.tolist(), batch.negative_mask[i].tolist(), strict=True) if m
        ]
        kept += [n for n, m in zip(batch.hard[i].tolist(), batch.hard_mask[i].tolist(), strict=True) if m]
        logits = np.array([q @ p] + [q @ zn[n] for n in kept]) / 0.2
        terms.append(np.log(np.exp(logits).sum()) - logits[0])
    assert float(softmax_loss(z, batch, 0.2)) == pytest.approx(np.mean(terms), rel=1e-5)


def per_example_softmax(batch, z: torch.Tensor, log_count: torch.Tensor, in_batch: int) -> torch.Tensor:
    """The softmax loss written out example by example with z's dtype: the positive among the
    kept shared negatives, the kept hard negatives (no correction) and the first `in_batch`
    examples' positives that are neither the query's pin nor its positive."""
    lc = log_count.to(z.dtype)
    pin = batch.graph.targets
    query, pos = pin[batch.query.numpy()], pin[batch.pos.numpy()]
    terms = []
    for i in range(len(batch.query)):
        q = z[int(batch.query[i])]
        logits = [q @ z[int(batch.pos[i])] / 0.2 - lc[int(batch.pos[i])]]
        for n, m in zip(batch.negatives.tolist(), batch.negative_mask[i].tolist(), strict=True):
            if m:
                logits.append(q @ z[n] / 0.2 - lc[n])
        for n, m in zip(batch.hard[i].tolist(), batch.hard_mask[i].tolist(), strict=True):
            if m:
                logits.append(q @ z[n] / 0.2)  # hard negatives: no correction
        for j in range(in_batch):
            if pos[j] not in (pos[i], query[i]):
                logits.append(q @ z[int(batch.pos[j])] / 0.2 - lc[int(batch.pos[j])])
        logits = torch.stack(logits)
        terms.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(terms).mean()


def test_in_batch_negatives_with_logq_are_the_corrected_cross_entropy_over_every_candidate():
    graph, _ = in_memory(clustered(seed=2))
    # Example 2's positive (3) is example 0's too, and example 1's positive (5) is a shared negative.
    batch = make_batch(
        graph,
        SCHEDULE,
        np.array([1, 2, 6]),
        np.array([3, 5, 3]),
        np.array([5, 7]),
        np.array([[8], [9], [4]]),
    )
    z = torch.randn(len(batch.graph.targets), 5, generator=torch.Generator().manual_seed(0))
    log_count = torch.randn(len(batch.graph.targets), generator=torch.Generator().manual_seed(1))
    expected = float(per_example_softmax(batch, z.double(), log_count, in_batch=2))
    got = softmax_loss(z, batch, 0.2, in_batch=2, log_count=log_count)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # Without the correction the in-batch candidates still count: a different loss.
    assert float(softmax_loss(z, batch, 0.2, in_batch=2)) != pytest.approx(float(got), rel=1e-3)


def test_the_softmax_loss_gradient_is_the_per_example_formula_s_gradient():
    graph, _ = in_memory(clustered(seed=2))
    batch = make_batch(
        graph,
        SCHEDULE,
        np.array([1, 2, 6]),
        np.array([3, 5, 3]),
        np.array([5, 7]),
        np.array([[8, 4], [9, 2], [4, 0]]),  # example 1's hard negative 2 is its query: masked
    )
    log_count = torch.randn(len(batch.graph.targets), generator=torch.Generator().manual_seed(1))
    z0 = torch.randn(len(batch.graph.targets), 5, generator=torch.Generator().manual_seed(0))
    assert not bool(batch.hard_mask.all()), "a masked hard negative is part of the case"
    z64 = z0.double().requires_grad_()
    per_example_softmax(batch, z64, log_count, in_batch=2).backward()
    z = z0.clone().requires_grad_()
    loss = softmax_loss(z, batch, 0.2, in_batch=2, log_count=log_count)
    loss.backward()
    assert float(loss) == pytest.approx(
        float(per_example_softmax(batch, z0.double(), log_count, 2)), rel=1e-6
    )
    np.testing.assert_allclose(z.grad.numpy(), z64.grad.numpy(), rtol=1e-5, atol=1e-6)
    # A float64 correction is cast to the embeddings' dtype: the same loss and gradient.
    z2 = z0.clone().requires_grad_()
    softmax_loss(z2, batch, 0.2, in_batch=2, log_count=log_count.double()).backward()
    assert torch.equal(z2.grad, z.grad)


def test_candidate_log_count_adds_the_in_batch_share_to_the_uniform_rate():
    counts = np.array([6, 0, 2, 0])  # pin 0 is 3/4 of the positives
    got = candidate_log_count(counts, in_batch=8, shared=2, num_pins=4)
    np.testing.assert_allclose(np.exp(got), [8 * 0.75 + 0.5, 0.5, 8 * 0.25 + 0.5, 0.5], rtol=1e-6)
