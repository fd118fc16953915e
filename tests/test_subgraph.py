"""Minibatch computation graphs compute, for their target pins, exactly what the whole-graph model
computes, for every layer count, pooling and with board features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinsage_model.config import ModelConfig
from pinsage_model.model import PinSage
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
