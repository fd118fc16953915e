"""Small hand-shaped graphs written as Parquet inputs, with the awkward cases every test wants."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinsage_model.checkpoint import save_checkpoint
from pinsage_model.config import ModelConfig
from pinsage_model.model import random_model

LONELY_PIN = 29  # a pin with no neighbor rows
LONELY_BOARD = 107  # a board with no neighbor rows
UNKNOWN_PIN, UNKNOWN_BOARD = 999, 888  # named by dangling rows only


@dataclass
class SmallGraph:
    pins: dict[int, list[float]]
    boards: dict[int, list[float]]
    edges: list[tuple[int, int]]
    board_rows: list[tuple[int, int, float]]  # (board_id, pin_id, weight)
    pin_rows: list[tuple[int, int, float]]  # (pin_id, board_id, weight)
    paths: dict[str, str] = field(default_factory=dict)


def write_parquet(path: str, columns: dict, schema: pa.Schema | None = None) -> str:
    os.makedirs(path, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), f"{path}/part-00000.parquet")
    return path


def vector_type() -> pa.DataType:
    return pa.list_(pa.float32())


def small_graph(seed: int = 0, pin_dim: int = 6, board_dim: int = 0) -> SmallGraph:
    """30 pins and 8 boards (ids 100..107) with random memberships and weights, plus: a pin with no
    neighbors, a board with no neighbors (in edges only), and dangling rows naming unknown ids."""
    rng = np.random.default_rng(seed)
    pins = {p: rng.normal(size=pin_dim).round(4).tolist() for p in range(30)}
    boards = {b: rng.normal(size=board_dim).round(4).tolist() for b in range(100, 108)}
    edges = []
    for b in range(100, 107):
        for p in rng.choice(LONELY_PIN, size=int(rng.integers(2, 7)), replace=False):
            edges.append((int(p), b))
    edges.append((3, LONELY_BOARD))
    board_rows = [(b, p, float(rng.uniform(0.1, 2.0))) for p, b in edges if b != LONELY_BOARD]
    pin_rows = [(p, b, float(rng.uniform(0.1, 2.0))) for p, b in edges]
    board_rows += [(100, UNKNOWN_PIN, 1.0)]
    pin_rows += [(UNKNOWN_PIN, 101, 1.0), (4, UNKNOWN_BOARD, 0.5)] if board_dim else [(UNKNOWN_PIN, 101, 1.0)]
    return SmallGraph(pins, boards, edges, board_rows, pin_rows)


def write_graph(graph: SmallGraph, root: str, with_boards: bool) -> dict[str, str]:
    ids = list(graph.pins)
    paths = {
        "pins": write_parquet(
            f"{root}/pins",
            {
                "pin_id": pa.array(ids, pa.int64()),
                "features": pa.array(list(graph.pins.values()), vector_type()),
            },
        ),
        "edges": write_parquet(
            f"{root}/edges",
            {
                "pin_id": pa.array([p for p, _ in graph.edges], pa.int64()),
                "board_id": pa.array([b for _, b in graph.edges], pa.int64()),
            },
        ),
        "board_neighbors": write_parquet(
            f"{root}/board_neighbors",
            {
                "board_id": pa.array([r[0] for r in graph.board_rows], pa.int64()),
                "pin_id": pa.array([r[1] for r in graph.board_rows], pa.int64()),
                "weight": pa.array([r[2] for r in graph.board_rows], pa.float32()),
            },
        ),
        "pin_neighbors": write_parquet(
            f"{root}/pin_neighbors",
            {
                "pin_id": pa.array([r[0] for r in graph.pin_rows], pa.int64()),
                "board_id": pa.array([r[1] for r in graph.pin_rows], pa.int64()),
                "weight": pa.array([r[2] for r in graph.pin_rows], pa.float32()),
            },
        ),
    }
    if with_boards:
        paths["boards"] = write_parquet(
            f"{root}/boards",
            {
                "board_id": pa.array(list(graph.boards), pa.int64()),
                "features": pa.array(list(graph.boards.values()), vector_type()),
            },
        )
    graph.paths = paths
    return paths


def write_checkpoint(path: str, seed: int = 0, **overrides) -> str:
    fields = dict(
        num_layers=2,
        pin_feature_dim=6,
        board_feature_dim=0,
        hidden_dim=5,
        embed_dim=4,
        pooling="importance",
        normalize_output=True,
    )
    fields.update(overrides)
    save_checkpoint(random_model(ModelConfig(**fields), seed), path)
    return path


def table_argv(paths: dict[str, str]) -> list[str]:
    """The graph's table flags, as embed and train take them (no --boards)."""
    flags = ("pins", "edges", "board_neighbors", "pin_neighbors")
    return [arg for name in flags for arg in ("--" + name.replace("_", "-"), paths[name])]


def embed_argv(paths: dict[str, str], checkpoint: str, out: str) -> list[str]:
    argv = [*table_argv(paths), "--checkpoint", checkpoint, "--out", out]
    if "boards" in paths:
        argv += ["--boards", paths["boards"]]
    return argv
