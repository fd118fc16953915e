"""Read the trainer's inputs with Spark, checked exactly as the embed job checks them, into numpy
(`pinsage_model.training.graph.TrainGraph`).

The tables are the embed job's (pins, boards, edges, board_neighbors, pin_neighbors) plus related
pin pairs. Every table goes through `jobs.lib.io.read_table` and `jobs.lib.validate`, so bad input
fails with the same `table '...', column '...': problem` message; Arrow then carries the checked
columns to numpy and the rest of training runs without Spark.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from jobs.lib.io import InputError, read_table
from jobs.lib.validate import EXAMPLES, check_links, check_nodes, conform, vector_width
from pinsage_model.training.graph import TrainGraph, build_graph

log = logging.getLogger("pinsage.train")


@dataclass(frozen=True)
class TrainInputs:
    graph: TrainGraph
    pairs: tuple[np.ndarray, np.ndarray]  # (query, pos) pin positions
    validation: tuple[np.ndarray, np.ndarray] | None
    dropped: dict[str, int]  # rows naming unknown nodes (or NULL ids), per table
    walk: object | None = None  # pinsage_model.training.arrival.WalkParams of pin_neighbors, when read


def _arrow(df: DataFrame) -> pa.Table:
    return df.toArrow().combine_chunks()


def _ids(table: pa.Table, column: str) -> np.ndarray:
    """An id column as int64, NULL as a value no node has (those rows are dropped as dangling)."""
    col = table.column(column)
    values = col.fill_null(0).to_numpy().astype(np.int64)
    if col.null_count:
        values = values.copy()
        values[~col.is_valid().to_numpy(zero_copy_only=False)] = np.iinfo(np.int64).min
    return values


def _features(table: pa.Table, rows: int, dim: int) -> np.ndarray:
    """A checked ARRAY<FLOAT> column (no NULLs, every row of length `dim`) as [rows, dim]."""
    if dim == 0:
        return np.zeros((rows, 0), dtype=np.float32)
    flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(rows, dim)


def read_links(df: DataFrame, name: str, cols: tuple[str, str]) -> pa.Table:
    check_links(df, name, cols)
    return _arrow(df)


def pair_positions(table: pa.Table, name: str, pin_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs as positions in the sorted `pin_ids`. Every id must be a pin: nothing can be learnt
    about a pin the model never embeds, so an unknown id is an error, not a dropped row."""
    if table.num_rows == 0:
        raise InputError(name, None, "has no rows")
    out = []
    for column in ("query_pin", "pos_pin"):
        col = table.column(column)
        if col.null_count:
            raise InputError(name, column, f"{col.null_count} rows have a NULL id")
        ids = col.to_numpy().astype(np.int64)
        pos = np.searchsorted(pin_ids, ids).clip(max=len(pin_ids) - 1)
        unknown = pin_ids[pos] != ids
        if unknown.any():
            shown = ", ".join(str(i) for i in np.unique(ids[unknown])[:EXAMPLES])
            raise InputError(
                name, column, f"{int(unknown.sum())} rows name a pin that is not in pins (e.g. {shown})"
            )
        out.append(pos)
    return out[0], out[1]


def load_inputs(
    spark: SparkSession,
    pins: str,
    edges: str,
    board_neighbors: str,
    pin_neighbors: str,
    pairs: str,
    boards: str | None = None,
    validation_pairs: str | None = None,
) -> TrainInputs:
    """Read, check and index every input. The feature widths come from the tables (the model is
    built to fit them); the board set is the boards table, or without one every board id that
    edges or a neighbor table names, as in the embed job.

    Columns and types of every table are checked first (no Spark job), then the pins, then the
    pairs against them, then the rest."""
    spark.sparkContext.setJobDescription("train: read and check inputs")
    paths = {
        "pins": pins,
        "edges": edges,
        "board_neighbors": board_neighbors,
        "pin_neighbors": pin_neighbors,
        "pairs": pairs,
        "boards": boards,
        "validation_pairs": validation_pairs,
    }
    dfs = {name: conform(read_table(spark, name, path), name) for name, path in paths.items() if path}

    pin_dim = vector_width(dfs["pins"], "features")
    if pin_dim == 0:
        raise InputError("pins", "features", "no row has features of length 1 or more")
    check_nodes(dfs["pins"], "pins", "pin_id", pin_dim, "the first row's length")
    pin_table = _arrow(dfs["pins"])
    pin_ids = _ids(pin_table, "pin_id")
    sorted_pins = np.sort(pin_ids)
    train_pairs = pair_positions(_arrow(dfs["pairs"]), "pairs", sorted_pins)
    validation = None
    if validation_pairs:
        validation = pair_positions(_arrow(dfs["validation_pairs"]), "validation_pairs", sorted_pins)

    edge_table = read_links(dfs["edges"], "edges", ("pin_id", "board_id"))
    board_rows = read_links(dfs["board_neighbors"], "board_neighbors", ("board_id", "pin_id"))
    pin_rows = read_links(dfs["pin_neighbors"], "pin_neighbors", ("pin_id", "board_id"))

    if boards is not None:
        board_dim = vector_width(dfs["boards"], "features")
        check_nodes(dfs["boards"], "boards", "board_id", board_dim or None, "the first row's length")
        board_table = _arrow(dfs["boards"])
        board_ids = _ids(board_table, "board_id")
        board_features = _features(board_table, len(board_ids), board_dim)
    else:
        ids = np.concatenate([_ids(t, "board_id") for t in (edge_table, board_rows, pin_rows)])
        board_ids = np.unique(ids[ids != np.iinfo(np.int64).min])
        board_features = np.zeros((len(board_ids), 0), dtype=np.float32)

    graph, dropped = build_graph(
        pin_ids,
        _features(pin_table, len(pin_ids), pin_dim),
        board_ids,
        board_features,
        (_ids(edge_table, "pin_id"), _ids(edge_table, "board_id"), edge_table.column("weight").to_numpy()),
        (_ids(board_rows, "board_id"), _ids(board_rows, "pin_id"), board_rows.column("weight").to_numpy()),
        (_ids(pin_rows, "pin_id"), _ids(pin_rows, "board_id"), pin_rows.column("weight").to_numpy()),
    )
    log.info(
        "inputs: %d pins (features %d), %d boards (features %d), %d memberships, %d pairs%s; "
        "dropped rows naming unknown nodes: %s",
        graph.num_pins,
        pin_dim,
        graph.num_boards,
        graph.board_features.shape[1],
        len(graph.edge_pin),
        len(train_pairs[0]),
        f", {len(validation[0])} validation pairs" if validation else "",
        dropped,
    )
    return TrainInputs(graph, train_pairs, validation, dropped)
