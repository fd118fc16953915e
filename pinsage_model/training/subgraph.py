"""Minibatch computation graphs: the K-hop neighborhood of a set of target pins, re-indexed.

To embed target pins T with the K layers of the layer schedule (`ModelConfig.schedule()`), layer k
needs h(k) only of the nodes whose representation some later layer reads. Going down from the top,
with N_k(S) the neighbor sources of S in the table of layer k's target type:

    need[K]   = T                                        pins
    need[j]   = need[j+2] ++ (N_{j+1}(need[j+1]) \\ need[j+2])    for j = K-1 .. 0
    need[-1]  = need[1]                                  boards (their own features at layer 1)

(need[K+1] is empty). need[j] holds pins for even j and boards for odd j. Because need[k] is a
prefix of need[k-2], the own term h_u(k-2) of layer k's targets is the first |need[k]| rows of the
level k-2 representation. Each layer runs `PinSageConv.forward` on its block: the sources are
need[k-1], the targets need[k], and the rows are the targets' complete neighbor rows, so every
needed node sees exactly the neighborhood it has in the whole graph.

Neighbor dropout (training for new pins): a target marked in `arriving` is presented as a pin that
arrives with no memberships, as jobs/embed_new.py embeds one: at every pin layer its own neighbor
rows are left out (it pools nothing, so its pooled vector is 0), and its `structural` trailing
feature columns (those computed from its memberships, such as a log degree) are 0. The boards keep
their neighborhoods, as the stored board representations that embed_new pools do.

Hidden memberships (training on co-membership pairs): a positive drawn through board b is shown
as a held-out positive is at evaluation, without its membership of b. Its own rows lose b and b's
rows lose it, at every layer, for the whole batch (a node is computed once per batch), as a
link-prediction minibatch leaves out the edges it is asked to predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pinsage_model.config import LINEAR_POOLINGS, Layer
from pinsage_model.model import PinSage
from pinsage_model.pooling import pool_projected
from pinsage_model.training.graph import Adjacency, TrainGraph


@dataclass(frozen=True)
class Block:
    """Layer k's rows, re-indexed: src into need[k-1], dst into need[k]."""

    src: torch.Tensor  # [rows] int64
    dst: torch.Tensor  # [rows] int64
    weight: torch.Tensor  # [rows] float32
    num_targets: int  # |need[k]|

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Block:
        return Block(
            self.src.to(device, non_blocking=non_blocking),
            self.dst.to(device, non_blocking=non_blocking),
            self.weight.to(device, non_blocking=non_blocking),
            self.num_targets,
        )

    def pin_memory(self) -> Block:
        return Block(self.src.pin_memory(), self.dst.pin_memory(), self.weight.pin_memory(), self.num_targets)


@dataclass(frozen=True)
class ComputationGraph:
    """What a forward pass for `targets` needs: the features of need[0] pins and need[-1] boards
    (a small feature matrix instead of the whole graph's) and one block per layer."""

    targets: np.ndarray  # [T] int64 pin positions in the whole graph; output row i is targets[i]
    pin_features: torch.Tensor  # [|need[0]|, d_in]
    board_features: torch.Tensor  # [|need[-1]|, d_b]
    blocks: tuple[Block, ...]  # blocks[k-1] is layer k

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ComputationGraph:
        return ComputationGraph(
            self.targets,
            self.pin_features.to(device, non_blocking=non_blocking),
            self.board_features.to(device, non_blocking=non_blocking),
            tuple(b.to(device, non_blocking) for b in self.blocks),
        )

    def pin_memory(self) -> ComputationGraph:
        return ComputationGraph(
            self.targets,
            self.pin_features.pin_memory(),
            self.board_features.pin_memory(),
            tuple(b.pin_memory() for b in self.blocks),
        )


def _positions(nodes: np.ndarray, size: int, values: np.ndarray) -> np.ndarray:
    """Positions in `nodes` (distinct ids below `size`) of values it holds: a look-up table over
    the node type's ids, no sort."""
    at = np.empty(size, dtype=np.int64)
    at[nodes] = np.arange(len(nodes))
    return at[values]


def _size(graph: TrainGraph, kind: str) -> int:
    return graph.num_pins if kind == "pin" else graph.num_boards


def computation_graph(
    graph: TrainGraph,
    targets: np.ndarray,
    schedule: Sequence[Layer],
    arriving: np.ndarray | None = None,
    structural: int = 0,
    arrival_rows: Adjacency | None = None,
    arrival_values: np.ndarray | None = None,
    hidden: tuple[np.ndarray, np.ndarray] | None = None,
) -> ComputationGraph:
    """The re-indexed computation graph of `targets` (distinct pin positions) for the layers of
    `schedule` (`ModelConfig.schedule()`). `arriving` ([T] bool, optional) marks the targets shown
    as arriving pins, `structural` the trailing feature columns zeroed for them (module doc).
    `arrival_rows` (an Adjacency over the T targets, optional) gives an arriving target the neighbor
    rows of the few memberships it arrives with; without it, or where it has none, it has none.
    `hidden` ((pin positions, board positions), optional) names memberships left out of every
    layer's rows: the pin's row of that board and the board's row of that pin (module doc)."""
    targets = np.asarray(targets, dtype=np.int64)
    hidden_rows = None
    if hidden is not None and len(hidden[0]):
        hidden_rows = _Hidden.of(graph, hidden)
    need: dict[int, np.ndarray] = {schedule[-1].k: targets}
    lead: dict[int, np.ndarray] = {}  # level -> the nodes that must come first in it
    src_of: dict[int, np.ndarray] = {}  # layer k -> source positions of its rows, target by target
    weight_of: dict[int, np.ndarray] = {}
    counts: dict[int, np.ndarray] = {}  # layer k -> rows per node of need[k]
    for layer in reversed(schedule):
        adjacency = graph.neighbors[layer.target]
        nodes = need[layer.k]
        counts[layer.k] = adjacency.indptr[nodes + 1] - adjacency.indptr[nodes]
        rows = adjacency.rows_of(nodes)
        src_of[layer.k], weight_of[layer.k] = adjacency.src[rows], adjacency.weight[rows]
        if hidden_rows is not None:
            src_of[layer.k], weight_of[layer.k], counts[layer.k] = _visible_rows(
                src_of[layer.k], weight_of[layer.k], counts[layer.k], nodes, layer.target, hidden_rows
            )
        if arriving is not None and layer.target == "pin":
            src_of[layer.k], weight_of[layer.k], counts[layer.k] = _arriving_rows(
                src_of[layer.k], weight_of[layer.k], counts[layer.k], arriving, arrival_rows
            )
        # Layer k's targets read their own term at level k-2 as its first rows.
        lead[layer.own] = need[layer.k]
        prefix = lead.get(layer.k - 1, np.zeros(0, dtype=np.int64))
        # The prefix, then the other sources in id order (a mask over the source type's ids).
        rest = np.zeros(_size(graph, layer.source), dtype=bool)
        rest[src_of[layer.k]] = True
        rest[prefix] = False
        need[layer.k - 1] = np.concatenate([prefix, np.flatnonzero(rest)])
    for level, nodes in lead.items():  # levels read only as own terms: the first layer's boards
        need.setdefault(level, nodes)

    blocks = []
    for layer in schedule:
        targets_k, sources = need[layer.k], need[layer.k - 1]
        dst = np.repeat(np.arange(len(targets_k)), counts[layer.k])
        src = _positions(sources, _size(graph, layer.source), src_of[layer.k])
        blocks.append(
            Block(
                src=torch.from_numpy(src),
                dst=torch.from_numpy(dst),
                weight=torch.from_numpy(weight_of[layer.k].astype(np.float32)),
                num_targets=len(targets_k),
            )
        )
    pin_features = graph.pin_features[need[0]]  # a copy: zeroing it leaves the graph alone
    if arriving is not None and structural:
        fill = 0.0 if arrival_values is None else arrival_values[arriving]
        pin_features[: len(targets)][arriving, -structural:] = fill
    return ComputationGraph(
        targets=targets,
        pin_features=torch.from_numpy(pin_features),
        board_features=torch.from_numpy(graph.board_features[need[-1]]),
        blocks=tuple(blocks),
    )


@dataclass(frozen=True)
class _Hidden:
    """Hidden memberships: their sorted keys pin * num_boards + board, and masks of the pins and
    boards that have one (only rows between two such nodes need a key look-up)."""

    keys: np.ndarray
    pins: np.ndarray  # [num_pins] bool
    boards: np.ndarray  # [num_boards] bool
    num_boards: int

    @classmethod
    def of(cls, graph: TrainGraph, hidden: tuple[np.ndarray, np.ndarray]) -> _Hidden:
        pins = np.zeros(graph.num_pins, dtype=bool)
        pins[hidden[0]] = True
        boards = np.zeros(graph.num_boards, dtype=bool)
        boards[hidden[1]] = True
        keys = np.unique(hidden[0].astype(np.int64) * graph.num_boards + hidden[1])
        return cls(keys, pins, boards, graph.num_boards)


def _visible_rows(
    src: np.ndarray,
    weight: np.ndarray,
    counts: np.ndarray,
    nodes: np.ndarray,
    target: str,
    hidden: _Hidden,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A layer's rows (node by node) without those of the hidden memberships."""
    node = np.repeat(np.arange(len(counts)), counts)
    pin, board = (nodes[node], src) if target == "pin" else (src, nodes[node])
    maybe = np.flatnonzero(hidden.pins[pin] & hidden.boards[board])
    keys = pin[maybe] * hidden.num_boards + board[maybe]
    slot = np.searchsorted(hidden.keys, keys).clip(max=len(hidden.keys) - 1)
    keep = np.ones(len(src), dtype=bool)
    keep[maybe] = hidden.keys[slot] != keys
    return src[keep], weight[keep], np.bincount(node[keep], minlength=len(counts))


def _arriving_rows(
    src: np.ndarray,
    weight: np.ndarray,
    counts: np.ndarray,
    arriving: np.ndarray,
    arrival_rows: Adjacency | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pin layer's rows (src, weight, rows per node, node by node) with the arriving targets' rows
    (the first len(arriving) nodes: need[k] is a prefix of need[k-2]) replaced by their
    `arrival_rows`, or by none."""
    T = len(arriving)
    node = np.repeat(np.arange(len(counts)), counts)
    empty = np.zeros(len(counts), dtype=bool)
    empty[:T] = arriving
    keep = ~empty[node]
    if arrival_rows is None:
        return src[keep], weight[keep], np.where(empty, 0, counts)
    shown = np.flatnonzero(arriving)
    rows = arrival_rows.rows_of(shown)
    shown_counts = arrival_rows.indptr[shown + 1] - arrival_rows.indptr[shown]
    new_counts = np.where(empty, 0, counts)
    new_counts[shown] = shown_counts
    # Node by node: each node's rows from the graph, or from arrival_rows where it arrives.
    all_node = np.r_[node[keep], np.repeat(shown, shown_counts)]
    order = np.argsort(all_node, kind="stable")
    return (
        np.r_[src[keep], arrival_rows.src[rows]][order],
        np.r_[weight[keep], arrival_rows.weight[rows]][order],
        new_counts,
    )


def embed_targets(model: PinSage, cg: ComputationGraph) -> torch.Tensor:
    """Pin embeddings z of cg.targets, [T, embed_dim], for a training step: the layers of
    `PinSage.forward` run on the computation graph's blocks instead of on every node, pooling with
    `pool_projected` (whose backward is cheap) instead of the inference path's `pool_gathered`.
    A layer with fewer sources than targets and a linear pooling (layer 1 of a batch: a few
    thousand pins feed tens of thousands of boards) pools its sources' messages through W_pool
    (`PinSageConv.message`), out_dim wide, instead of pooling hidden_dim-wide projections for
    every target and applying W_pool after: the same layer up to float rounding, as the Spark
    chain's `through_w` layers."""
    h = {0: cg.pin_features, -1: cg.board_features}
    schedule = model.config.schedule()
    for layer, block in zip(schedule, cg.blocks, strict=True):
        conv = model.conv(layer.k)
        sources = h[layer.k - 1]
        through_w = conv.pooling in LINEAR_POOLINGS and sources.shape[0] < block.num_targets
        messages = conv.message(sources, through_w)
        pooled = pool_projected(messages, block.src, block.dst, block.weight, block.num_targets, conv.pooling)
        h[layer.k] = conv.from_pooled(h[layer.own][: block.num_targets], pooled, through_w)
    return model.head(h[schedule[-1].k])
