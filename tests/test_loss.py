"""The losses against the formulas written out per example in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinsage_model.config import ModelConfig
from pinsage_model.training.loss import max_margin_loss, softmax_loss
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
