"""A small clustered catalogue in memory for the training tests, and their shared settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinsage_model.training.graph import TrainGraph, build_graph

# Tiny model and batches: each training run takes well under a second.
QUICK = dict(hidden_dim=16, embed_dim=8, batch_size=64, negatives=40, lr=0.01, workers=0)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The batches are tiny: one thread avoids intra-op threads spinning on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clustered(
    seed: int = 0, pins: int = 90, boards: int = 18, topics: int = 6, dim: int = 8, board_dim: int = 0
) -> dict:
    """Pins in topics (features: topic centroid + noise); each board collects pins of one topic.
    Pin ids are spread out and given in shuffled order, so indexing is exercised. Returns the
    column arrays of every table and the co-membership pairs (a pin and another pin of one board)."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, topics, pins)
    features = (rng.normal(size=(topics, dim))[topic] + 0.7 * rng.normal(size=(pins, dim))).astype(np.float32)
    ids = rng.permutation(pins).astype(np.int64) * 7 + 3
    e_pin, e_board = [], []
    for b in range(boards):
        members = np.unique(rng.choice(np.flatnonzero(topic == b % topics), 6))
        e_pin += list(members)
        e_board += [b] * len(members)
    e_pin, e_board = np.array(e_pin), np.array(e_board)
    weight = rng.uniform(0.5, 2.0, len(e_pin)).astype(np.float32)
    board_ids = np.arange(boards, dtype=np.int64) + 1000
    query, pos = [], []
    for b in range(boards):
        members = e_pin[e_board == b]
        for i in members:
            for j in members:
                if i != j:
                    query.append(ids[i])
                    pos.append(ids[j])
    return {
        "pin_ids": ids,
        "features": features,
        "board_ids": board_ids,
        "board_features": rng.normal(size=(boards, board_dim)).astype(np.float32),
        "edges": (ids[e_pin], board_ids[e_board], weight),
        "board_rows": (board_ids[e_board], ids[e_pin], weight),
        "pin_rows": (ids[e_pin], board_ids[e_board], weight[::-1].copy()),
        "pairs": (np.array(query), np.array(pos)),
    }


def in_memory(data: dict) -> tuple[TrainGraph, tuple[np.ndarray, np.ndarray]]:
    """The catalogue indexed for training, and its pairs as pin positions."""
    graph, _ = build_graph(
        data["pin_ids"],
        data["features"],
        data["board_ids"],
        data["board_features"],
        data["edges"],
        data["board_rows"],
        data["pin_rows"],
    )
    return graph, (graph.pin_index(data["pairs"][0]), graph.pin_index(data["pairs"][1]))
