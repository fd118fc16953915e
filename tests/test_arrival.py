"""Walks from pins that keep only some memberships: the visit shares match the exact Markov chain
of jobs/lib/walks.py's walk on the reduced graph, computed here by dynamic programming."""

from __future__ import annotations

import numpy as np

from pinsage_model.training.arrival import WalkParams, arrival_neighbors

# (pin, board, weight): pin 0 is in boards 0, 1 and 2; pin 3 is a new pin with no membership in it.
EDGES = np.array(
    [(0, 0, 1.0), (0, 1, 2.0), (0, 2, 1.0), (1, 0, 1.0), (1, 1, 1.0), (2, 1, 3.0), (2, 2, 1.0), (1, 3, 1.0)]
)
PINS, BOARDS = 4, 4


def exact_shares(source: int, kept: dict[int, float], params: WalkParams) -> np.ndarray:
    """Expected board visits per walk, divided by their sum, on the graph where `source` keeps only
    the boards of `kept` (board -> weight): a dense transition matrix over pins then boards."""
    weights = np.zeros((PINS, BOARDS))
    for p, b, w in EDGES:
        weights[int(p), int(b)] = w
    weights[source] = 0.0
    for b, w in kept.items():
        weights[source, b] = w
    n = PINS + BOARDS
    move = np.zeros((n, n))
    for p in range(PINS):
        if weights[p].sum():
            move[p, PINS:] = weights[p] / weights[p].sum()
    for b in range(BOARDS):
        if weights[:, b].sum():
            move[PINS + b, :PINS] = weights[:, b] / weights[:, b].sum()
    at = np.zeros(n)
    at[source] = 1.0
    visits = np.zeros(BOARDS)
    for _ in range(params.walk_length):
        moved = (1 - params.restart_prob) * at @ move
        visits += moved[PINS:]  # a move that lands on a board is a visit
        at = moved
        at[source] += params.restart_prob
    return visits / visits.sum()


def test_arrival_walk_visits_match_the_exact_chain_of_the_reduced_graph():
    params = WalkParams(walks_per_node=40_000, walk_length=5, restart_prob=0.3, top_t=10)
    edges = (EDGES[:, 0].astype(np.int64), EDGES[:, 1].astype(np.int64), EDGES[:, 2])
    # Pin 0 keeps board 1 only (a warm pin shown with one membership); pin 3 arrives in boards 2, 3.
    kept = (np.array([0, 1, 1]), np.array([1, 2, 3]), np.array([2.0, 1.0, 1.0]))
    src, board, weight = arrival_neighbors(
        edges, PINS, BOARDS, np.array([0, 3]), kept, params, np.random.default_rng(0)
    )
    for index, source, mine in ((0, 0, {1: 2.0}), (1, 3, {2: 1.0, 3: 1.0})):
        got = np.zeros(BOARDS)
        got[board[src == index]] = weight[src == index]
        np.testing.assert_allclose(got, exact_shares(source, mine, params), atol=0.01)
    # Board 0 is reachable from pin 0's kept board 1 (through pin 1), never by stepping from pin 0.
    assert 0 < weight[(src == 0) & (board == 0)][0] < 0.2


def test_arrival_walk_keeps_the_top_boards_and_skips_pins_without_memberships():
    params = WalkParams(walks_per_node=200, walk_length=6, top_t=2)
    edges = (EDGES[:, 0].astype(np.int64), EDGES[:, 1].astype(np.int64), EDGES[:, 2])
    kept = (np.array([0, 0, 0]), np.array([0, 1, 2]), np.array([1.0, 2.0, 1.0]))
    src, board, weight = arrival_neighbors(
        edges, PINS, BOARDS, np.array([0, 1]), kept, params, np.random.default_rng(1)
    )
    assert set(src.tolist()) == {0}, "source 1 keeps nothing: no walk, no neighbors"
    assert len(board) == 2 and abs(weight.sum() - 1) < 1e-6
