"""Random-walk neighborhoods: statistically right against the walk's exact expected visit counts,
deterministic across partitionings, bounded for hubs, and strict about bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from jobs.neighborhoods import main, parse_args, run
from tests.graphs import write_parquet

# Pins 0..9 and boards 5..9 share ids on purpose: nodes are keyed by (type, id).
EDGES = [
    (0, 5, 1.0),
    (1, 5, 2.0),
    (2, 5, 1.0),
    (2, 6, 3.0),
    (3, 6, 1.0),
    (4, 6, 0.5),
    (4, 7, 1.0),
    (5, 7, 2.0),
    (6, 7, 1.0),
    (6, 8, 1.0),
    (7, 8, 4.0),
    (8, 8, 1.0),
    (8, 9, 1.0),
    (9, 9, 2.0),
    (0, 9, 0.7),
]


def write_edges(path, edges, weights=True) -> str:
    cols = {
        "pin_id": pa.array([e[0] for e in edges], pa.int64()),
        "board_id": pa.array([e[1] for e in edges], pa.int64()),
    }
    if weights:
        cols["weight"] = pa.array([e[2] for e in edges], pa.float32())
    return write_parquet(path, cols)


def exact_expected_visits(edges, walks, length, restart):
    """Expected visit counts of other-type nodes, by powers of the walk's transition matrix."""
    nodes = sorted({("pin", p) for p, _, _ in edges} | {("board", b) for _, b, _ in edges})
    index = {n: i for i, n in enumerate(nodes)}
    P = np.zeros((len(nodes), len(nodes)))
    for p, b, w in edges:
        P[index[("pin", p)], index[("board", b)]] += w
        P[index[("board", b)], index[("pin", p)]] += w
    P /= P.sum(axis=1, keepdims=True)
    expected = {}
    for s in nodes:
        M = (1 - restart) * P
        M[:, index[s]] += restart
        dist, total = np.eye(len(nodes))[index[s]], np.zeros(len(nodes))
        for _ in range(length):
            dist = dist @ M
            total += dist
        expected[s] = {n[1]: walks * total[index[n]] for n in nodes if n[0] != s[0]}
    return expected


def neighborhoods(spark, out) -> dict[tuple[str, int], dict[int, float]]:
    result: dict = {}
    for r in spark.read.format("delta").load(f"{out}/board_neighbors").collect():
        result.setdefault(("board", r.board_id), {})[r.pin_id] = r.weight
    for r in spark.read.format("delta").load(f"{out}/pin_neighbors").collect():
        result.setdefault(("pin", r.pin_id), {})[r.board_id] = r.weight
    return result


def walk_args(edges: str, out: str, walks: int, length: int, restart: float, top_t: int):
    """Every walk index in one batch, as the exact-distribution tests run it."""
    flags = {"walks-per-node": walks, "walk-length": length, "restart-prob": restart, "top-t": top_t}
    argv = [item for flag, value in flags.items() for item in (f"--{flag}", str(value))]
    return parse_args(["--edges", edges, "--out", out, *argv, "--walks-per-batch", str(walks)])


def test_visit_frequencies_match_the_exact_walk_distribution(spark, tmp_path):
    walks, length, restart = 1000, 4, 0.3
    edges = write_edges(str(tmp_path / "edges"), EDGES)
    args = walk_args(edges, str(tmp_path / "out"), walks, length, restart, 50)
    run(spark, args)
    got = neighborhoods(spark, args.out)
    exact = exact_expected_visits(EDGES, walks, length, restart)
    assert set(got) == set(exact)
    for source, expected in exact.items():
        total = sum(expected.values())
        for node, count in expected.items():
            assert abs(got[source].get(node, 0.0) - count / total) < 0.03, (source, node)
        assert abs(sum(got[source].values()) - 1.0) < 1e-5


def test_top_t_keeps_at_least_95_percent_of_the_exact_top_t_mass(spark, tmp_path):
    walks, length, restart, top_t = 500, 6, 0.2, 2
    edges = write_edges(str(tmp_path / "edges"), EDGES)
    args = walk_args(edges, str(tmp_path / "out"), walks, length, restart, top_t)
    run(spark, args)
    got = neighborhoods(spark, args.out)
    for source, expected in exact_expected_visits(EDGES, walks, length, restart).items():
        best = sum(sorted(expected.values(), reverse=True)[:top_t])
        kept = sum(expected[node] for node in got[source])
        assert len(got[source]) == min(top_t, len(expected))
        assert kept >= 0.95 * best, (source, kept, best)


def test_same_seed_gives_identical_tables_whatever_the_partitioning(spark, tmp_path):
    edges = write_edges(str(tmp_path / "edges"), EDGES)
    results = []
    for i, partitions in enumerate(["2", "9"]):
        spark.conf.set("spark.sql.shuffle.partitions", partitions)
        try:
            args = parse_args(
                [
                    "--edges",
                    edges,
                    "--out",
                    str(tmp_path / f"o{i}"),
                    "--walks-per-node",
                    "30",
                    "--walks-per-batch",
                    "15" if i else "30",  # the walks in two batches, then in one
                    "--seed",
                    "42",
                ]
            )
            run(spark, args)
        finally:
            spark.conf.set("spark.sql.shuffle.partitions", "4")
        results.append(neighborhoods(spark, args.out))
    assert results[0] == results[1]
    args = parse_args(
        ["--edges", edges, "--out", str(tmp_path / "o3"), "--walks-per-node", "30", "--seed", "43"]
    )
    run(spark, args)
    assert neighborhoods(spark, args.out) != results[0], "the seed must matter"


def test_hub_neighborhood_is_bounded_by_top_t(spark, tmp_path):
    edges = [(p, 1000, 1.0) for p in range(2000)] + [(p, 2000, 1.0) for p in range(5)]
    path = write_edges(str(tmp_path / "edges"), edges, weights=False)
    args = parse_args(
        ["--edges", path, "--out", str(tmp_path / "out"), "--walks-per-node", "20", "--top-t", "10"]
    )
    run(spark, args)
    got = neighborhoods(spark, args.out)
    assert len(got[("board", 1000)]) == 10
    assert all(len(v) <= 10 for v in got.values())


def test_null_unknown_duplicate_and_isolated_are_handled_and_reported(spark, tmp_path):
    edges = write_parquet(
        str(tmp_path / "edges"),
        {
            "pin_id": pa.array([0, 0, 1, None, 77, 2], pa.int64()),
            "board_id": pa.array([5, 5, 5, 5, 5, None], pa.int64()),
        },
    )
    pins = write_parquet(
        str(tmp_path / "pins"),
        {
            "pin_id": pa.array([0, 1, 2, 3], pa.int64()),
            "features": pa.array([[0.0]] * 4, pa.list_(pa.float32())),
        },
    )
    args = parse_args(
        ["--edges", edges, "--pins", pins, "--out", str(tmp_path / "out"), "--walks-per-node", "5"]
    )
    report = run(spark, args)
    assert report.counts["edges read"] == 6
    assert report.counts["edges with NULL ids (dropped)"] == 2
    assert report.counts["edges naming unknown nodes (dropped)"] == 1  # pin 77
    assert report.counts["duplicate memberships (merged)"] == 1  # (0, 5) twice
    assert report.counts["edges kept"] == 2
    assert report.counts["isolated pins (empty neighborhood)"] == 2  # pins 2 and 3
    got = neighborhoods(spark, args.out)
    assert set(got) == {("pin", 0), ("pin", 1), ("board", 5)}
    assert set(got[("board", 5)]) == {0, 1}


def test_bad_input_exits_2_with_table_and_column(spark, tmp_path, capsys):
    bad = write_edges(str(tmp_path / "edges"), [(0, 5, 1.0), (1, 5, -2.0)])
    assert main(["--edges", bad, "--out", str(tmp_path / "out")]) == 2
    assert "table 'edges', column 'weight'" in capsys.readouterr().err
    missing = write_parquet(str(tmp_path / "e2"), {"pin_id": pa.array([1], pa.int64())})
    assert main(["--edges", missing, "--out", str(tmp_path / "out")]) == 2
    assert "table 'edges', column 'board_id': missing column" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--restart-prob", "1.0", "argument --restart-prob: must be in [0, 1), got 1.0"),
        ("--restart-prob", "-0.1", "argument --restart-prob: must be in [0, 1)"),
        ("--top-t", "0", "argument --top-t: must be at least 1, got 0"),
        ("--walk-length", "0", "argument --walk-length: must be at least 1"),
        ("--walks-per-node", "0", "argument --walks-per-node: must be at least 1"),
        ("--walks-per-batch", "0", "argument --walks-per-batch: must be at least 1"),
        ("--walks-per-node", "x", "argument --walks-per-node: expected int, got 'x'"),
    ],
)
def test_bad_parameters_are_usage_errors(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--edges", "e", "--out", "o", flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
