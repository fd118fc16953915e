"""The evaluation job end to end: every method's ranks published and reported, the plots written, the
work tables removed; bad input exits 2 before anything is written; bad flags are usage errors that
name the flag. The ranking, metrics, checks and plots are tested unit by unit in
tests/test_evaluation_*.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from jobs import evaluate
from schemas.tables import PAIR_RANKS
from tests.graphs import write_parquet
from tests.test_evaluation_ranking import EDGES, EMB, PAIRS, naive_rank

VEC = pa.list_(pa.float32())
ID = pa.int64()
PNG = b"\x89PNG\r\n\x1a\n"


def write_inputs(root) -> dict[str, str]:
    ids = list(EMB)
    rng = np.random.default_rng(1)
    tables = {
        "embeddings": {"pin_id": pa.array(ids, ID), "embedding": pa.array(list(EMB.values()), VEC)},
        "pairs": {
            "query_pin": pa.array([q for q, _ in PAIRS], ID),
            "pos_pin": pa.array([p for _, p in PAIRS], ID),
        },
        "pins": {
            "pin_id": pa.array(ids, ID),
            "features": pa.array(rng.normal(size=(len(ids), 2)).tolist(), pa.list_(pa.float64())),
        },
        "edges": {
            "pin_id": pa.array([p for p, _ in EDGES], ID),
            "board_id": pa.array([b for _, b in EDGES], ID),
        },
        "labels": {"pin_id": pa.array(ids, pa.int32()), "label": pa.array([i % 3 for i in ids], pa.int64())},
    }
    return {name: write_parquet(f"{root}/{name}", columns) for name, columns in tables.items()}


def argv(paths: dict[str, str], out: str, *extra: str) -> list[str]:
    args = ["--out", out, "--k", "1,3,10", "--walks-per-node", "200", "--walks-per-batch", "200"]
    args += ["--walk-length", "6", "--similarity-pairs", "12", "--map-sample", "10", "--master", "local[2]"]
    for name, path in paths.items():
        args += [f"--{name}", path]
    return [*args, *extra]


def test_the_job_reports_every_method_and_writes_ranks_and_plots(spark, tmp_path):
    paths = write_inputs(tmp_path / "in")
    out, report_path = str(tmp_path / "out"), str(tmp_path / "report.json")
    # A sample as large as the table: the sampled pool's code path, with the full pool's ranks.
    assert evaluate.main(argv(paths, out, "--report-json", report_path, "--candidates", "100")) == 0
    published = spark.read.format("delta").load(f"{out}/pair_ranks")
    assert [(f.name, f.dataType) for f in published.schema] == [(f.name, f.dataType) for f in PAIR_RANKS]
    rows = published.collect()
    assert sorted({r.method for r in rows}) == ["content", "embedding", "graph", "popularity"]
    assert len(rows) == 4 * len(set(PAIRS))
    graph = {(r.query_pin, r.pos_pin): r for r in rows if r.method == "graph"}
    assert graph[(0, 1)]["rank"] == 1, "pin 1 shares a board with the query"
    assert graph[(0, 3)]["rank"] == graph[(0, 3)].candidates == len(EMB) - 1, "pin 3 is unreachable from 0"

    report = json.load(open(report_path))
    assert report["params"]["walks_per_node"] == 200
    naive = [naive_rank(EMB, q, p, EMB)[0] for q, p in set(PAIRS)]
    embedding = report["methods"]["embedding"]
    assert embedding["pairs"] == len(set(PAIRS)) and report["inputs"]["pairs"] == len(PAIRS)
    assert report["inputs"]["candidate pool"] == len(EMB)
    assert embedding["hit@3"] == pytest.approx(np.mean([r <= 3 for r in naive]))
    assert embedding["mrr"] == pytest.approx(np.mean([1 / r for r in naive]))
    assert set(report["similarity"]) == {"embedding", "content"}
    naive_graph = {(r.query_pin, r.pos_pin): r["rank"] for r in rows if r.method == "graph"}
    wins = sum(1 for (q, p), r in zip(set(PAIRS), naive, strict=True) if r <= 3 < naive_graph[(q, p)])
    assert report["paired"]["graph"]["hit@3"]["embedding_only"] == wins
    assert set(report["paired"]) == {"content", "graph", "popularity"}
    assert set(report["seconds"]) == {"inputs", "embedding", "content", "graph", "publish", "health"}
    for name in ("similarity_histogram.png", "pca_map.png"):
        with open(f"{out}/{name}", "rb") as f:
            assert f.read().startswith(PNG), name
    assert not os.path.exists(f"{out}/_work"), "work tables are removed"


def snapshot(root: str) -> dict[str, tuple[int, int]]:
    return {
        os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, files in os.walk(root)
        for f in files
    }


# The last check of all, after every other table passed: nothing is written before it either. Each
# check's message is tested in tests/test_evaluation_checks.py.
@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        ("pairs", {"query_pin": pa.array([0], ID)}, "table 'pairs', column 'pos_pin': missing column"),
        (
            "pins",
            {"pin_id": pa.array([0, 1, 2], ID), "features": pa.array([[0.0]] * 3, VEC)},
            "table 'pins', column 'pin_id': 9 candidate or pair pins of pin_embeddings have no row (e.g. pin_id 3, 4, 5)",
        ),
    ],
)
def test_bad_input_exits_2_naming_table_and_column_and_writes_nothing(
    spark, tmp_path, capsys, table, columns, message
):
    paths = write_inputs(tmp_path / "in")
    paths[table] = write_parquet(str(tmp_path / f"bad_{table}"), columns)
    out = str(tmp_path / "out")
    os.makedirs(out)
    (tmp_path / "out" / "keep.txt").write_text("earlier output")
    before = snapshot(out)
    assert evaluate.main(argv(paths, out, "--candidates", "100")) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert snapshot(out) == before


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--k", "0,10", "argument --k: expected integers >= 1"),
        ("--k", "ten", "argument --k: expected comma-separated integers"),
        ("--candidates", "0", "argument --candidates: must be at least 1, got 0"),
        ("--walks-per-node", "0", "argument --walks-per-node: must be at least 1, got 0"),
        ("--walk-length", "0", "argument --walk-length: must be at least 1, got 0"),
        ("--walks-per-batch", "0", "argument --walks-per-batch: must be at least 1, got 0"),
        ("--similarity-pairs", "-1", "argument --similarity-pairs: must be at least 0, got -1"),
        ("--map-sample", "1", "argument --map-sample: must be at least 2, got 1"),
        ("--restart-prob", "1.5", "argument --restart-prob: must be in [0, 1), got 1.5"),
        ("--query-block-mb", "0", "argument --query-block-mb: must be a positive number, got 0"),
        ("--conf", "novalue", "--conf expects KEY=VALUE, got 'novalue'"),
    ],
)
def test_bad_parameters_are_usage_errors_naming_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(["--embeddings", "e", "--pairs", "p", "--out", "o", flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_walk_and_common_flags_reach_the_arguments():
    args = evaluate.parse_args(
        ["--embeddings", "e", "--pairs", "p", "--out", "o/", "--k", "100,10,10", "--walks-per-node", "7"]
        + ["--walk-length", "3", "--restart-prob", "0.5", "--seed", "4", "--conf", "a=b", "--keep-work"]
    )
    assert (args.out, args.ks, args.candidates) == ("o", (10, 100), None)
    walks = args.walks
    assert (walks.walks_per_node, walks.walk_length, walks.restart_prob, walks.seed) == (7, 3, 0.5, 4)
    assert (args.common.conf, args.common.keep_work, args.common.report_json) == ({"a": "b"}, True, None)
    assert (
        evaluate.parse_args(["--embeddings", "e", "--pairs", "p", "--out", "o"]).walks.walks_per_node == 500
    )
