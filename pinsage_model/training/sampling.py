"""Training examples as in the paper's section 3.3: shared uniform negatives, hard negatives from a
window of personalised-PageRank ranks, the curriculum that adds them, and minibatches built as
re-indexed computation graphs by DataLoader workers.

Every random draw of batch i of epoch e comes from a generator seeded with (seed, e, i), so a batch
is the same whichever worker builds it and however many workers there are.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from pinsage_model.config import Layer
from pinsage_model.training.arrival import WalkParams, arrival_neighbors
from pinsage_model.training.graph import Adjacency, TrainGraph
from pinsage_model.training.progress import Progress
from pinsage_model.training.subgraph import ComputationGraph, computation_graph

log = logging.getLogger("pinsage.train")

# Restart per pin -> board -> pin step (about 0.16 per hop, the classic 0.15 damping).
PPR_RESTART = 0.3
PPR_TOLERANCE = 1e-6
# float32 iterates: the power iteration is memory-bound, and scores that differ by float32 rounding
# are ties for ranking purposes.
PPR_DTYPE = torch.float32
# The paper's window, ranks 2000-5000 of 2 billion pins, is kept for catalogues of 100,000 pins and
# more; smaller catalogues use the same fractions of 100,000 (2% to 5% of the other pins).
PAPER_WINDOW = (2000, 5000)
PAPER_WINDOW_CATALOGUE = 100_000
# Dense PPR iterates are [pins, queries]; bound one chunk's memory.
PPR_CHUNK_BYTES = 256 * 2**20
# On the CPU the sparse products read a row of the dense iterate per membership: with 32 queries a
# chunk, those rows stay in cache (goodbooks-10k's 8,980 queries: 65 s against 215 s with the memory
# bound's 2,485 a chunk; the columns, and so the windows, are the same bit for bit whatever the chunk).
PPR_CPU_CHUNK = 32


# ---- personalised PageRank ---------------------------------------------------------------------


def transition_matrices(graph: TrainGraph, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """Sparse (P2B^T [boards, pins], B2P^T [pins, boards]) and the positions of dangling pins
    (pins without memberships).

    P2B[p, b] = w_pb / sum_b' w_pb' moves a walker from a pin to one of its boards; B2P[b, p] =
    w_pb / sum_p' w_p'b back to a pin. The transposes act on column-stacked distributions."""
    pins, boards = graph.num_pins, graph.num_boards
    w = torch.from_numpy(graph.edge_weight).to(torch.float64)
    p = torch.from_numpy(graph.edge_pin)
    b = torch.from_numpy(graph.edge_board)
    pin_total = torch.zeros(pins, dtype=torch.float64).index_add_(0, p, w)
    board_total = torch.zeros(boards, dtype=torch.float64).index_add_(0, b, w)
    p2b_t = torch.sparse_coo_tensor(
        torch.stack([b, p]), w / pin_total[p], (boards, pins), check_invariants=True
    )
    b2p_t = torch.sparse_coo_tensor(
        torch.stack([p, b]), w / board_total[b], (pins, boards), check_invariants=True
    )
    dangling = torch.nonzero(pin_total == 0).squeeze(1)
    # CSR: the power iteration's sparse x dense products run about a fifth faster than on COO.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        p2b_csr = p2b_t.coalesce().to(PPR_DTYPE).to_sparse_csr().to(device)
        b2p_csr = b2p_t.coalesce().to(PPR_DTYPE).to_sparse_csr().to(device)
    return p2b_csr, b2p_csr, dangling.to(device)


def ppr_iterations(restart: float, tolerance: float = PPR_TOLERANCE) -> int:
    """Power iterations after which the L1 error is below `tolerance` (it shrinks by 1-restart)."""
    return max(1, math.ceil(math.log(tolerance / 2) / math.log(1 - restart)))


def personalised_pagerank(
    matrices: tuple[torch.Tensor, ...], queries: torch.Tensor, restart: float = PPR_RESTART
) -> torch.Tensor:
    """PPR of every pin for each query pin, [pins, queries] float32 columns summing to 1.

    A walker at a pin returns to its query with probability `restart`, else steps pin -> board ->
    pin with probabilities proportional to membership weights; a pin without memberships sends
    its walker back to the query. Power iteration from the query's indicator e_q:

        x <- restart e_q + (1 - restart) (B2P^T P2B^T x + e_q (dangling . x))
    """
    p2b_t, b2p_t, dangling = matrices
    pins = b2p_t.shape[0]
    cols = torch.arange(len(queries), device=queries.device)
    x = torch.zeros((pins, len(queries)), dtype=PPR_DTYPE, device=queries.device)
    x[queries, cols] = 1.0
    # The iterate is the only dense [pins, queries] array: e_q's terms are added at (q, column).
    for _ in range(ppr_iterations(restart)):
        stuck = x[dangling].sum(0)
        x = b2p_t @ (p2b_t @ x)
        x.mul_(1 - restart)
        x[queries, cols] += restart + (1 - restart) * stuck
    return x


@dataclass(frozen=True)
class RankWindow:
    """Ranks lo..hi (1-based, inclusive) among the other pins, by PPR with respect to the query."""

    lo: int
    hi: int

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1


def default_window(num_pins: int) -> RankWindow:
    """The paper's ranks 2000-5000, scaled down for catalogues below 100,000 pins."""
    if num_pins < 2:
        raise ValueError("hard negatives need at least 2 pins")
    others = num_pins - 1
    scale = min(1.0, others / PAPER_WINDOW_CATALOGUE)
    lo = min(others, max(1, round(PAPER_WINDOW[0] * scale)))
    return RankWindow(lo, min(others, max(lo, round(PAPER_WINDOW[1] * scale))))


def parse_window(text: str, num_pins: int) -> RankWindow:
    """`LO:HI` as 1-based ranks (integers) or as fractions of the other pins (numbers in (0, 1])."""
    others = num_pins - 1
    if others < 1:
        raise ValueError("hard negatives need at least 2 pins")
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"--hard-window must be LO:HI, got {text!r}")
    bounds = []
    for part in parts:
        try:
            value = int(part) if part.strip().lstrip("+").isdigit() else float(part)
        except ValueError:
            raise ValueError(f"--hard-window bound {part!r} is neither a rank nor a fraction") from None
        if isinstance(value, float):
            if not 0 < value <= 1:
                raise ValueError(f"--hard-window fraction {part} must be in (0, 1]")
            value = max(1, math.ceil(value * others))
        bounds.append(value)
    lo, hi = bounds
    if not 1 <= lo <= hi <= others:
        raise ValueError(
            f"--hard-window {text} gives ranks {lo}..{hi}, outside 1..{others} (the other pins) or reversed"
        )
    return RankWindow(lo, hi)


def rank_window_pins(
    graph: TrainGraph,
    queries: np.ndarray,
    window: RankWindow,
    restart: float = PPR_RESTART,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """For each query pin, the pins ranked window.lo..window.hi by PPR, [queries, width] int64.

    Pins are ordered by descending PPR, ties by the smaller pin id; the query itself is not ranked.
    Queries are processed in chunks so the dense iterates stay within PPR_CHUNK_BYTES, and on the
    CPU within PPR_CPU_CHUNK queries."""
    matrices = transition_matrices(graph, device)
    chunk = max(1, PPR_CHUNK_BYTES // (graph.num_pins * 4 * 3))
    if torch.device(device).type == "cpu":
        chunk = min(chunk, PPR_CPU_CHUNK)
    out = np.empty((len(queries), window.width), dtype=np.int64)
    progress = Progress("hard negatives: PPR windows of queries", len(queries), log)
    for start in range(0, len(queries), chunk):
        q = torch.from_numpy(queries[start : start + chunk]).to(device)
        scores = personalised_pagerank(matrices, q, restart).T  # [chunk, pins]
        scores[torch.arange(len(q), device=device), q] = math.inf  # the query is rank 0
        # A stable sort keeps equal scores in index order, which is pin id order.
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        out[start : start + len(q)] = order[:, window.lo : window.hi + 1].cpu().numpy()
        progress.update(start + len(q))
    return out


# ---- negatives and curriculum ------------------------------------------------------------------


def hard_negative_count(epoch: int, cap: int) -> int:
    """Curriculum: epoch n (1-based) adds n-1 hard negatives per query, at most `cap`."""
    return max(0, min(epoch - 1, cap))


@dataclass(frozen=True)
class HardNegatives:
    """Each distinct query's window of PPR-ranked pins, to draw hard negatives from."""

    queries: np.ndarray  # [distinct queries] int64 pin positions, sorted
    pool: np.ndarray  # [distinct queries, window width] int32 pin positions (half the memory of int64)

    def sample(self, queries: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` pins per query drawn uniformly (with replacement) from its window, [b, count]."""
        slots = np.searchsorted(self.queries, queries)
        picks = rng.integers(0, self.pool.shape[1], size=(len(queries), count))
        return self.pool[slots[:, None], picks].astype(np.int64)


def hard_negative_pools(
    graph: TrainGraph,
    queries: np.ndarray,
    window: RankWindow,
    restart: float = PPR_RESTART,
    device: torch.device | str = "cpu",
) -> HardNegatives:
    """The windows of every distinct query, computed once before training: their memory is
    distinct queries x window width x 4 bytes."""
    distinct = np.unique(queries)
    pools = rank_window_pins(graph, distinct, window, restart, device).astype(np.int32)
    return HardNegatives(distinct, pools)


# ---- co-membership pairs -------------------------------------------------------------------------


@dataclass(frozen=True)
class CoMembership:
    """Positive pairs drawn from the memberships themselves, by one pin -> board -> pin step.

    A draw picks a membership (q, b) with probability proportional to its weight, then a membership
    (p, b) of the same board the same way; draws with p = q are dropped. So a pair is two pins saved
    to one board, and two pins that share many boards are drawn often, as in a random walk's first
    return to the pins. These are the pairs the graph itself vouches for: on a catalogue whose
    engagement pairs are few, they are most of what the loss learns from."""

    pins: np.ndarray  # [memberships] int64 pin positions, grouped by board
    boards: np.ndarray  # [memberships] int64 board positions, in the same order
    cumulative: np.ndarray  # [memberships] float64 running sum of the weights in that order
    board_end: np.ndarray  # [boards] float64 running sum at each board's last membership
    # Boards are drawn with probability proportional to (their total weight) ** board_power; 1 is
    # the plain pin -> board -> pin step, 0 draws every board with memberships equally often.
    board_power: float = 1.0
    board_cumulative: np.ndarray | None = None  # [boards] running sum of total ** board_power

    @classmethod
    def of(cls, graph: TrainGraph, board_power: float = 1.0) -> CoMembership:
        order = np.argsort(graph.edge_board, kind="stable")
        boards = graph.edge_board[order]
        cumulative = np.cumsum(graph.edge_weight[order].astype(np.float64))
        totals = np.bincount(boards, weights=graph.edge_weight[order], minlength=graph.num_boards)
        powered = np.power(totals, board_power, out=np.zeros_like(totals), where=totals > 0)
        return cls(
            graph.edge_pin[order],
            boards,
            cumulative,
            np.cumsum(totals.astype(np.float64)),
            board_power,
            None if board_power == 1.0 else np.cumsum(powered),
        )

    @property
    def queries(self) -> np.ndarray:
        """Every pin that can be drawn as a query, sorted."""
        return np.unique(self.pins)

    def draw(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`count` draws as (query, pos) pin positions, self-pairs removed (so at most `count`)."""
        query, pos, _ = self.draw_with_boards(count, rng)
        return query, pos

    def draw_with_boards(
        self, count: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`draw`'s pairs and the board position each was drawn from (the same draws as `draw`)."""
        if not len(self.pins) or count <= 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        last = len(self.pins) - 1
        if self.board_cumulative is None:
            first = np.searchsorted(self.cumulative, rng.random(count) * self.cumulative[-1], side="right")
            first = first.clip(max=last)
            board = self.boards[first]
        else:
            u = rng.random(count) * self.board_cumulative[-1]
            board = np.searchsorted(self.board_cumulative, u, side="right").clip(max=len(self.board_end) - 1)
            first = self._member(board, rng)
        second = self._member(board, rng)
        query, pos = self.pins[first], self.pins[second]
        keep = query != pos
        return query[keep], pos[keep], self.boards[second][keep]

    def _member(self, board: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One membership of each given board, drawn in proportion to its weight."""
        start = np.where(board > 0, self.board_end[board - 1], 0.0)
        u = start + rng.random(len(board)) * (self.board_end[board] - start)
        picked = np.searchsorted(self.cumulative, u, side="right").clip(max=len(self.pins) - 1)
        # Float rounding at a board's upper edge can step past it: stay on the board.
        while np.any(over := self.boards[picked] != board):
            picked[over] -= 1
        return picked


# ---- pins shown as arriving with a few memberships ----------------------------------------------


@dataclass(frozen=True)
class ArrivalTables:
    """For each membership count r > 0 a pin may arrive with, every pin's neighbor rows when it
    keeps r of its memberships (drawn at random; a pin with r or fewer keeps all): the top boards
    of walks over the graph in which it keeps only those (`arrival.arrival_neighbors`). With
    `structural` columns, `values[r]` is what those columns hold for a pin arriving with r
    memberships: the median over the graph's pins with exactly r memberships (the columns are
    computed from memberships, so pins with the same count carry the same values), 0 where no pin
    has r."""

    counts: tuple[int, ...]  # the r a shown pin draws from (0: no memberships)
    tables: dict[int, Adjacency]  # r > 0 -> Adjacency over all pins
    values: dict[int, np.ndarray] | None = None  # r -> [structural] float32

    @classmethod
    def draw(
        cls,
        graph: TrainGraph,
        counts: Sequence[int],
        walk: WalkParams,
        rng: np.random.Generator,
        structural: int = 0,
    ) -> ArrivalTables:
        tables = {}
        edges = (graph.edge_pin, graph.edge_board, graph.edge_weight)
        for r in sorted({c for c in counts if c > 0}):
            # r memberships of each pin: those with the r smallest random keys.
            order = np.lexsort((rng.random(len(graph.edge_pin)), graph.edge_pin))
            pin = graph.edge_pin[order]
            first = np.r_[0, np.flatnonzero(pin[1:] != pin[:-1]) + 1] if len(pin) else np.zeros(0, np.int64)
            rank = np.arange(len(pin)) - np.repeat(first, np.diff(np.r_[first, len(pin)]))
            kept = order[rank < r]
            sources = np.arange(graph.num_pins)
            src, board, weight = arrival_neighbors(
                edges,
                graph.num_pins,
                graph.num_boards,
                sources,
                (graph.edge_pin[kept], graph.edge_board[kept], graph.edge_weight[kept]),
                walk,
                rng,
            )
            tables[r] = Adjacency.from_rows(src, board, weight, graph.num_pins)
        values = None
        if structural:
            degree = np.bincount(graph.edge_pin, minlength=graph.num_pins)
            columns = graph.pin_features[:, graph.pin_features.shape[1] - structural :]
            values = {
                r: np.median(columns[degree == r], axis=0).astype(np.float32)
                if (degree == r).any()
                else np.zeros(structural, np.float32)
                for r in counts
            }
        return cls(tuple(counts), tables, values)

    def rows(
        self, targets: np.ndarray, shown: np.ndarray, rng: np.random.Generator
    ) -> tuple[Adjacency, np.ndarray | None]:
        """The neighbor rows of `targets` (an Adjacency over them): for each one `shown`, those of a
        count drawn uniformly from `counts`; none for the others. With `values`, also each
        target's structural values for its count, [T, structural]."""
        drawn = np.asarray(self.counts)[rng.integers(0, len(self.counts), size=len(targets))]
        dst, src, weight = [], [], []
        for r, table in self.tables.items():
            mine = np.flatnonzero(shown & (drawn == r))
            rows = table.rows_of(targets[mine])
            n = table.indptr[targets[mine] + 1] - table.indptr[targets[mine]]
            dst.append(np.repeat(mine, n))
            src.append(table.src[rows])
            weight.append(table.weight[rows])
        values = None
        if self.values is not None:
            values = np.stack([self.values[int(r)] for r in drawn]) if len(drawn) else None
        if not dst:
            empty = np.zeros(0, dtype=np.int64)
            return Adjacency.from_rows(empty, empty, np.zeros(0, np.float32), len(targets)), values
        adjacency = Adjacency.from_rows(
            np.concatenate(dst), np.concatenate(src), np.concatenate(weight), len(targets)
        )
        return adjacency, values


# ---- minibatches -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One training step: the computation graph of every pin the loss touches, and where each
    example's pins sit among its output rows.

    query/pos: [b]; negatives: [n] shared by the batch; hard: [b, h]. The masks are False where a
    negative is the query's own pin or its positive, which the loss must not push away."""

    graph: ComputationGraph
    query: torch.Tensor  # [b] int64 rows of the computation graph's output
    pos: torch.Tensor  # [b]
    negatives: torch.Tensor  # [n]
    hard: torch.Tensor  # [b, h]
    negative_mask: torch.Tensor  # [b, n] bool
    hard_mask: torch.Tensor  # [b, h] bool

    def to(self, device: torch.device | str) -> Batch:
        nb = torch.device(device).type == "cuda"
        moved = [t.to(device, non_blocking=nb) for t in self.tensors()]
        return Batch(self.graph.to(device, nb), *moved)

    def tensors(self) -> list[torch.Tensor]:
        return [self.query, self.pos, self.negatives, self.hard, self.negative_mask, self.hard_mask]

    def pin_memory(self) -> Batch:
        return Batch(self.graph.pin_memory(), *[t.pin_memory() for t in self.tensors()])


def make_batch(
    graph: TrainGraph,
    schedule: Sequence[Layer],
    query: np.ndarray,
    pos: np.ndarray,
    negatives: np.ndarray,
    hard: np.ndarray,
    arriving: float = 0.0,
    structural: int = 0,
    rng: np.random.Generator | None = None,
    arrival: ArrivalTables | None = None,
    pos_board: np.ndarray | None = None,
) -> Batch:
    """Re-index a batch of examples (pin positions) onto the computation graph of its pins for the
    layers of `schedule`. With `arriving` > 0, each of the batch's pins is, with that probability
    (drawn from `rng`), shown as a pin arriving without memberships (neighbor dropout:
    `computation_graph`), or with `arrival`, as one arriving with a few memberships. `pos_board`
    ([b] board positions, -1 for none) names a membership of each positive that the batch's
    neighborhoods leave out (`computation_graph`'s `hidden`)."""
    targets = np.unique(np.concatenate([query, pos, negatives, hard.ravel()]))
    dropped = None
    if arriving > 0:
        if rng is None:
            raise ValueError("neighbor dropout needs a generator")
        dropped = rng.random(len(targets)) < arriving
    shown, values = None, None
    if arrival is not None and dropped is not None:
        shown, values = arrival.rows(targets, dropped, rng)

    def rows(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.searchsorted(targets, x).astype(np.int64))

    hidden = None
    if pos_board is not None:
        named = pos_board >= 0
        hidden = (pos[named], pos_board[named])

    negative_mask = (negatives[None, :] != query[:, None]) & (negatives[None, :] != pos[:, None])
    hard_mask = (hard != query[:, None]) & (hard != pos[:, None])
    return Batch(
        graph=computation_graph(graph, targets, schedule, dropped, structural, shown, values, hidden),
        query=rows(query),
        pos=rows(pos),
        negatives=rows(negatives),
        hard=rows(hard),
        negative_mask=torch.from_numpy(negative_mask),
        hard_mask=torch.from_numpy(hard_mask),
    )


class EpochBatches(Dataset):
    """The minibatches of one epoch, item i built on demand (by a DataLoader worker).

    Pairs are shuffled per epoch; batch i takes the next `batch_size` of them, `negatives` pins
    drawn uniformly over all pins for the whole batch, and `hard` hard negatives per query. With
    `pos_board`, each pair's positive is shown without its membership of that board (-1: none)."""

    def __init__(
        self,
        graph: TrainGraph,
        schedule: Sequence[Layer],
        pairs: tuple[np.ndarray, np.ndarray],
        batch_size: int,
        negatives: int,
        hard: int,
        hard_pools: HardNegatives | None,
        seed: int,
        epoch: int,
        neighbor_dropout: float = 0.0,
        structural_features: int = 0,
        arrival: ArrivalTables | None = None,
        pos_board: np.ndarray | None = None,
    ) -> None:
        self.graph, self.schedule = graph, tuple(schedule)
        self.arrival = arrival
        self.pos_board = pos_board  # [pairs] board positions (-1: none), aligned with `pairs`
        self.neighbor_dropout, self.structural_features = neighbor_dropout, structural_features
        self.pairs, self.batch_size = pairs, batch_size
        self.negatives, self.hard, self.hard_pools = negatives, hard, hard_pools
        self.seed, self.epoch = seed, epoch
        if hard and hard_pools is None:
            raise ValueError("hard negatives need the PPR windows")
        self.order = np.random.default_rng([seed, epoch]).permutation(len(pairs[0]))

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, i: int) -> Batch:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        chosen = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        query, pos = self.pairs[0][chosen], self.pairs[1][chosen]
        negatives = rng.integers(0, self.graph.num_pins, size=self.negatives)
        if self.hard:
            hard = self.hard_pools.sample(query, self.hard, rng)
        else:
            hard = np.zeros((len(query), 0), dtype=np.int64)
        return make_batch(
            self.graph,
            self.schedule,
            query,
            pos,
            negatives,
            hard,
            self.neighbor_dropout,
            self.structural_features,
            rng,  # drawn from after the negatives: without dropout, the batches are as before
            self.arrival,
            None if self.pos_board is None else self.pos_board[chosen],
        )


def worker_init(_: int) -> None:
    # Workers share the machine's cores with the training step: one thread each.
    torch.set_num_threads(1)
