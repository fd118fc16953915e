"""Generate a synthetic pin/board graph with topics, as Parquet input tables for the embed job.

    python jobs/demo/generate_graph.py --out DIR [--pins 5000 --boards 800 --feature-dim 32 --seed 7]

Pins belong to one of `--topics` topics and their features are the topic's centroid plus noise;
each board has a topic and draws most of its members from it. Writes DIR/pins (with an extra
`topic` column) and DIR/edges; with --uniform-neighbors also neighbor tables taken straight from
the memberships with weight 1 (DIR/board_neighbors, DIR/pin_neighbors), which skips the random walks
(jobs/neighborhoods.py) where only the embedding step matters. Runs without Spark (numpy + pyarrow).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.lib.vectors import to_list as list_column

# Board ids start here, so no board id equals a pin id (pins are numbered from 0); graphs of more
# pins start them at the next power of ten instead (`board_id_offset`).
BOARD_ID_OFFSET = 1_000_000

FEATURE_NOISE = 0.8  # standard deviation of a pin's features around its topic's centroid
BOARD_SIZE_SIGMA = 0.8  # log-normal spread of board sizes around mean_board_size
MIN_ROWS_PER_GROUP = 1024


def board_id_offset(pins: int) -> int:
    """The first board id of a graph of `pins` pins: BOARD_ID_OFFSET while it is above every pin
    id, else the smallest power of ten that is."""
    offset = BOARD_ID_OFFSET
    while offset < pins:
        offset *= 10
    return offset


@dataclass(frozen=True)
class GraphSpec:
    pins: int = 5000
    boards: int = 800
    feature_dim: int = 32
    board_feature_dim: int = 0
    topics: int = 12
    mean_board_size: float = 25.0
    in_topic: float = 0.8
    seed: int = 7
    uniform_neighbors: bool = False


def generate(spec: GraphSpec) -> dict[str, pa.Table]:
    """The graph's tables by name: pins and edges, plus the neighbor and boards tables `spec` asks for."""
    rng = np.random.default_rng(spec.seed)
    pin_topic = rng.integers(0, spec.topics, spec.pins)
    centroids = rng.normal(size=(spec.topics, spec.feature_dim)).astype(np.float32)
    features = centroids[pin_topic] + FEATURE_NOISE * rng.normal(size=(spec.pins, spec.feature_dim)).astype(
        np.float32
    )
    by_topic = [np.flatnonzero(pin_topic == t) for t in range(spec.topics)]

    board_topic = rng.integers(0, spec.topics, spec.boards)
    sizes = np.maximum(
        1, rng.lognormal(np.log(spec.mean_board_size), BOARD_SIZE_SIGMA, spec.boards).astype(int)
    )
    pin_ids, board_ids = [], []
    for b in range(spec.boards):
        own = rng.random(sizes[b]) < spec.in_topic
        members = np.where(
            own,
            rng.choice(by_topic[board_topic[b]], sizes[b]) if len(by_topic[board_topic[b]]) else 0,
            rng.integers(0, spec.pins, sizes[b]),
        )
        members = np.unique(members)
        pin_ids.append(members)
        board_ids.append(np.full(len(members), b))
    pin_col = np.concatenate(pin_ids).astype(np.int64)
    board_col = np.concatenate(board_ids).astype(np.int64) + board_id_offset(spec.pins)
    ones = np.ones(len(pin_col), dtype=np.float32)

    vectors = list_column(features)
    tables = {
        "pins": pa.table(
            {"pin_id": np.arange(spec.pins, dtype=np.int64), "features": vectors, "topic": pin_topic}
        ),
        "edges": pa.table({"pin_id": pin_col, "board_id": board_col, "weight": ones}),
    }
    if spec.uniform_neighbors:
        tables["board_neighbors"] = pa.table({"board_id": board_col, "pin_id": pin_col, "weight": ones})
        tables["pin_neighbors"] = pa.table({"pin_id": pin_col, "board_id": board_col, "weight": ones})
    if spec.board_feature_dim:
        bf = rng.normal(size=(spec.boards, spec.board_feature_dim)).astype(np.float32)
        board_ids = np.arange(spec.boards, dtype=np.int64) + board_id_offset(spec.pins)
        tables["boards"] = pa.table({"board_id": board_ids, "features": list_column(bf)})
    return tables


ROW_GROUP_BYTES = 64 * 2**20  # a Parquet reader holds a whole row group's column chunk in memory


def write_tables(tables: dict[str, pa.Table], out: str) -> None:
    """Each table as OUT/<name>/part-00000.parquet."""
    for name, table in tables.items():
        os.makedirs(f"{out}/{name}", exist_ok=True)
        rows_per_group = max(MIN_ROWS_PER_GROUP, ROW_GROUP_BYTES * table.num_rows // max(table.nbytes, 1))
        pq.write_table(table, f"{out}/{name}/part-00000.parquet", row_group_size=rows_per_group)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--pins", type=int, default=GraphSpec.pins)
    p.add_argument("--boards", type=int, default=GraphSpec.boards)
    p.add_argument("--feature-dim", type=int, default=GraphSpec.feature_dim)
    p.add_argument("--board-feature-dim", type=int, default=0)
    p.add_argument("--topics", type=int, default=GraphSpec.topics)
    p.add_argument("--mean-board-size", type=float, default=GraphSpec.mean_board_size)
    p.add_argument("--seed", type=int, default=GraphSpec.seed)
    p.add_argument("--uniform-neighbors", action="store_true", help="also write weight-1 neighbor tables")
    a = p.parse_args(argv)
    spec = GraphSpec(**{f.name: getattr(a, f.name) for f in fields(GraphSpec) if hasattr(a, f.name)})
    tables = generate(spec)
    write_tables(tables, a.out)
    print(", ".join(f"{name} {t.num_rows:,} rows" for name, t in tables.items()) + f" -> {a.out}")


if __name__ == "__main__":
    main()
