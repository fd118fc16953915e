"""The evaluation job: exact ranks against a numpy brute force (ties, candidate samples, query
blocks), the metric formulas, the similarity statistics, the graph baseline's walks and ranks, the
plots, and bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from jobs import evaluate as job
from jobs.lib import evaluation as E
from jobs.lib import walks as W
from schemas.tables import PAIR_RANKS
from tests.graphs import write_parquet

VEC = pa.list_(pa.float32())
ID = pa.int64()

# Pins 3, 7 and 8 point the same way (7 is a copy of 3, 8 is 2 x 3, exact in floating point), so a
# pair whose positive is one of them meets ties.
EMB = {
    0: [1.0, 0.0, 0.0], 1: [0.9, 0.1, 0.0], 2: [0.0, 1.0, 0.0], 3: [0.6, 0.8, 0.0],
    4: [0.3, 0.3, 0.9], 5: [-1.0, 0.2, 0.1], 6: [0.5, 0.5, 0.5], 7: [0.6, 0.8, 0.0],
    8: [1.2, 1.6, 0.0], 9: [0.1, -0.7, 0.4], 10: [0.2, 0.9, -0.3], 11: [0.7, 0.2, 0.6],
}  # fmt: skip
PAIRS = [(0, 1), (0, 3), (2, 10), (5, 9), (6, 11), (3, 7), (4, 6), (0, 1), (9, 5)]
# Pins 0-4 hang together through boards 100 and 101; 3 and 4 only through board 102.
EDGES = [(0, 100), (1, 100), (1, 101), (2, 101), (3, 102), (4, 102)]


def naive_rank(vectors: dict, q: int, p: int, pool) -> tuple[int, int, int, int]:
    """(rank, higher, ties, candidates) by scoring every candidate on its own in float64."""
    v = {k: np.asarray(np.float32(x), dtype=np.float64) for k, x in vectors.items()}

    def cos(a: int, b: int) -> float:
        return float(v[a] @ v[b] / (np.linalg.norm(v[a]) * np.linalg.norm(v[b])))

    s_pos = cos(q, p)
    others = [c for c in pool if c not in (q, p)]
    higher = sum(cos(q, c) > s_pos for c in others)
    ties = sum(cos(q, c) == s_pos for c in others)
    return 1 + higher + ties, higher, ties, len(others) + 1


def vectors_df(spark, vectors: dict):
    return spark.createDataFrame(
        [(k, list(map(float, x))) for k, x in vectors.items()], "pin_id bigint, vec array<float>"
    )


def pairs_df(spark, pairs):
    return spark.createDataFrame(pairs, "query_pin bigint, pos_pin bigint")


def ranks_by_pair(df) -> dict:
    return {(r.query_pin, r.pos_pin): (r["rank"], r.higher, r.ties, r.candidates) for r in df.collect()}


def rank(spark, candidates_ids=None, block_mb=96 / 2**20):
    vectors = vectors_df(spark, EMB)
    candidates = vectors if candidates_ids is None else vectors.where(vectors.pin_id.isin(candidates_ids))
    pairs = E.distinct_pairs(pairs_df(spark, PAIRS))
    return job.rank_by_similarity(
        spark, "embedding", vectors, 3, candidates, pairs, len(set(PAIRS)), block_mb
    )


def test_ranks_match_a_brute_force_with_ties_counted_against_the_positive(spark):
    # 96 bytes a block = 4 pairs of 3-dim float64 queries: the 8 distinct pairs run in 2 blocks.
    assert E.blocks_for(len(set(PAIRS)), 3, 96 / 2**20) == (4, 2)
    blocks = E.pair_vectors(pairs_df(spark, list(set(PAIRS))), vectors_df(spark, EMB), 2).select("block")
    assert {r.block for r in blocks.collect()} == {0, 1}, "both query blocks must hold pairs"
    got = ranks_by_pair(rank(spark))
    expected = {(q, p): naive_rank(EMB, q, p, EMB) for q, p in set(PAIRS)}
    assert got == expected
    assert expected[(0, 3)][2] == 2 and expected[(3, 7)][2] == 1, "the tie cases must be exercised"


def test_a_seeded_candidate_sample_is_stable_and_ranks_match_a_brute_force_over_it(spark):
    ids = vectors_df(spark, EMB).select("pin_id")
    pool = sorted(r.pin_id for r in E.candidate_pool(ids, 5, seed=3).collect())
    assert len(pool) == 5 and set(pool) <= set(EMB)
    assert sorted(r.pin_id for r in E.candidate_pool(ids.repartition(3), 5, seed=3).collect()) == pool
    assert sorted(r.pin_id for r in E.candidate_pool(ids, 5, seed=4).collect()) != pool, (
        "the seed must matter"
    )
    # The positive is a candidate even when the sample left it out; the query never is.
    assert any(p not in pool for _, p in PAIRS) and any(q in pool for q, _ in PAIRS)
    got = ranks_by_pair(rank(spark, pool, block_mb=1.0))
    expected = {(q, p): naive_rank(EMB, q, p, pool) for q, p in set(PAIRS)}
    assert got == expected


def test_metrics_follow_their_definitions_on_hand_built_ranks(spark):
    ranks = spark.createDataFrame(
        [("m", i, i + 100, r, r - 1, 0, 1000) for i, r in enumerate([1, 5, 100, 101, 250])],
        "method string, query_pin bigint, pos_pin bigint, rank bigint, higher bigint, ties bigint, candidates bigint",
    )
    got = E.metrics(ranks, (1, 10, 100)).collect()[0].asDict()
    assert got["pairs"] == 5 and got["mean_candidates"] == 1000
    assert got["hit@1"] == pytest.approx(1 / 5) and got["hit@10"] == pytest.approx(2 / 5)
    assert got["hit@100"] == pytest.approx(3 / 5)
    assert got["mrr"] == pytest.approx((1 + 1 / 5 + 1 / 100 + 1 / 101 + 1 / 250) / 5)
    # Scaled MRR: 1 / ceil(rank / 100) = 1, 1, 1, 1/2, 1/3.
    assert got["scaled_mrr"] == pytest.approx((1 + 1 + 1 + 1 / 2 + 1 / 3) / 5)


def test_paired_hits_count_the_pairs_only_one_method_ranks_in_the_top_k(spark):
    embedding, graph = [1, 3, 12, 40, 2, 700], [5, 20, 1, 41, 2, 900]
    rows = [("embedding", i, i + 100, r, r - 1, 0, 1000) for i, r in enumerate(embedding)]
    rows += [("graph", i, i + 100, r, r - 1, 0, 1000) for i, r in enumerate(graph)]
    ranks = spark.createDataFrame(
        rows,
        "method string, query_pin bigint, pos_pin bigint, rank bigint, higher bigint, ties bigint, candidates bigint",
    )
    got = {
        (r.method, r.k): (r.reference_only, r.method_only)
        for r in E.paired_hits(ranks, (1, 10, 40)).collect()
    }
    # k=1: embedding hits pair 0, graph pair 2. k=10: embedding 0, 1, 4; graph 0, 2, 4.
    # k=40: embedding 0, 1, 2, 3, 4; graph 0, 1, 2, 4.
    assert got == {("graph", 1): (1, 1), ("graph", 10): (1, 1), ("graph", 40): (1, 0)}


def test_p_values_that_underflow_are_reported_as_a_bound():
    assert E.sign_test_p(3000, 200) == 0.0
    assert E.format_p(E.sign_test_p(3000, 200)) == "< 1e-300"
    assert E.format_p(0.00042) == "0.00042"


def test_sign_test_is_the_exact_two_sided_binomial_tail():
    assert E.sign_test_p(0, 0) == 1.0
    assert E.sign_test_p(5, 0) == pytest.approx(2 * 0.5**5)
    assert E.sign_test_p(1, 3) == pytest.approx(2 * (1 + 4) / 16)
    assert E.sign_test_p(4, 4) == 1.0, "capped at 1"
    # 60 against 40 of 100: the exact tail 2 * sum_{i<=40} C(100, i) / 2^100.
    assert E.sign_test_p(60, 40) == pytest.approx(0.056887, abs=1e-6)


def test_random_pair_similarity_statistics_match_numpy(spark):
    rng = np.random.default_rng(5)
    vectors = {i: (rng.normal(size=4) + [1.0, 0, 0, 0]).tolist() for i in range(60)}
    df = vectors_df(spark, vectors)
    pairs = [(r.pin_a, r.pin_b) for r in E.random_pairs(df.select("pin_id"), 40, seed=1).collect()]
    assert 30 <= len(pairs) <= 40 and all(a != b for a, b in pairs)
    assert len({a for a, _ in pairs}) == len(pairs) and len({b for _, b in pairs}) == len(pairs)
    cosines = E.pair_cosines(E.random_pairs(df.select("pin_id"), 40, seed=1), df).cache()
    v = {k: np.float64(np.float32(x)) for k, x in vectors.items()}
    x = np.array([v[a] @ v[b] / (np.linalg.norm(v[a]) * np.linalg.norm(v[b])) for a, b in pairs])
    got = {(r.pin_a, r.pin_b): r.cosine for r in cosines.collect()}
    assert np.allclose([got[p] for p in pairs], x, atol=1e-12)
    stats = E.similarity_stats(cosines).collect()[0]
    d = x - x.mean()
    assert stats["pairs"] == len(x)
    assert stats["mean"] == pytest.approx(x.mean()) and stats["std"] == pytest.approx(np.sqrt(np.mean(d**2)))
    assert stats["kurtosis"] == pytest.approx(np.mean(d**4) / np.mean(d**2) ** 2 - 3.0, rel=1e-9)
    hist = {r.bin: r["count"] for r in E.similarity_histogram(cosines, 10).collect()}
    assert [hist.get(i, 0) for i in range(10)] == np.histogram(x, bins=10, range=(-1, 1))[0].tolist()


def test_graph_ranks_put_unvisited_candidates_after_visited_ones(spark):
    visits = spark.createDataFrame(
        [(0, 1, 5), (0, 2, 5), (0, 4, 2)], "query_pin bigint, visited bigint, count bigint"
    )
    pool = spark.createDataFrame([(i,) for i in range(6)], "pin_id bigint")
    pairs = pairs_df(spark, [(0, 1), (0, 4), (0, 3), (5, 2)])
    got = ranks_by_pair(E.graph_ranks(pairs, visits, pool))
    assert got[(0, 1)] == (2, 0, 1, 5)  # pin 2 has as many visits: a tie, counted against it
    assert got[(0, 4)] == (3, 2, 0, 5)
    assert got[(0, 3)] == (5, 3, 1, 5)  # never visited: after 1, 2, 4, and level with unvisited 5
    assert got[(5, 2)] == (5, 0, 4, 5)  # a query with no walks at all: every candidate ties


def test_popularity_ranks_order_candidates_by_their_boards(spark):
    # Boards per pin: 0 -> 3 (one membership listed twice), 1 -> 2, 2 -> 2, 3 -> 1, 4 -> none,
    # 5 -> 4; pin 6 has 5 boards but is not a candidate.
    memberships = [(0, 10), (0, 10), (0, 11), (0, 12), (1, 10), (1, 11), (2, 12), (2, 13), (3, 10)]
    memberships += [(5, b) for b in (10, 11, 12, 13)] + [(6, b) for b in (10, 11, 12, 13, 14)]
    edges = spark.createDataFrame(memberships, "pin_id bigint, board_id bigint")
    pool = spark.createDataFrame([(i,) for i in range(6)], "pin_id bigint")
    pairs = pairs_df(spark, [(0, 1), (5, 4), (6, 3), (2, 6)])
    got = ranks_by_pair(E.popularity_ranks(pairs, edges, pool))
    assert got[(0, 1)] == (3, 1, 1, 5)  # pin 5 above, pin 2 level (a tie, against it); query 0 skipped
    assert got[(5, 4)] == (5, 4, 0, 5)  # no boards: after every other candidate
    assert got[(6, 3)] == (5, 4, 0, 6)  # a query outside the pool takes no candidate's place
    assert got[(2, 6)] == (1, 0, 0, 6)  # a positive outside the pool is ranked against the pool


def exact_same_type_visits(edges, source: int, walks: int, length: int, restart: float) -> dict[int, float]:
    """Expected visits of pins other than `source` from pin `source`, by powers of the transition
    matrix of the walk with restart."""
    nodes = sorted({("pin", p) for p, _ in edges} | {("board", b) for _, b in edges})
    index = {n: i for i, n in enumerate(nodes)}
    P = np.zeros((len(nodes), len(nodes)))
    for p, b in edges:
        P[index[("pin", p)], index[("board", b)]] = P[index[("board", b)], index[("pin", p)]] = 1.0
    P /= P.sum(axis=1, keepdims=True)
    M = (1 - restart) * P
    M[:, index[("pin", source)]] += restart
    dist, total = np.eye(len(nodes))[index[("pin", source)]], np.zeros(len(nodes))
    for _ in range(length):
        dist = dist @ M
        total += dist
    return {n[1]: walks * total[index[n]] for n in nodes if n[0] == "pin" and n[1] != source}


def test_same_type_walk_visits_match_the_exact_walk_distribution(spark):
    walks, length, restart = 2000, 4, 0.3
    edges = spark.createDataFrame(
        [(p, b, 1.0) for p, b in EDGES], "pin_id bigint, board_id bigint, weight double"
    )
    adjacency = W.undirected(edges)
    stats = W.node_stats(adjacency).cache()
    table = W.buckets(adjacency, stats).cache()
    walkers = W.start_walkers(stats.where("node_t = 0 AND node = 1"), range(walks))
    params = W.WalkParams(walks_per_node=walks, walk_length=length, restart_prob=restart, seed=2)
    for s in range(1, length + 1):
        walkers = W.step(walkers, table, params, s, same_type=True)
    got = {r.visited: r["count"] for r in W.visit_counts(walkers).collect()}
    expected = exact_same_type_visits(EDGES, 1, walks, length, restart)
    assert set(got) <= set(expected) and 1 not in got
    total = sum(expected.values())
    for pin, count in expected.items():
        assert abs(got.get(pin, 0) / total - count / total) < 0.03, (pin, got, expected)
    # The default still records the other type only, as the neighbourhood job expects.
    plain = W.step(W.start_walkers(stats.where("node_t = 0 AND node = 1"), range(5)), table, params, 1)
    assert {r.visited for r in W.visit_counts(plain).collect()} <= {100, 101}


def write_inputs(root) -> dict[str, str]:
    ids = list(EMB)
    rng = np.random.default_rng(1)
    return {
        "embeddings": write_parquet(f"{root}/emb", {"pin_id": pa.array(ids, ID), "embedding": pa.array(list(EMB.values()), VEC)}),
        "pairs": write_parquet(f"{root}/pairs", {"query_pin": pa.array([q for q, _ in PAIRS], ID), "pos_pin": pa.array([p for _, p in PAIRS], ID)}),
        "pins": write_parquet(f"{root}/pins", {"pin_id": pa.array(ids, ID), "features": pa.array(rng.normal(size=(len(ids), 2)).tolist(), pa.list_(pa.float64()))}),
        "edges": write_parquet(f"{root}/edges", {"pin_id": pa.array([p for p, _ in EDGES], ID), "board_id": pa.array([b for _, b in EDGES], ID)}),
        "labels": write_parquet(f"{root}/labels", {"pin_id": pa.array(ids, pa.int32()), "label": pa.array([i % 3 for i in ids], pa.int64())}),
    }  # fmt: skip


def argv(paths: dict[str, str], out: str, *extra: str) -> list[str]:
    args = ["--out", out, "--k", "1,3,10", "--walks-per-query", "200", "--walks-per-batch", "200", "--walk-length", "6",
            "--similarity-pairs", "12", "--map-sample", "10", "--master", "local[2]", *extra]  # fmt: skip
    for name, path in paths.items():
        args += [f"--{name}", path]
    return args


def test_the_job_reports_every_method_and_writes_ranks_and_plots(spark, tmp_path):
    paths = write_inputs(tmp_path / "in")
    out, report_path = str(tmp_path / "out"), str(tmp_path / "report.json")
    # A sample as large as the table: the sampled pool's code path, with the full pool's ranks.
    assert job.main(argv(paths, out, "--report-json", report_path, "--candidates", "100")) == 0
    published = spark.read.format("delta").load(f"{out}/pair_ranks")
    assert [(f.name, f.dataType) for f in published.schema] == [(f.name, f.dataType) for f in PAIR_RANKS]
    rows = published.collect()
    assert sorted({r.method for r in rows}) == ["content", "embedding", "graph", "popularity"]
    assert len(rows) == 4 * len(set(PAIRS))
    graph = {(r.query_pin, r.pos_pin): r for r in rows if r.method == "graph"}
    assert graph[(0, 1)]["rank"] == 1, "pin 1 shares a board with the query"
    assert graph[(0, 3)]["rank"] == graph[(0, 3)].candidates == len(EMB) - 1, "pin 3 is unreachable from 0"

    report = json.load(open(report_path))
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
    for name in ("similarity_histogram.png", "pca_map.png"):
        with open(f"{out}/{name}", "rb") as f:
            data = f.read()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name
    assert not os.path.exists(f"{out}/_work"), "work tables are removed"


def snapshot(root: str) -> dict[str, tuple[int, int]]:
    return {
        os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, files in os.walk(root)
        for f in files
    }


@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        ("pairs", {"query_pin": pa.array([0], ID)}, "table 'pairs', column 'pos_pin': missing column"),
        ("pairs", {"query_pin": pa.array([0, 1], ID), "pos_pin": pa.array([1, 999], ID)}, "table 'pairs', column 'pos_pin': 1 rows name a pin that is not in pin_embeddings (e.g. pos_pin 999)"),
        ("pairs", {"query_pin": pa.array([4, 2], ID), "pos_pin": pa.array([6, None], ID)}, "table 'pairs', column 'pos_pin': 1 rows have a NULL id"),
        ("embeddings", {"pin_id": pa.array([0, 1], ID), "embedding": pa.array([[1.0, 0.0], [1.0]], VEC)}, "table 'pin_embeddings', column 'embedding': 1 rows do not have length 2"),
        ("labels", {"pin_id": pa.array([0], ID), "label": pa.array([0.5], pa.float64())}, "table 'labels', column 'label': has type double, expected string or int or bigint"),
        ("pins", {"pin_id": pa.array([0, 1, 2], ID), "features": pa.array([[0.0]] * 3, VEC)}, "table 'pins', column 'pin_id': 9 candidate or pair pins of pin_embeddings have no row (e.g. pin_id 3, 4, 5)"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_naming_table_and_column_and_writes_nothing(
    spark, tmp_path, capsys, table, columns, message
):
    paths = write_inputs(tmp_path / "in")
    paths[table] = write_parquet(str(tmp_path / f"bad_{table}"), columns)
    out = str(tmp_path / "out")
    os.makedirs(out)
    (tmp_path / "out" / "keep.txt").write_text("earlier output")
    before = snapshot(out)
    assert job.main(argv(paths, out)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert snapshot(out) == before


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--k", "0,10", "integers >= 1"), ("--k", "ten", "comma-separated integers"), ("--candidates", "0", "--candidates must be at least 1"),
     ("--restart-prob", "1.5", "restart_prob must be in [0, 1)"), ("--query-block-mb", "0", "--query-block-mb must be positive")],
)  # fmt: skip
def test_bad_parameters_are_usage_errors(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        job.parse_args(["--embeddings", "e", "--pairs", "p", "--out", "o", flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_pca_recovers_the_axes_of_largest_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * [5.0, 2.0, 0.3, 0.2, 0.1] + [10.0, 0, 0, 0, 0]
    coords, ratio = E.pca_2d(x)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(xn.T, bias=True)))[::-1]
    assert np.allclose(coords.var(axis=0), eigenvalues[:2])
    assert np.allclose(ratio, eigenvalues[:2] / eigenvalues.sum())


class Held:
    """Stands in for a Broadcast on the driver: the executor function only reads `.value`."""

    def __init__(self, value) -> None:
        self.value = value


def test_the_executor_counts_skip_empty_input_and_match_a_brute_force():
    pairs = [(0, 3), (6, 11)]
    table = pa.table({
        "query_pin": pa.array([q for q, _ in pairs], ID), "pos_pin": pa.array([p for _, p in pairs], ID),
        "qvec": pa.array([EMB[q] for q, _ in pairs], VEC), "pvec": pa.array([EMB[p] for _, p in pairs], VEC),
    })  # fmt: skip
    block = Held(E.QueryBlock.from_arrow(table, 3))
    assert list(E.count_batches(iter([]), block, 3)) == []

    def batch(ids):
        return pa.RecordBatch.from_arrays(
            [pa.array(ids, ID), pa.array([EMB[i] for i in ids], VEC)], names=["pin_id", "vec"]
        )

    assert list(E.count_batches(iter([batch([])]), block, 3)) == []
    out = pa.Table.from_batches(
        list(E.count_batches(iter([batch([]), batch([0, 1, 2, 3, 4]), batch(list(range(5, 12)))]), block, 3))
    )
    assert out.num_rows == len(pairs), "one row per pair for the whole task"
    for row in out.to_pylist():
        rank, higher, ties, candidates = naive_rank(EMB, row["query_pin"], row["pos_pin"], EMB)
        assert (row["higher"], row["ties"], row["seen"] + 1) == (higher, ties, candidates)
