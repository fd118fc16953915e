"""Training examples: batches point at their examples' pins, hard negatives come from the
configured personalised-PageRank window (checked against an independent numpy PageRank), the
curriculum adds them epoch by epoch, and co-membership pairs follow the weighted pin -> board -> pin
step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinsage_model.config import ModelConfig
from pinsage_model.training import sampling
from pinsage_model.training.arrival import WalkParams
from pinsage_model.training.subgraph import computation_graph
from tests.training_data import clustered, in_memory, one_torch_thread  # noqa: F401

SCHEDULE = ModelConfig(2, 8, 0, 16, 8).schedule()


def test_batch_rows_point_at_the_examples_pins():
    graph, _ = in_memory(clustered(seed=2))
    query, pos = np.array([4, 9]), np.array([9, 30])
    negatives, hard = np.array([9, 50, 61]), np.array([[71], [30]])
    batch = sampling.make_batch(graph, SCHEDULE, query, pos, negatives, hard)
    targets = batch.graph.targets
    assert targets[batch.query].tolist() == [4, 9] and targets[batch.pos].tolist() == [9, 30]
    assert targets[batch.negatives].tolist() == [9, 50, 61] and targets[batch.hard].tolist() == [[71], [30]]
    # A negative that is the query's own pin or its positive is masked out of the loss.
    assert batch.negative_mask.tolist() == [[False, True, True], [False, True, True]]
    assert batch.hard_mask.tolist() == [[True], [False]]


def exact_ppr(graph, query: int, restart: float) -> np.ndarray:
    """PageRank personalised to `query` as a linear system in float64 numpy, from the memberships:
    the pin -> board -> pin walk with restart, a pin without boards returning to the query."""
    P = np.zeros((graph.num_pins, graph.num_boards))
    for p, b, w in zip(graph.edge_pin, graph.edge_board, graph.edge_weight, strict=True):
        P[p, b] = w
    pin_to_board = P / np.maximum(P.sum(1, keepdims=True), 1e-300)
    board_to_pin = P.T / P.T.sum(1, keepdims=True)
    M = pin_to_board @ board_to_pin
    M[P.sum(1) == 0, query] = 1.0
    e = np.zeros(graph.num_pins)
    e[query] = 1.0
    # pi = restart e + (1 - restart) pi M
    return np.linalg.solve((np.eye(graph.num_pins) - (1 - restart) * M).T, restart * e)


def test_pagerank_matches_the_linear_system():
    graph, _ = in_memory(clustered(seed=4))
    queries = np.array([0, 17, 55])
    got = sampling.personalised_pagerank(
        sampling.transition_matrices(graph), torch.from_numpy(queries), 0.2
    ).numpy()
    for col, q in enumerate(queries):
        assert np.abs(got[:, col] - exact_ppr(graph, q, 0.2)).max() < 1e-6


@pytest.mark.parametrize("window", ["5:12", "0.1:0.2"])
def test_hard_negatives_come_from_the_configured_rank_window(window):
    data = clustered(seed=5, pins=120, boards=30)
    graph, pairs = in_memory(data)
    ranks = sampling.parse_window(window, graph.num_pins)
    assert (ranks.lo, ranks.hi) == ((5, 12) if window == "5:12" else (12, 24))
    pools = sampling.hard_negative_pools(graph, pairs[0], ranks, restart=0.15)
    assert pools.pool.shape == (len(np.unique(pairs[0])), ranks.width)
    for q, window_pins in zip(pools.queries[:25], pools.pool[:25], strict=True):
        score = exact_ppr(graph, q, 0.15)
        others = np.delete(score, q)
        tol = 1e-6  # float32 iterates
        assert len(set(window_pins.tolist())) == ranks.width and q not in window_pins
        for v in window_pins:
            # v's possible 1-based ranks among the other pins, whichever way ties are broken
            best = 1 + int((others > score[v] + tol).sum())
            worst = int((others >= score[v] - tol).sum())
            assert best <= ranks.hi and worst >= ranks.lo, (q, v, best, worst, ranks)

    # A batch's hard negatives are drawn from its own queries' windows.
    batches = sampling.EpochBatches(graph, SCHEDULE, pairs, 32, 10, hard=3, hard_pools=pools, seed=0, epoch=4)
    batch = batches[1]
    targets = batch.graph.targets
    query_pins, hard_pins = targets[batch.query], targets[batch.hard]
    assert hard_pins.shape == (32, 3)
    for q, drawn in zip(query_pins, hard_pins, strict=True):
        row = pools.pool[np.searchsorted(pools.queries, q)]
        assert set(drawn.tolist()) <= set(row.tolist())


def test_window_defaults_scale_the_papers_ranks_to_the_catalogue():
    assert sampling.default_window(2_000_000_000) == sampling.RankWindow(2000, 5000)
    assert sampling.default_window(100_001) == sampling.RankWindow(2000, 5000)
    assert sampling.default_window(10_001) == sampling.RankWindow(200, 500)
    assert sampling.default_window(30) == sampling.RankWindow(1, 1)
    with pytest.raises(ValueError, match="outside 1..29"):
        sampling.parse_window("10:40", 30)
    with pytest.raises(ValueError, match="LO:HI"):
        sampling.parse_window("10", 30)


def test_curriculum_adds_one_hard_negative_per_epoch_up_to_the_cap_to_each_batch():
    assert [sampling.hard_negative_count(e, 3) for e in range(1, 7)] == [0, 1, 2, 3, 3, 3]
    assert [sampling.hard_negative_count(e, 0) for e in range(1, 4)] == [0, 0, 0]
    graph, pairs = in_memory(clustered(seed=6))
    pools = sampling.HardNegatives(
        np.unique(pairs[0]), np.zeros((len(np.unique(pairs[0])), 4), dtype=np.int64)
    )
    for epoch in range(1, 6):
        count = sampling.hard_negative_count(epoch, 3)
        batches = sampling.EpochBatches(graph, SCHEDULE, pairs, 16, 8, count, pools, seed=0, epoch=epoch)
        assert batches[0].hard.shape == (16, count)


def co_membership_distribution(edges, board_power: float = 1.0) -> dict[tuple[int, int], float]:
    """P(query, pos) of a board drawn by (its total weight) ** board_power, then two of its pins by
    weight (for board_power 1, one pin -> board -> pin step), self-pairs removed and the rest
    renormalised, summed in plain Python over (pin, board, weight) rows."""
    board_total: dict[int, float] = {}
    for _, b, w in edges:
        board_total[b] = board_total.get(b, 0.0) + w
    board_mass = {b: t**board_power for b, t in board_total.items()}
    mass = sum(board_mass.values())
    prob: dict[tuple[int, int], float] = {}
    for q, b, wq in edges:
        for p, b2, wp in edges:
            if b2 == b and p != q:
                step = (board_mass[b] / mass) * (wq / board_total[b]) * (wp / board_total[b])
                prob[(q, p)] = prob.get((q, p), 0.0) + step
    kept = sum(prob.values())
    return {k: v / kept for k, v in prob.items()}


@pytest.mark.parametrize("board_power", [1.0, 0.0])
def test_co_membership_pairs_follow_the_weighted_pin_board_pin_step(board_power):
    data = clustered(seed=11)
    graph, _ = in_memory(data)
    # Boards of very different weights, so that the board power matters.
    graph.edge_weight[graph.edge_board < 3] *= 8
    edges = list(
        zip(graph.edge_pin.tolist(), graph.edge_board.tolist(), graph.edge_weight.tolist(), strict=True)
    )
    expected = co_membership_distribution(edges, board_power)
    other = co_membership_distribution(edges, 1.0 - board_power)
    assert 0.5 * sum(abs(other.get(k, 0) - v) for k, v in expected.items()) > 0.1
    sampler = sampling.CoMembership.of(graph, board_power)
    query, pos = sampler.draw(200_000, np.random.default_rng(3))
    assert 0.7 * 200_000 < len(query) < 200_000, "only self-pairs are dropped"
    assert np.all(query != pos)
    counts: dict[tuple[int, int], int] = {}
    for pair in zip(query.tolist(), pos.tolist(), strict=True):
        counts[pair] = counts.get(pair, 0) + 1
    assert set(counts) <= set(expected), "every pair shares a board"
    total_variation = 0.5 * sum(abs(counts.get(k, 0) / len(query) - v) for k, v in expected.items())
    assert total_variation < 0.02, total_variation
    again = sampler.draw(200_000, np.random.default_rng(3))
    assert np.array_equal(again[0], query) and np.array_equal(again[1], pos)
    assert set(sampler.queries.tolist()) == set(graph.edge_pin.tolist())


def test_neighbor_dropout_is_seeded_and_shows_about_that_share_of_pins_without_neighbors():
    graph, pairs = in_memory(clustered(seed=2))

    def batch(dropout: float, seed: int = 0):
        batches = sampling.EpochBatches(graph, SCHEDULE, pairs, 64, 40, 0, None, seed, 1, dropout, 1)
        return batches[0]

    plain, again = batch(0.5), batch(0.5)
    top = plain.graph.blocks[-1]
    assert torch.equal(top.dst, again.graph.blocks[-1].dst) and torch.equal(
        top.src, again.graph.blocks[-1].src
    )
    targets = plain.graph.targets
    with_rows = np.zeros(len(targets), dtype=bool)
    with_rows[np.unique(top.dst.numpy())] = True
    has_neighbors = np.diff(graph.neighbors["pin"].indptr)[targets] > 0
    empty = has_neighbors & ~with_rows
    assert 0.3 < empty.sum() / has_neighbors.sum() < 0.7
    # Exactly the pins without neighbor rows have their last (structural) feature zeroed.
    features = plain.graph.pin_features[: len(targets), -1].numpy()
    np.testing.assert_array_equal(features[empty], 0.0)
    assert (features[with_rows] == graph.pin_features[targets[with_rows], -1]).all()
    assert not torch.equal(top.dst, batch(0.5, seed=1).graph.blocks[-1].dst)
    # Without dropout the batch is the plain computation graph of the same draws.
    chosen = np.random.default_rng([0, 1]).permutation(len(pairs[0]))[:64]
    negatives = np.random.default_rng([0, 1, 0]).integers(0, graph.num_pins, size=40)
    hard = np.zeros((64, 0), dtype=np.int64)
    built = sampling.make_batch(graph, SCHEDULE, pairs[0][chosen], pairs[1][chosen], negatives, hard).graph
    none = batch(0.0).graph
    assert all(
        torch.equal(a.dst, b.dst) and torch.equal(a.src, b.src)
        for a, b in zip(none.blocks, built.blocks, strict=True)
    )
    assert torch.equal(none.pin_features, built.pin_features)


def test_pins_shown_arriving_with_memberships_pool_walks_from_a_few_of_their_own_boards():
    graph, pairs = in_memory(clustered(seed=2))
    walk = WalkParams(walks_per_node=50, walk_length=4, top_t=10)
    arrival = sampling.ArrivalTables.draw(graph, (0, 1), walk, np.random.default_rng(0))
    one = arrival.tables[1]
    own = {(int(p), int(b)) for p, b in zip(graph.edge_pin, graph.edge_board, strict=True)}
    for pin in np.unique(graph.edge_pin):
        rows = slice(one.indptr[pin], one.indptr[pin + 1])
        # Every walk leaves through the one board kept, so it is the most visited, and it is the pin's.
        top = one.src[rows][np.argmax(one.weight[rows])]
        assert (int(pin), int(top)) in own
    again = sampling.ArrivalTables.draw(graph, (0, 1), walk, np.random.default_rng(0))
    assert np.array_equal(again.tables[1].src, one.src) and np.array_equal(again.tables[1].weight, one.weight)
    batches = sampling.EpochBatches(graph, SCHEDULE, pairs, 64, 40, 0, None, 0, 1, 0.5, 1, arrival)
    top_block = batches[0].graph.blocks[-1]
    targets = batches[0].graph.targets
    # The targets are the first rows of the top block: each has its full rows, none, or the walk's.
    counts = np.bincount(top_block.dst.numpy(), minlength=len(targets))[: len(targets)]
    full = np.diff(graph.neighbors["pin"].indptr)[targets]
    walked = np.diff(one.indptr)[targets]
    arriving_empty = (counts == 0) & (full > 0)
    arriving_one = (counts == walked) & (counts != full)
    assert arriving_empty.sum() > 3 and arriving_one.sum() > 3, "both counts are drawn"
    assert np.all((counts == full) | arriving_empty | (counts == walked))


def test_pins_arriving_with_r_memberships_carry_the_structural_values_of_pins_with_r():
    graph, pairs = in_memory(clustered(seed=3))
    degree = {}
    for pin in graph.edge_pin.tolist():
        degree[pin] = degree.get(pin, 0) + 1
    counts = sorted(set(degree.values()))[:2]
    walk = WalkParams(walks_per_node=5, walk_length=2, top_t=5)
    arrival = sampling.ArrivalTables.draw(graph, (0, *counts), walk, np.random.default_rng(0), structural=1)
    for r in counts:
        with_r = [graph.pin_features[p, -1] for p, d in degree.items() if d == r]
        assert arrival.values[r][0] == pytest.approx(float(np.median(with_r)))
    assert arrival.values[0][0] == 0.0 or not any(d == 0 for d in degree.values())
    batch = sampling.EpochBatches(graph, SCHEDULE, pairs, 64, 40, 0, None, 0, 1, 0.9, 1, arrival)[0]
    last = batch.graph.pin_features[: len(batch.graph.targets), -1].numpy()
    allowed = {float(v[0]) for v in arrival.values.values()}
    changed = last != graph.pin_features[batch.graph.targets, -1]
    assert changed.sum() > 3 and set(last[changed].tolist()) <= allowed


def test_co_membership_boards_are_the_boards_the_pairs_were_drawn_from():
    graph, _ = in_memory(clustered(seed=12))
    sampler = sampling.CoMembership.of(graph)
    query, pos, board = sampler.draw_with_boards(5_000, np.random.default_rng(5))
    plain = sampler.draw(5_000, np.random.default_rng(5))
    assert np.array_equal(plain[0], query) and np.array_equal(plain[1], pos)
    memberships = set(zip(graph.edge_pin.tolist(), graph.edge_board.tolist(), strict=True))
    assert all(
        (q, b) in memberships and (p, b) in memberships for q, p, b in zip(query, pos, board, strict=True)
    )


def test_a_hidden_pair_board_leaves_the_batch_only_for_that_positive():
    graph, pairs = in_memory(clustered(seed=13))
    sampler = sampling.CoMembership.of(graph)
    query, pos, board = sampler.draw_with_boards(64, np.random.default_rng(6))
    negatives = np.arange(10)
    hard = np.zeros((len(query), 0), dtype=np.int64)
    pos_board = np.where(np.arange(len(query)) % 2 == 0, board, -1)
    built = sampling.make_batch(graph, SCHEDULE, query, pos, negatives, hard, pos_board=pos_board).graph
    plain = sampling.make_batch(graph, SCHEDULE, query, pos, negatives, hard).graph
    expected = computation_graph(
        graph, plain.targets, SCHEDULE, hidden=(pos[pos_board >= 0], board[pos_board >= 0])
    )
    for got, want in zip(built.blocks, expected.blocks, strict=True):
        assert torch.equal(got.src, want.src) and torch.equal(got.dst, want.dst)
    assert sum(len(b.src) for b in built.blocks) < sum(len(b.src) for b in plain.blocks)


def test_ppr_windows_do_not_depend_on_the_query_chunk(monkeypatch):
    graph, pairs = in_memory(clustered(seed=6, pins=150, boards=40))
    queries = np.unique(pairs[0])
    window = sampling.RankWindow(4, 20)
    monkeypatch.setattr(sampling, "PPR_CPU_CHUNK", 7)  # several chunks, the last one short
    chunked = sampling.rank_window_pins(graph, queries, window)
    monkeypatch.setattr(sampling, "PPR_CPU_CHUNK", 10**6)  # one chunk
    whole = sampling.rank_window_pins(graph, queries, window)
    assert len(queries) > 7 * 3
    np.testing.assert_array_equal(chunked, whole)
