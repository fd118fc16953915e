"""Neighborhoods of pins as they arrive: a pin that keeps only some of its memberships, walked the
way jobs/lib/walks.py walks (jobs/embed_new.py gets a new pin's neighbors from that walk), in numpy.

A new pin with r memberships is embedded from the top boards of random walks that leave it through
those r boards only, and its structural features count r. To train for that input, the trainer
shows some pins of a batch with a random subset of their memberships (`arrival_neighbors`): each
such pin's neighbor rows are the top boards of walks from it over the graph in which it keeps only
that subset, drawn as jobs/lib/walks.py draws them:

- a walk of `walk_length` steps starts at the pin; at each step it returns to the pin with
  probability `restart_prob`, else moves to a neighbor of its node chosen in proportion to the
  membership weight (at the pin itself: one of its kept boards; at a board: one of the board's
  pins, the walked pin counted only where it kept that board);
- each board a walk lands on is a visit; the pin's neighbors are its `top_t` boards by visit count
  (ties to the smaller board), weighted by count / the kept boards' total count.

The random numbers are numpy's (seeded by the caller), not the Spark walk's hashes: the same
distribution of neighborhoods, not the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WalkParams:
    """jobs/lib/walks.py's WalkParams (walks per source, steps, restart, neighbors kept)."""

    walks_per_node: int = 100
    walk_length: int = 8
    restart_prob: float = 0.3
    top_t: int = 50


@dataclass(frozen=True)
class _Csr:
    """One direction of the memberships: node t's neighbors are nbr[ptr[t]:ptr[t+1]], sorted, with
    `cum` the running total of their weights over the whole array."""

    ptr: np.ndarray  # [nodes + 1] int64
    nbr: np.ndarray  # [rows] int64
    weight: np.ndarray  # [rows] float64
    cum: np.ndarray  # [rows] float64
    keys: np.ndarray  # [rows] int64, node * width + neighbor: ascending
    width: int

    @classmethod
    def of(cls, node: np.ndarray, nbr: np.ndarray, weight: np.ndarray, num_nodes: int) -> _Csr:
        order = np.lexsort((nbr, node))
        node, nbr, weight = node[order], nbr[order].astype(np.int64), weight[order].astype(np.float64)
        ptr = np.zeros(num_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(node, minlength=num_nodes), out=ptr[1:])
        width = int(nbr.max(initial=0)) + 1
        keys = np.repeat(np.arange(num_nodes, dtype=np.int64), np.diff(ptr)) * width + nbr
        return cls(ptr, nbr, weight, np.cumsum(weight), keys, width)

    def before(self, t: np.ndarray) -> np.ndarray:
        """The running total before node t's first row."""
        start = self.ptr[t]
        return np.where(start > 0, self.cum[np.maximum(start - 1, 0)], 0.0)

    def total(self, t: np.ndarray) -> np.ndarray:
        end = self.ptr[t + 1]
        return np.where(end > 0, self.cum[np.maximum(end - 1, 0)], 0.0) - self.before(t)

    def pick(self, t: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """The row of node t whose weight interval holds `offset` (in [0, total(t)))."""
        row = np.searchsorted(self.cum, self.before(t) + offset, side="right")
        return np.clip(row, self.ptr[t], self.ptr[t + 1] - 1)


def arrival_neighbors(
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    num_pins: int,
    num_boards: int,
    sources: np.ndarray,
    kept: tuple[np.ndarray, np.ndarray, np.ndarray],
    params: WalkParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbor rows of the pins `sources` ([S] distinct pin positions) when each keeps only some
    memberships, walked over the graph `edges` ((pin, board, weight) positions, deduplicated).

    kept: (source index into `sources`, board, weight), the memberships each source keeps (a
    kept membership need not be in `edges`: a new pin's are not). A source with none has no
    neighbors. Returns (source index, board, weight) rows, sorted by source then board."""
    pins = _Csr.of(edges[0], edges[1], edges[2], num_pins)
    boards = _Csr.of(edges[1], edges[0], edges[2], num_boards)
    S = len(sources)
    mine = _Csr.of(kept[0], kept[1], kept[2], S)
    sources = np.asarray(sources, dtype=np.int64)
    starts = np.flatnonzero(mine.total(np.arange(S)) > 0)
    src = np.repeat(starts, params.walks_per_node)  # walker -> source index
    pin_of = sources[src]
    at_board = np.zeros(len(src), dtype=bool)
    cur = pin_of.copy()
    visits = []
    for _ in range(params.walk_length):
        restart = rng.random(len(src)) < params.restart_prob
        u = rng.random(len(src))
        nxt = cur.copy()
        # A pin step: from the walked pin, one of its kept boards; from another pin, one of its boards.
        home = ~restart & ~at_board & (cur == pin_of)
        if home.any():
            s = src[home]
            nxt[home] = mine.nbr[mine.pick(s, u[home] * mine.total(s))]
        away = ~restart & ~at_board & (cur != pin_of)
        if away.any():
            c = cur[away]
            nxt[away] = pins.nbr[pins.pick(c, u[away] * pins.total(c))]
        # A board step: one of the board's pins, the walked pin in it only where it kept the board.
        on = ~restart & at_board
        if on.any():
            nxt[on] = _board_step(boards, mine, cur[on], src[on], pin_of[on], u[on])
        moved = ~restart
        at_board = np.where(restart, False, ~at_board)
        cur = np.where(restart, pin_of, nxt)
        landed = moved & at_board
        visits.append(src[landed] * num_boards + cur[landed])
    return _top(np.concatenate(visits) if visits else np.zeros(0, np.int64), num_boards, params.top_t)


def _board_step(
    boards: _Csr, mine: _Csr, b: np.ndarray, s: np.ndarray, pin: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """One pin of each board b, in proportion to weight, over the board's pins in the graph minus
    the walked pin `pin`, plus that pin with its kept weight where source s kept b."""
    own = _weight_of(boards, b, pin)  # the walked pin's weight in the graph's board (0 if absent)
    added = _weight_of(mine, s, b)  # its kept weight in b (0 if not kept)
    offset = u * (boards.total(b) - own[0] + added[0])
    to_self = offset < added[0]
    rest = offset - added[0]
    # Skip over the walked pin's own interval in the board's running total.
    rest = np.where(own[0] > 0, np.where(rest >= own[1], rest + own[0], rest), rest)
    picked = boards.nbr[boards.pick(b, rest)]
    return np.where(to_self, pin, picked)


def _weight_of(csr: _Csr, t: np.ndarray, nbr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight of neighbor nbr of node t, or 0; the running total before it within t's rows)."""
    if not len(csr.nbr):
        return np.zeros(len(t)), np.zeros(len(t))
    row = np.minimum(np.searchsorted(csr.keys, t * csr.width + nbr), len(csr.nbr) - 1)
    hit = (csr.keys[row] == t * csr.width + nbr) & (nbr < csr.width)
    weight = np.where(hit, csr.weight[row], 0.0)
    start = np.where(hit, csr.cum[row] - csr.weight[row] - csr.before(t), 0.0)
    return weight, start


def _top(codes: np.ndarray, num_boards: int, top_t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source, board, weight) of each source's top_t boards by visits (ties to the smaller board),
    weight = count / the kept boards' total."""
    code, count = np.unique(codes, return_counts=True)
    src, board = code // num_boards, code % num_boards
    order = np.lexsort((board, -count, src))
    src, board, count = src[order], board[order], count[order]
    first = np.r_[0, np.flatnonzero(src[1:] != src[:-1]) + 1]
    rank = np.arange(len(src)) - np.repeat(first, np.diff(np.r_[first, len(src)]))
    keep = rank < top_t
    src, board, count = src[keep], board[keep], count[keep]
    total = np.bincount(src, weights=count)
    weight = (count / total[src]).astype(np.float32)
    order = np.lexsort((board, src))
    return src[order], board[order], weight[order]
