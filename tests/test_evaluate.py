"""The evaluation job end to end: every method's ranks published and reported, the plots written, the
work tables removed; bad input exits 2 before anything is written; bad flags are usage errors that
name the flag. The ranking, metrics, checks and plots are tested unit by unit in
tests/test_evaluation_*.py."""

from __future__ import annotations

import json
import math
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


# ---- the co-occurrence baselines: itemknn, rp3beta, ease ------------------------------------------

# 30 pins. Pins 2 and 3 sit on the same boards (ties for a query on both); board 106 (12 pins) is
# larger than CAP and left out of the co-occurrence models, so pin 11 loses its only board there;
# 22 is alone on its board (a query with no co-member); 23-27 have no board (pool pins that score 0);
# 28 and 29 have boards but no embedding (scored pins outside the pool).
CO_EDGES = [
    *[(p, 100) for p in (0, 1, 2, 3)],
    *[(p, 101) for p in (0, 1, 4)],
    *[(p, 102) for p in (2, 3, 5)],
    *[(p, 103) for p in (4, 5, 6, 7)],
    *[(p, 104) for p in (6, 7, 8, 9, 10)],
    (8, 105),
    (9, 105),
    *[(p, 106) for p in (0, *range(11, 22))],
    *[(p, 107) for p in (20, 21, 28)],
    *[(p, 108) for p in (29, 10, 1)],
    (22, 109),
]
# Seen by the membership methods besides CO_EDGES; (0, 100) twice counts once.
CO_EXTRA = [(5, 105), (12, 107), (0, 100), (6, 101)]
CO_PINS = 30
CO_POOL = range(28)
CAP = 10
CO_PAIRS = [(0, 1), (0, 2), (2, 3), (3, 5), (4, 6), (8, 9), (22, 0), (11, 12), (20, 21), (10, 8), (0, 23)]
CO_PAIRS += [(5, 4), (7, 2), (1, 10), (12, 20)]


def brute_force_scores(edges, cap: int) -> dict[str, np.ndarray]:
    """Every grid point's [pins, pins] score matrix from the dense membership matrix, by the formulas."""
    boards = sorted({b for _, b in edges})
    X = np.zeros((CO_PINS, len(boards)))
    for p, b in edges:
        X[p, boards.index(b)] = 1.0
    X = X[:, X.sum(axis=0) <= cap]
    dp, db = X.sum(axis=1), X.sum(axis=0)
    C = X @ X.T
    out = {}
    for shrink in (0.0, 2.0):
        for n in (0, 3):
            S = np.zeros_like(C)
            for q in range(CO_PINS):
                for c in range(CO_PINS):
                    if C[q, c]:
                        S[q, c] = C[q, c] / (np.sqrt(dp[q]) * np.sqrt(dp[c]) + shrink)
                row = np.delete(S[q], q)
                if n and np.count_nonzero(row) > n:
                    nth = np.sort(row)[::-1][n - 1]
                    S[q][S[q] < nth] = 0.0
            out[f"itemknn[shrink={shrink:g},neighbors={n}]"] = S
    for alpha in (0.5, 1.0):
        for beta in (0.0, 0.5):
            S = np.zeros_like(C)
            for q in range(CO_PINS):
                for c in range(CO_PINS):
                    walks = sum(
                        (1 / dp[q]) ** alpha * (1 / db[b]) ** alpha for b in np.flatnonzero(X[q] * X[c])
                    )
                    S[q, c] = walks / dp[c] ** beta if walks else 0.0
            out[f"rp3beta[alpha={alpha:g},beta={beta:g}]"] = S
    for lam in (1.0, 10.0):
        P = np.linalg.inv(C + lam * np.eye(CO_PINS))
        out[f"ease[lambda={lam:g}]"] = -P / np.diag(P)[None, :]
    return out


def brute_force_counts(S: np.ndarray, q: int, p: int) -> tuple[int, int]:
    """(higher, ties) of p among the pool without q and p, scores equal within a relative 1e-9."""
    higher = ties = 0
    for c in CO_POOL:
        if c in (q, p):
            continue
        if math.isclose(S[q, c], S[q, p], rel_tol=1e-9, abs_tol=0.0):
            ties += 1
        elif S[q, c] > S[q, p]:
            higher += 1
    return higher, ties


def write_co_inputs(root) -> dict[str, str]:
    rng = np.random.default_rng(3)
    tables = {
        "embeddings": {
            "pin_id": pa.array(list(CO_POOL), ID),
            "embedding": pa.array(rng.normal(size=(len(CO_POOL), 3)).tolist(), VEC),
        },
        "pairs": {
            "query_pin": pa.array([q for q, _ in CO_PAIRS], ID),
            "pos_pin": pa.array([p for _, p in CO_PAIRS], ID),
        },
        "edges": {
            "pin_id": pa.array([p for p, _ in CO_EDGES], ID),
            "board_id": pa.array([b for _, b in CO_EDGES], ID),
        },
        "extra-edges": {
            "pin_id": pa.array([p for p, _ in CO_EXTRA], ID),
            "board_id": pa.array([b for _, b in CO_EXTRA], ID),
            "weight": pa.array([2.0] * len(CO_EXTRA), pa.float64()),
        },
    }
    return {name: write_parquet(f"{root}/{name}", columns) for name, columns in tables.items()}


def co_argv(paths: dict[str, str], out: str, *extra: str) -> list[str]:
    args = ["--out", out, "--k", "1,3", "--similarity-pairs", "0", "--master", "local[2]"]
    for name, path in paths.items():
        args += [f"--{name}", path]
    return [*args, *extra]


def test_cooccurrence_baselines_match_a_brute_force_on_every_grid_point(spark, tmp_path):
    paths = write_co_inputs(tmp_path / "in")
    out, report_path = str(tmp_path / "out"), str(tmp_path / "report.json")
    grids = ["--itemknn-shrink", "0,2", "--itemknn-neighbors", "0,3", "--rp3-alpha", "0.5,1"]
    grids += ["--rp3-beta", "0,0.5", "--ease-lambda", "1,10", "--max-board-pins", str(CAP)]
    methods = ["--methods", "ease,itemknn,rp3beta,popularity", "--report-json", report_path]
    assert evaluate.main(co_argv(paths, out, *methods, *grids)) == 0

    rows = spark.read.format("delta").load(f"{out}/pair_ranks").collect()
    found = {(r.method, r.query_pin, r.pos_pin): r for r in rows}
    expected = brute_force_scores(CO_EDGES + CO_EXTRA, CAP)
    pairs = set(CO_PAIRS)
    assert len(rows) == (len(expected) + 1) * len(pairs)
    for method, S in expected.items():
        for q, p in pairs:
            r = found[(method, q, p)]
            higher, ties = brute_force_counts(S, q, p)
            assert (r.higher, r.ties, r["rank"]) == (higher, ties, 1 + higher + ties), (method, q, p)
            assert r.candidates == len(CO_POOL) - 1
    # popularity counts every membership, the big board's and the extra ones too.
    degree = np.zeros(CO_PINS)
    for p, _ in set(CO_EDGES + CO_EXTRA):
        degree[p] += 1
    for q, p in pairs:
        others = [degree[c] for c in CO_POOL if c not in (q, p)]
        r = found[("popularity", q, p)]
        assert (r.higher, r.ties) == (sum(d > degree[p] for d in others), sum(d == degree[p] for d in others))

    report = json.load(open(report_path))
    assert set(report["methods"]) == {"popularity", *expected}
    assert report["grid"]["rp3beta[alpha=0.5,beta=0]"] == {"method": "rp3beta", "alpha": 0.5, "beta": 0.0}
    for base in ("itemknn", "rp3beta", "ease"):
        names = [m for m in expected if m.startswith(base)]
        best = max(names, key=lambda m: (report["methods"][m]["hit@1"], report["methods"][m]["mrr"]))
        assert report["best"][base] == best
    assert report["inputs"]["extra edges"] == len(CO_EXTRA)
    assert report["paired"] == {}, "no embedding ranks: nothing to pair with"
    assert {"cooccurrence", "itemknn and rp3beta", "ease", "ease[lambda=10]"} <= set(report["seconds"])


# Validation pairs: they choose each grid method's point in the same run.
CO_VALIDATION = [(1, 0), (3, 2), (5, 3), (6, 4), (9, 10), (21, 20), (12, 11), (2, 7), (4, 1), (8, 6)]


def test_validation_pairs_choose_each_grid_point_and_the_pairs_see_the_chosen_ones_only(spark, tmp_path):
    paths = write_co_inputs(tmp_path / "in")
    paths["validation-pairs"] = write_parquet(
        str(tmp_path / "in" / "validation"),
        {
            "query_pin": pa.array([q for q, _ in CO_VALIDATION], ID),
            "pos_pin": pa.array([p for _, p in CO_VALIDATION], ID),
        },
    )
    out, report_path = str(tmp_path / "out"), str(tmp_path / "report.json")
    grids = ["--itemknn-shrink", "0,2", "--itemknn-neighbors", "0,3", "--rp3-alpha", "0.5,1"]
    grids += ["--rp3-beta", "0,0.5", "--ease-lambda", "1,10", "--max-board-pins", str(CAP)]
    methods = ["--methods", "embedding,popularity,itemknn,rp3beta,ease", "--validation-methods", "embedding"]
    assert evaluate.main(co_argv(paths, out, *methods, *grids, "--report-json", report_path)) == 0

    expected = brute_force_scores(CO_EDGES + CO_EXTRA, CAP)
    report = json.load(open(report_path))
    validation = spark.read.format("delta").load(f"{out}/validation_pair_ranks").collect()
    found = {(r.method, r.query_pin, r.pos_pin): r for r in validation}
    # Every grid point and the embedding rank the validation pairs; popularity does not.
    assert {r.method for r in validation} == {"embedding", *expected}
    assert len(validation) == (len(expected) + 1) * len(CO_VALIDATION)
    hits = {}
    for method, S in expected.items():
        ranks = []
        for q, p in CO_VALIDATION:
            higher, ties = brute_force_counts(S, q, p)
            assert found[(method, q, p)]["rank"] == 1 + higher + ties, (method, q, p)
            ranks.append(1 + higher + ties)
        # hit@1 (the smallest --k, without 10) chooses; MRR breaks its ties.
        hits[method] = (np.mean([r <= 1 for r in ranks]), np.mean([1 / r for r in ranks]))
        assert report["validation"][method]["hit@1"] == pytest.approx(hits[method][0])
        assert report["validation"][method]["mrr"] == pytest.approx(hits[method][1])
    chosen = {}
    for base in ("itemknn", "rp3beta", "ease"):
        names = [m for m in expected if m.startswith(base)]  # grid order
        chosen[base] = max(names, key=lambda m: hits[m])
    assert report["best"] == chosen
    assert report["inputs"]["validation distinct pairs"] == len(CO_VALIDATION)

    # The pairs: the embedding, popularity and each grid method's chosen point, by the brute force.
    rows = spark.read.format("delta").load(f"{out}/pair_ranks").collect()
    assert {r.method for r in rows} == {"embedding", "popularity", *chosen.values()}
    assert set(report["methods"]) == {"embedding", "popularity", *chosen.values()}
    for r in rows:
        if r.method in expected:
            higher, ties = brute_force_counts(expected[r.method], r.query_pin, r.pos_pin)
            assert (r.higher, r.ties) == (higher, ties), r
    assert len(rows) == 5 * len(set(CO_PAIRS))
    assert set(report["paired"]) == {"popularity", *chosen.values()}
    assert {"validation ease", "validation publish", "ease", "publish"} <= set(report["seconds"])
    assert not os.path.exists(f"{out}/_work"), "work tables are removed"


def test_bad_validation_pairs_exit_2_naming_their_table_and_write_nothing(spark, tmp_path, capsys):
    paths = write_co_inputs(tmp_path / "in")
    paths["validation-pairs"] = write_parquet(
        str(tmp_path / "in" / "validation"),
        {"query_pin": pa.array([1, 2], ID), "pos_pin": pa.array([1, 3], ID)},
    )
    out = str(tmp_path / "out")
    assert evaluate.main(co_argv(paths, out, "--methods", "itemknn")) == 2
    err = capsys.readouterr().err
    assert "table 'validation_pairs', column 'pos_pin': 1 rows name the query pin itself" in err, err
    assert not os.path.exists(out)


def test_ease_alone_above_its_item_limit_exits_2_naming_the_flag(spark, tmp_path, capsys):
    paths = write_co_inputs(tmp_path / "in")
    out = str(tmp_path / "out")
    assert evaluate.main(co_argv(paths, out, "--methods", "ease", "--ease-max-items", "20")) == 2
    err = capsys.readouterr().err
    assert "table 'edges', column 'pin_id': no method of --methods can run: method ease skipped" in err, err
    assert "25 pins have memberships, more than --ease-max-items 20" in err, err
    assert not os.path.exists(f"{out}/pair_ranks")


def test_refused_or_unfed_methods_are_skipped_with_a_note_while_the_others_run():
    args = evaluate.parse_args(
        ["--embeddings", "e", "--pairs", "p", "--out", "o", "--methods", "ease,content,graph"]
    )
    run, skipped = evaluate.plan_methods(args, pins=False, edges=True, ease_items=60_000)
    assert run == ("graph",)
    assert [s.note() for s in skipped] == [
        "method ease skipped: table 'edges', column 'pin_id': 60,000 pins have memberships, more than "
        "--ease-max-items 50,000 (ease holds a dense 60,000 x 60,000 float64 matrix of 28.8 GB, two at "
        "its peak, on the driver)",
        "method content skipped: table 'pins': not given (--pins)",
    ]
    assert evaluate.plan_methods(args, pins=True, edges=True, ease_items=5)[0] == ("content", "graph", "ease")
    default = evaluate.parse_args(["--embeddings", "e", "--pairs", "p", "--out", "o"])
    assert evaluate.plan_methods(default, pins=False, edges=True, ease_items=None) == (
        ("embedding", "graph", "popularity"),
        [],
    )


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--methods", "knn", "argument --methods: unknown method knn"),
        ("--ease-lambda", "0", "argument --ease-lambda: expected numbers > 0"),
        ("--itemknn-neighbors", "1.5", "argument --itemknn-neighbors: expected comma-separated ints"),
        ("--extra-edges", "x", "argument --extra-edges: needs --edges"),
        ("--validation-methods", "embedding", "argument --validation-methods: needs --validation-pairs"),
    ],
)
def test_bad_method_flags_are_usage_errors_naming_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(["--embeddings", "e", "--pairs", "p", "--out", "o", flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
