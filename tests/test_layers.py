"""PinSageConv pools with the implementation its caller names, whatever autograd's state, and the
whole-graph model pools with the inference implementation in training mode too; max pooling
refuses messages through W_pool."""

from __future__ import annotations

import pytest
import torch

from pinsage_model.config import LayerDims, ModelConfig
from pinsage_model.layers import PinSageConv
from pinsage_model.model import Neighborhood, random_model
from pinsage_model.pooling import pool_gathered, pool_projected


def conv_inputs():
    gen = torch.Generator().manual_seed(0)
    h_src, h_self = torch.rand((5, 3), generator=gen), torch.rand((4, 2), generator=gen)
    src, dst = torch.tensor([0, 1, 1, 4, 2]), torch.tensor([0, 0, 1, 1, 2])
    return h_src, h_self, src, dst, torch.rand(5, generator=gen) + 0.1


def spy(pool, calls: list):
    def recording(*args):
        calls.append(pool.__name__)
        return pool(*args)

    return recording


def test_conv_pools_with_the_callers_implementation_whatever_the_autograd_state():
    torch.manual_seed(1)
    conv = PinSageConv(LayerDims(3, 2, 6, 4), "importance")
    for grad_enabled in (True, False):
        for pool in (pool_gathered, pool_projected):
            calls: list[str] = []
            with torch.set_grad_enabled(grad_enabled):
                out = conv(*conv_inputs(), pool=spy(pool, calls))
            assert calls == [pool.__name__], (grad_enabled, calls)
            assert out.shape == (4, 4)


def test_whole_graph_model_gives_the_same_bits_with_and_without_autograd():
    model = random_model(ModelConfig(2, 3, 0, 6, 4, "mean"), seed=2)
    gen = torch.Generator().manual_seed(3)
    pins, boards = torch.rand((6, 3), generator=gen), torch.zeros((3, 0))
    board_nbrs = Neighborhood(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 5, 3, 3]), torch.ones(4))
    pin_nbrs = Neighborhood(torch.tensor([0, 1, 1, 4]), torch.tensor([0, 1, 2, 2]), torch.ones(4))
    with torch.no_grad():
        inference = model(pins, boards, board_nbrs, pin_nbrs)[0]
    model.train()
    with_grad = model(pins, boards, board_nbrs, pin_nbrs)[0]
    assert torch.equal(inference, with_grad.detach())


def test_max_pooling_refuses_messages_through_w_pool():
    conv = PinSageConv(LayerDims(3, 2, 6, 4), "max")
    h_src = conv_inputs()[0]
    assert conv.message(h_src, through_w=False).shape == (5, 6)
    with pytest.raises(ValueError, match="max pooling does not commute"):
        conv.message(h_src, through_w=True)
