"""The training loop: the learning-rate schedule, the hit rate, the curriculum over epochs, the loss
falling, co-membership pairs helping (with or without their boards hidden), deterministic kernels and bit-identical reruns, and the
checkpoint it trains."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch

from pinsage_model.checkpoint import checkpoint_bytes
from pinsage_model.training.loop import TrainOptions, deterministic_kernels, hit_rate, lr_factor, train
from tests.training_data import QUICK, clustered, in_memory, one_torch_thread  # noqa: F401


def test_learning_rate_warms_up_linearly_then_decays_per_epoch():
    factor = lr_factor(warmup_steps=4, decay=0.5, steps_per_epoch=10)
    assert [factor(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0 and factor(14) == pytest.approx(0.5) and factor(24) == pytest.approx(0.25)


def test_hit_rate_counts_positives_in_the_top_k_and_ties_against_them():
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    assert hit_rate(z, np.array([0, 0]), np.array([1, 3]), k=1) == 0.5
    assert hit_rate(z, np.array([0]), np.array([3]), k=3) == 1.0
    assert hit_rate(torch.ones(4, 2), np.array([0]), np.array([1]), k=2) == 0.0


def test_each_epoch_logs_the_curriculums_hard_negatives():
    graph, pairs = in_memory(clustered(seed=6))
    _, history = train(
        graph, pairs, TrainOptions(**{**QUICK, "epochs": 5, "hard_negatives": 3, "batch_size": 256})
    )
    assert [e.hard_negatives for e in history] == [0, 1, 2, 3, 3]


def test_co_membership_pairs_teach_the_boards_when_given_pairs_are_few():
    data = clustered(seed=12)
    graph, pairs = in_memory(data)
    few = (pairs[0][:8], pairs[1][:8])
    options = TrainOptions(
        **{**QUICK, "epochs": 4, "hard_negatives": 2, "hard_window": "2:6", "warmup_steps": 2}
    )
    _, alone = train(graph, few, options, validation=pairs)
    model, helped = train(graph, few, replace(options, co_membership_pairs=600), validation=pairs)
    assert helped[-1].hit_rate > alone[-1].hit_rate + 0.1, (alone[-1].hit_rate, helped[-1].hit_rate)
    # Each epoch trains on the given pairs plus fresh draws (self-pairs dropped), in full batches.
    for entry in helped:
        assert np.ceil((8 + 400) / 64) <= entry.steps <= np.ceil((8 + 600) / 64)
    again, _ = train(graph, few, replace(options, co_membership_pairs=600), validation=pairs)
    assert checkpoint_bytes(again) == checkpoint_bytes(model)
    # Shown without the board each pair was drawn from, the positives still teach the boards
    # (pins share others); the batches differ, and a rerun is the same bit for bit.
    hiding = replace(options, co_membership_pairs=600, hide_pair_board=True)
    hidden, hidden_log = train(graph, few, hiding, validation=pairs)
    assert hidden_log[-1].hit_rate > alone[-1].hit_rate + 0.1, (alone[-1].hit_rate, hidden_log[-1].hit_rate)
    assert checkpoint_bytes(hidden) != checkpoint_bytes(model)
    assert checkpoint_bytes(train(graph, few, hiding)[0]) == checkpoint_bytes(hidden)


@pytest.mark.parametrize(
    "loss, in_batch, ratio", [("margin", 0, 0.5), ("softmax", 0, 0.8), ("softmax", 32, 0.85)]
)
def test_loss_decreases_and_hit_rate_rises_over_epochs(loss, in_batch, ratio):
    data = clustered(seed=7)
    graph, pairs = in_memory(data)
    held_out = np.arange(len(pairs[0])) % 5 == 0
    fit = (pairs[0][~held_out], pairs[1][~held_out])
    validation = (pairs[0][held_out], pairs[1][held_out])
    options = TrainOptions(
        **{**QUICK, "epochs": 4, "hard_negatives": 0, "warmup_steps": 2, "loss": loss, "temperature": 0.2},
        in_batch_negatives=in_batch,
    )
    _, history = train(graph, fit, options, validation)
    losses = [e.loss for e in history]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    # The hinge reaches 0 on separable pairs; the cross-entropy keeps the clusters' own pins as rivals
    # (more of them with in-batch negatives, whose positives are often of the query's cluster).
    assert losses[-1] < ratio * losses[0], losses
    assert history[-1].hit_rate > history[0].hit_rate, [e.hit_rate for e in history]


def test_training_kernels_add_repeated_index_gradients_in_a_fixed_order():
    """With two threads the CPU backward of x[idx] adds the rows of repeated indices in thread order
    (on this machine two such backwards differ in the last bits every time); `train` runs under
    `deterministic_kernels`, which fixes the order, and restores the caller's setting after."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 64, generator=gen, requires_grad=True)
    idx = torch.randint(0, 2000, (300_000,), generator=gen)
    w = torch.randn(300_000, 64, generator=gen)

    def grad() -> torch.Tensor:
        x.grad = None
        (x[idx] * w).sum().backward()
        return x.grad.clone()

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with deterministic_kernels(torch.device("cpu")):
            assert torch.are_deterministic_algorithms_enabled()
            grads = [grad() for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    assert not torch.are_deterministic_algorithms_enabled()


def test_training_is_deterministic_with_a_seed_whatever_the_workers():
    graph, pairs = in_memory(clustered(seed=8))
    options = TrainOptions(**{**QUICK, "epochs": 2, "hard_negatives": 2, "hard_window": "2:6", "seed": 5})

    def checkpoint(**changes) -> bytes:
        return checkpoint_bytes(train(graph, pairs, replace(options, **changes))[0])

    first = checkpoint()
    assert checkpoint() == first, "a rerun must write a bit-identical checkpoint"
    assert checkpoint(workers=2) == first, "batches built by worker processes must be the same batches"
    assert checkpoint(seed=6) != first


def test_checkpoint_is_format_version_1_that_torch_loads_weights_only(tmp_path):
    graph, pairs = in_memory(clustered(seed=9))
    model, _ = train(graph, pairs, TrainOptions(**{**QUICK, "epochs": 1}))
    raw = torch.load(io.BytesIO(checkpoint_bytes(model)), weights_only=True)
    assert raw["format_version"] == 1 and raw["config"]["pin_feature_dim"] == 8


def test_progress_lines_give_counts_and_the_time_left_at_most_every_interval(caplog):
    import logging

    from pinsage_model.training.progress import Progress

    now = [0.0]
    progress = Progress("windows", 400, logging.getLogger("pinsage.test"), every=30, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="pinsage.test"):
        for done, t in ((100, 10.0), (200, 40.0), (300, 50.0), (400, 80.0)):
            now[0] = t
            progress.update(done, "more")
    assert [r.getMessage() for r in caplog.records] == [
        "windows: 200/400 (50%), 40s, about 40s left, more",
        "windows: 400/400 (100%), 80s, about 0s left, more",
    ]
