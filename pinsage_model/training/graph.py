"""The pin/board graph in memory, indexed for training: nodes by position, neighbor tables as CSR.

Node ids are sorted, so a node's index is its rank among the ids of its type and every run over the
same tables indexes them the same way, whatever order Spark returned the rows in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pinsage_model.model import Neighborhood


@dataclass(frozen=True)
class Adjacency:
    """Neighbor rows of one target type in CSR form, sorted by (dst, src, weight).

    Target t's rows are indptr[t]:indptr[t+1]; src indexes the source type's nodes.
    """

    indptr: np.ndarray  # [targets + 1] int64
    src: np.ndarray  # [rows] int64
    weight: np.ndarray  # [rows] float32

    @classmethod
    def from_rows(cls, dst: np.ndarray, src: np.ndarray, weight: np.ndarray, num_targets: int) -> Adjacency:
        order = np.lexsort((weight, src, dst))
        dst, src, weight = dst[order], src[order], weight[order]
        indptr = np.zeros(num_targets + 1, dtype=np.int64)
        np.cumsum(np.bincount(dst, minlength=num_targets), out=indptr[1:])
        return cls(indptr, src.astype(np.int64), weight.astype(np.float32))

    @property
    def num_targets(self) -> int:
        return len(self.indptr) - 1

    def rows_of(self, targets: np.ndarray) -> np.ndarray:
        """Row positions of every target in `targets`, target by target, in CSR order."""
        starts, ends = self.indptr[targets], self.indptr[targets + 1]
        counts = ends - starts
        if counts.sum() == 0:
            return np.zeros(0, dtype=np.int64)
        # Each row's position is its target's start plus its offset within the target's run.
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(starts, counts) + offsets

    def neighborhood(self, device: torch.device | str = "cpu") -> Neighborhood:
        dst = np.repeat(np.arange(self.num_targets), np.diff(self.indptr))
        return Neighborhood(
            dst=torch.from_numpy(dst).to(device),
            src=torch.from_numpy(self.src).to(device),
            weight=torch.from_numpy(self.weight).to(device),
        )


@dataclass(frozen=True)
class TrainGraph:
    """Everything the trainer reads, as arrays indexed by node position.

    pin_features: [pins, d_in]; board_features: [boards, d_b] (d_b may be 0);
    neighbors["board"]: the boards' pooled pins; neighbors["pin"]: the pins' pooled boards;
    edges_*: the memberships (pin index, board index, weight), which personalised PageRank walks.
    """

    pin_ids: np.ndarray  # [pins] int64, sorted
    board_ids: np.ndarray  # [boards] int64, sorted
    pin_features: np.ndarray  # [pins, d_in] float32
    board_features: np.ndarray  # [boards, d_b] float32
    neighbors: dict[str, Adjacency]
    edge_pin: np.ndarray  # [edges] int64
    edge_board: np.ndarray  # [edges] int64
    edge_weight: np.ndarray  # [edges] float32

    @property
    def num_pins(self) -> int:
        return len(self.pin_ids)

    @property
    def num_boards(self) -> int:
        return len(self.board_ids)

    def pin_index(self, ids: np.ndarray) -> np.ndarray:
        """Positions of pin ids (which must be pins)."""
        return np.searchsorted(self.pin_ids, ids)

    def whole_graph(
        self, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, Neighborhood, Neighborhood]:
        """The arguments of `PinSage.forward` for the whole graph."""
        return (
            torch.from_numpy(self.pin_features).to(device),
            torch.from_numpy(self.board_features).to(device),
            self.neighbors["board"].neighborhood(device),
            self.neighbors["pin"].neighborhood(device),
        )


def index_rows(
    dst: np.ndarray, src: np.ndarray, dst_ids: np.ndarray, src_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map (dst, src) id columns to positions in the sorted id arrays; returns (dst, src, kept).
    Rows naming an id that is not a node are not kept, exactly as the Spark layers drop them."""
    kept = np.zeros(len(dst), dtype=bool)
    if not len(dst_ids) or not len(src_ids):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), kept
    dst_pos = np.searchsorted(dst_ids, dst).clip(max=len(dst_ids) - 1)
    src_pos = np.searchsorted(src_ids, src).clip(max=len(src_ids) - 1)
    kept = (dst_ids[dst_pos] == dst) & (src_ids[src_pos] == src)
    return dst_pos[kept], src_pos[kept], kept


def build_graph(
    pin_ids: np.ndarray,
    pin_features: np.ndarray,
    board_ids: np.ndarray,
    board_features: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    board_rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    pin_rows: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[TrainGraph, dict[str, int]]:
    """Index a graph given as id columns. edges: (pin_id, board_id, weight); board_rows:
    (board_id, pin_id, weight); pin_rows: (pin_id, board_id, weight); ids need not be sorted, rows may
    name unknown ids. pin_features is [pins, d_in] and board_features [boards, d_b], in the order of
    the id arrays. Returns the graph and the number of rows dropped per table.

    A membership listed twice counts once with the larger weight, as in the neighborhood job.
    """
    pin_order, board_order = np.argsort(pin_ids, kind="stable"), np.argsort(board_ids, kind="stable")
    pins, boards = pin_ids[pin_order].astype(np.int64), board_ids[board_order].astype(np.int64)
    dropped = {}

    e_pin, e_board, kept = index_rows(edges[0], edges[1], pins, boards)
    dropped["edges"] = int((~kept).sum())
    e_weight = edges[2][kept].astype(np.float32)
    if len(e_pin):
        order = np.lexsort((e_weight, e_board, e_pin))
        e_pin, e_board, e_weight = e_pin[order], e_board[order], e_weight[order]
        # After the sort the last row of each (pin, board) run carries the largest weight.
        last = np.ones(len(e_pin), dtype=bool)
        last[:-1] = (e_pin[1:] != e_pin[:-1]) | (e_board[1:] != e_board[:-1])
        e_pin, e_board, e_weight = e_pin[last], e_board[last], e_weight[last]

    neighbors = {}
    for kind, rows, dst_ids, src_ids, table in (
        ("board", board_rows, boards, pins, "board_neighbors"),
        ("pin", pin_rows, pins, boards, "pin_neighbors"),
    ):
        dst, src, kept = index_rows(rows[0], rows[1], dst_ids, src_ids)
        dropped[table] = int((~kept).sum())
        neighbors[kind] = Adjacency.from_rows(dst, src, rows[2][kept].astype(np.float32), len(dst_ids))

    graph = TrainGraph(
        pin_ids=pins,
        board_ids=boards,
        pin_features=np.ascontiguousarray(pin_features[pin_order], dtype=np.float32),
        board_features=np.ascontiguousarray(board_features[board_order], dtype=np.float32),
        neighbors=neighbors,
        edge_pin=e_pin,
        edge_board=e_board,
        edge_weight=e_weight,
    )
    return graph, dropped
