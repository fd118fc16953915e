"""jobs/lib/evaluation/ranking.py: exact ranks against a numpy brute force (ties, candidate samples,
query blocks), the executor kernel on its own, and the graph and popularity baselines on hand-built
rows, with the walk distribution they rank by checked against the exact one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from jobs.lib.evaluation.ranking import (
    QueryBlock,
    blocks_for,
    candidate_pool,
    count_batches,
    distinct_pairs,
    graph_ranks,
    pair_vectors,
    popularity_ranks,
    rank_by_similarity,
)
from jobs.lib.walks import (
    BOARD,
    PIN,
    WalkParams,
    buckets,
    node_stats,
    start_walkers,
    step,
    undirected,
    visit_counts,
)

VEC = pa.list_(pa.float32())
ID = pa.int64()

# Pins 3, 7 and 8 point the same way (7 is a copy of 3, 8 is 2 x 3, exact in floating point), so a
# pair whose positive is one of them meets ties.
EMB = {
    0: [1.0, 0.0, 0.0],
    1: [0.9, 0.1, 0.0],
    2: [0.0, 1.0, 0.0],
    3: [0.6, 0.8, 0.0],
    4: [0.3, 0.3, 0.9],
    5: [-1.0, 0.2, 0.1],
    6: [0.5, 0.5, 0.5],
    7: [0.6, 0.8, 0.0],
    8: [1.2, 1.6, 0.0],
    9: [0.1, -0.7, 0.4],
    10: [0.2, 0.9, -0.3],
    11: [0.7, 0.2, 0.6],
}
PAIRS = [(0, 1), (0, 3), (2, 10), (5, 9), (6, 11), (3, 7), (4, 6), (0, 1), (9, 5)]
# Pins 0-4 hang together through boards 100 and 101; 3 and 4 only through board 102.
EDGES = [(0, 100), (1, 100), (1, 101), (2, 101), (3, 102), (4, 102)]
# 96 bytes a block = 4 pairs of 3-dim float64 queries: the 8 distinct pairs run in 2 blocks.
TWO_BLOCKS_MB = 96 / 2**20


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


def rank(spark, candidates_ids=None, block_mb=TWO_BLOCKS_MB):
    vectors = vectors_df(spark, EMB)
    candidates = vectors if candidates_ids is None else vectors.where(vectors.pin_id.isin(candidates_ids))
    pairs = distinct_pairs(pairs_df(spark, PAIRS))
    return rank_by_similarity("embedding", vectors, 3, candidates, pairs, len(set(PAIRS)), block_mb)


def test_ranks_match_a_brute_force_with_ties_counted_against_the_positive(spark):
    assert blocks_for(len(set(PAIRS)), 3, TWO_BLOCKS_MB) == (4, 2)
    blocks = pair_vectors(pairs_df(spark, list(set(PAIRS))), vectors_df(spark, EMB), 2).select("block")
    assert {r.block for r in blocks.collect()} == {0, 1}, "both query blocks must hold pairs"
    got = ranks_by_pair(rank(spark))
    expected = {(q, p): naive_rank(EMB, q, p, EMB) for q, p in set(PAIRS)}
    assert got == expected
    assert expected[(0, 3)][2] == 2 and expected[(3, 7)][2] == 1, "the tie cases must be exercised"


def test_a_seeded_candidate_sample_is_stable_and_ranks_match_a_brute_force_over_it(spark):
    ids = vectors_df(spark, EMB).select("pin_id")
    pool = sorted(r.pin_id for r in candidate_pool(ids, 5, seed=3).collect())
    assert len(pool) == 5 and set(pool) <= set(EMB)
    assert sorted(r.pin_id for r in candidate_pool(ids.repartition(3), 5, seed=3).collect()) == pool
    assert sorted(r.pin_id for r in candidate_pool(ids, 5, seed=4).collect()) != pool, "the seed must matter"
    assert sorted(r.pin_id for r in candidate_pool(ids, None, seed=3).collect()) == sorted(EMB)
    # The positive is a candidate even when the sample left it out; the query never is.
    assert any(p not in pool for _, p in PAIRS) and any(q in pool for q, _ in PAIRS)
    got = ranks_by_pair(rank(spark, pool, block_mb=1.0))
    expected = {(q, p): naive_rank(EMB, q, p, pool) for q, p in set(PAIRS)}
    assert got == expected


class Held:
    """Stands in for a Broadcast on the driver: the executor function only reads `.value`."""

    def __init__(self, value) -> None:
        self.value = value


def test_the_executor_counts_skip_empty_input_and_match_a_brute_force():
    pairs = [(0, 3), (6, 11)]
    table = pa.table(
        {
            "query_pin": pa.array([q for q, _ in pairs], ID),
            "pos_pin": pa.array([p for _, p in pairs], ID),
            "qvec": pa.array([EMB[q] for q, _ in pairs], VEC),
            "pvec": pa.array([EMB[p] for _, p in pairs], VEC),
        }
    )
    block = Held(QueryBlock.from_arrow(table, 3))
    assert list(count_batches(iter([]), block, 3)) == []

    def batch(ids):
        return pa.RecordBatch.from_arrays(
            [pa.array(ids, ID), pa.array([EMB[i] for i in ids], VEC)], names=["pin_id", "vec"]
        )

    assert list(count_batches(iter([batch([])]), block, 3)) == []
    batches = [batch([]), batch([0, 1, 2, 3, 4]), batch(list(range(5, 12)))]
    out = pa.Table.from_batches(list(count_batches(iter(batches), block, 3)))
    assert out.num_rows == len(pairs), "one row per pair for the whole task"
    for row in out.to_pylist():
        _, higher, ties, candidates = naive_rank(EMB, row["query_pin"], row["pos_pin"], EMB)
        assert (row["higher"], row["ties"], row["seen"] + 1) == (higher, ties, candidates)


def test_graph_ranks_put_unvisited_candidates_after_visited_ones(spark):
    visits = spark.createDataFrame(
        [(0, 1, 5), (0, 2, 5), (0, 4, 2)], "query_pin bigint, visited bigint, count bigint"
    )
    pool = spark.createDataFrame([(i,) for i in range(6)], "pin_id bigint")
    pairs = pairs_df(spark, [(0, 1), (0, 4), (0, 3), (5, 2)])
    got = ranks_by_pair(graph_ranks(pairs, visits, pool))
    assert got[(0, 1)] == (2, 0, 1, 5)  # pin 2 has as many visits: a tie, counted against it
    assert got[(0, 4)] == (3, 2, 0, 5)
    assert got[(0, 3)] == (5, 3, 1, 5)  # never visited: after 1, 2, 4, and level with unvisited 5
    assert got[(5, 2)] == (5, 0, 4, 5)  # a query with no walks at all: every candidate ties


def test_popularity_ranks_order_candidates_by_their_boards(spark):
    # Boards per pin: 0 -> 3 (one membership listed twice), 1 -> 2, 2 -> 2, 3 -> 1, 4 -> none,
    # 5 -> 4; pin 6 has 5 boards but is not a candidate.
    listed = [(0, 10), (0, 10), (0, 11), (0, 12), (1, 10), (1, 11), (2, 12), (2, 13), (3, 10)]
    listed += [(5, b) for b in (10, 11, 12, 13)] + [(6, b) for b in (10, 11, 12, 13, 14)]
    edges = spark.createDataFrame(listed, "pin_id bigint, board_id bigint")
    pool = spark.createDataFrame([(i,) for i in range(6)], "pin_id bigint")
    pairs = pairs_df(spark, [(0, 1), (5, 4), (6, 3), (2, 6)])
    got = ranks_by_pair(popularity_ranks(pairs, edges, pool))
    assert got[(0, 1)] == (3, 1, 1, 5)  # pin 5 above, pin 2 level (a tie, against it); query 0 skipped
    assert got[(5, 4)] == (5, 4, 0, 5)  # no boards: after every other candidate
    assert got[(6, 3)] == (5, 4, 0, 6)  # a query outside the pool takes no candidate's place
    assert got[(2, 6)] == (1, 0, 0, 6)  # a positive outside the pool is ranked against the pool


def exact_same_type_visits(edges, source: int, walks: int, length: int, restart: float) -> dict[int, float]:
    """Expected visits of pins other than `source` from pin `source`, by powers of the transition
    matrix of the walk with restart."""
    nodes = sorted({("pin", p) for p, _ in edges} | {("board", b) for _, b in edges})
    index = {n: i for i, n in enumerate(nodes)}
    transition = np.zeros((len(nodes), len(nodes)))
    for p, b in edges:
        transition[index[("pin", p)], index[("board", b)]] = 1.0
        transition[index[("board", b)], index[("pin", p)]] = 1.0
    transition /= transition.sum(axis=1, keepdims=True)
    with_restart = (1 - restart) * transition
    with_restart[:, index[("pin", source)]] += restart
    dist, total = np.eye(len(nodes))[index[("pin", source)]], np.zeros(len(nodes))
    for _ in range(length):
        dist = dist @ with_restart
        total += dist
    return {n[1]: walks * total[index[n]] for n in nodes if n[0] == "pin" and n[1] != source}


def test_same_type_walk_visits_match_the_exact_walk_distribution(spark):
    walks, length, restart = 2000, 4, 0.3
    edges = spark.createDataFrame(
        [(p, b, 1.0) for p, b in EDGES], "pin_id bigint, board_id bigint, weight double"
    )
    adjacency = undirected(edges)
    stats = node_stats(adjacency).cache()
    table = buckets(adjacency, stats).cache()
    source = stats.where((stats.node_t == PIN) & (stats.node == 1))
    walkers = start_walkers(source, range(walks))
    params = WalkParams(walks_per_node=walks, walk_length=length, restart_prob=restart, seed=2)
    for s in range(1, length + 1):
        walkers = step(walkers, table, params, s, same_type=True)
    got = {r.visited: r["count"] for r in visit_counts(walkers).collect()}
    expected = exact_same_type_visits(EDGES, 1, walks, length, restart)
    assert set(got) <= set(expected) and 1 not in got
    total = sum(expected.values())
    for pin, count in expected.items():
        assert abs(got.get(pin, 0) / total - count / total) < 0.03, (pin, got, expected)
    # The default still records the other type only, as the neighborhood job expects.
    plain = step(start_walkers(source, range(5)), table, params, 1)
    assert {r.visited for r in visit_counts(plain).collect()} <= {100, 101}
    assert BOARD != PIN
