"""Minibatch computation graphs compute, for their target pins, exactly what the whole-graph model
computes, for every layer count, pooling and with board features."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pinsage_model.config import ModelConfig
from pinsage_model.model import PinSage
from pinsage_model.training.graph import Adjacency
from pinsage_model.training.subgraph import computation_graph, embed_targets
from tests.training_data import clustered, in_memory, one_torch_thread  # noqa: F401


@pytest.mark.parametrize(
    ("num_layers", "pooling", "board_dim"), [(2, "importance", 0), (4, "max", 3), (4, "mean", 0)]
)
def test_subgraph_batch_forward_equals_whole_graph_forward(num_layers, pooling, board_dim):
    graph, _ = in_memory(clustered(seed=1, board_dim=board_dim))
    torch.manual_seed(3)
    model = PinSage(ModelConfig(num_layers, 8, board_dim, 16, 8, pooling))
    whole = model(*graph.whole_graph())[0]
    targets = np.unique(np.random.default_rng(0).choice(graph.num_pins, 12))
    cg = computation_graph(graph, targets, model.config.schedule())
    assert cg.pin_features.shape[0] < graph.num_pins, "the batch should not be the whole graph"
    batch = embed_targets(model, cg)
    assert batch.shape == (len(targets), 8)
    assert torch.allclose(batch, whole[targets], atol=1e-6, rtol=0)


def kept_rows(adjacency: Adjacency, keep) -> Adjacency:
    """`adjacency` with only the rows for which keep(dst, src) ([rows] arrays -> [rows] bool) holds."""
    dst = np.repeat(np.arange(adjacency.num_targets), np.diff(adjacency.indptr))
    kept = keep(dst, adjacency.src)
    return Adjacency.from_rows(dst[kept], adjacency.src[kept], adjacency.weight[kept], adjacency.num_targets)


def without_memberships(graph, pins: np.ndarray, structural: int):
    """The whole graph with `pins` as pins that arrived without memberships: their own neighbor rows
    removed and their last `structural` feature columns zeroed; boards untouched."""
    stripped = kept_rows(graph.neighbors["pin"], lambda dst, _: ~np.isin(dst, pins))
    features = graph.pin_features.copy()
    features[pins, features.shape[1] - structural :] = 0.0
    return dataclasses.replace(graph, pin_features=features, neighbors={**graph.neighbors, "pin": stripped})


@pytest.mark.parametrize(("num_layers", "pooling"), [(2, "importance"), (4, "mean")])
def test_arriving_targets_are_embedded_as_pins_without_memberships(num_layers, pooling):
    graph, _ = in_memory(clustered(seed=4))
    torch.manual_seed(5)
    model = PinSage(ModelConfig(num_layers, 8, 0, 16, 8, pooling))
    targets = np.unique(np.random.default_rng(1).choice(graph.num_pins, 16))
    arriving = np.arange(len(targets)) % 3 == 0
    cg = computation_graph(graph, targets, model.config.schedule(), arriving, structural=2)
    expected = model(*without_memberships(graph, targets[arriving], 2).whole_graph())[0][targets]
    got = embed_targets(model, cg)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    # The others differ from the untouched graph's only through the boards' view of arriving pins'
    # features; the arriving ones lose their neighborhood, so they must change.
    whole = model(*graph.whole_graph())[0][targets]
    assert not torch.allclose(got[torch.from_numpy(arriving)], whole[torch.from_numpy(arriving)], atol=1e-3)
    assert graph.pin_features[targets[arriving]][:, -2:].any(), "the graph itself is left alone"


def test_arriving_targets_with_memberships_pool_the_rows_they_arrive_with():
    graph, _ = in_memory(clustered(seed=6))
    torch.manual_seed(7)
    model = PinSage(ModelConfig(2, 8, 0, 16, 8, "importance"))
    targets = np.unique(np.random.default_rng(2).choice(graph.num_pins, 16))
    arriving = np.arange(len(targets)) % 2 == 0
    # Each arriving target arrives with two boards of its own choosing (weights 0.25, 0.75); the
    # first of them arrives with none.
    shown = np.flatnonzero(arriving)[1:]
    boards = np.random.default_rng(3).choice(graph.num_boards, (len(shown), 2), replace=False)
    weights = np.tile(np.array([0.25, 0.75], np.float32), len(shown))
    rows = Adjacency.from_rows(np.repeat(shown, 2), boards.ravel(), weights, len(targets))
    cg = computation_graph(graph, targets, model.config.schedule(), arriving, structural=1, arrival_rows=rows)
    # The whole graph in which those targets' rows are exactly the ones they arrive with.
    stripped = without_memberships(graph, targets[arriving], 1)
    adjacency = stripped.neighbors["pin"]
    dst = np.r_[
        np.repeat(np.arange(adjacency.num_targets), np.diff(adjacency.indptr)), np.repeat(targets[shown], 2)
    ]
    src, weight = np.r_[adjacency.src, boards.ravel()], np.r_[adjacency.weight, weights]
    arrived = dataclasses.replace(
        stripped,
        neighbors={**stripped.neighbors, "pin": Adjacency.from_rows(dst, src, weight, adjacency.num_targets)},
    )
    expected = model(*arrived.whole_graph())[0][targets]
    assert torch.allclose(embed_targets(model, cg), expected, atol=1e-6, rtol=0)
    plain = embed_targets(model, computation_graph(graph, targets, model.config.schedule(), arriving, 1))
    assert not torch.allclose(plain[torch.from_numpy(shown)], expected[torch.from_numpy(shown)], atol=1e-3)


def without_rows(graph, pins: np.ndarray, boards: np.ndarray):
    """The whole graph with the memberships (pins[i], boards[i]) out of both neighbor tables: the
    pin's row of the board and the board's row of the pin."""
    hidden = set(zip(pins.tolist(), boards.tolist(), strict=True))

    def visible(kind: str):
        def keep(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
            pairs = zip(dst.tolist(), src.tolist(), strict=True)
            return np.array(
                [((d, s) if kind == "pin" else (s, d)) not in hidden for d, s in pairs], dtype=bool
            )

        return keep

    tables = {kind: kept_rows(adjacency, visible(kind)) for kind, adjacency in graph.neighbors.items()}
    return dataclasses.replace(graph, neighbors=tables)


@pytest.mark.parametrize(("num_layers", "pooling"), [(2, "importance"), (4, "mean")])
def test_hidden_memberships_leave_both_neighbor_tables(num_layers, pooling):
    graph, _ = in_memory(clustered(seed=8))
    torch.manual_seed(9)
    model = PinSage(ModelConfig(num_layers, 8, 0, 16, 8, pooling))
    targets = np.unique(np.random.default_rng(4).choice(graph.num_pins, 16))
    # Hide one board row of each of six targets, plus a membership no table lists.
    board_rows = graph.neighbors["pin"]
    pins = targets[:6]
    boards = board_rows.src[board_rows.indptr[pins]]
    pins, boards = np.r_[pins, targets[6]], np.r_[boards, graph.num_boards - 1]
    cg = computation_graph(graph, targets, model.config.schedule(), hidden=(pins, boards))
    expected = model(*without_rows(graph, pins, boards).whole_graph())[0][targets]
    got = embed_targets(model, cg)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    plain = embed_targets(model, computation_graph(graph, targets, model.config.schedule()))
    assert not torch.allclose(got[:6], plain[:6], atol=1e-3), "the hidden rows must matter"
