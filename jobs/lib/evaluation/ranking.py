"""Ranking the positive of each pair among the candidates (definitions of rank and ties in the
package docstring), by three kinds of score:

- cosine similarity of vectors (the embedding, or the raw features as the content-only baseline):
  the driver broadcasts one block of query vectors at a time (`rank_by_similarity`), and the
  executor kernel (`count_batches`) counts, per pair, the candidates above and level with the
  positive, so the candidates' vectors never leave the executors;
- visit counts of random walks with restart from the query (the graph-only, Pixie-style baseline,
  `rank_by_walks`), walked by jobs/lib/walks.py's runner;
- the candidate's number of boards, the same order for every query (`popularity_ranks`).

Cosine scores are pinsage_model.similarity's (float64 dot products of rows divided by max(L2 norm,
NORM_EPS), the kernel the related-pins job shares); two scores within TIE_TOLERANCE are equal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark import Broadcast, StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.lib.seeded import CANDIDATE_POOL, QUERY_BLOCK, seeded_hash
from jobs.lib.vectors import to_matrix
from jobs.lib.walks import PIN, WalkParams, build_walk_graph, run_walks
from pinsage_model.similarity import TIE_TOLERANCE, cosine_scores, normalise
from schemas.tables import PAIR_RANKS

# Scores computed at once per executor step: a [block, chunk] float64 matrix of at most 16 MB.
_CHUNK_ELEMENTS = 1 << 21
_FLOAT64_BYTES = 8
_MB = 2**20

log = logging.getLogger("pinsage.evaluation")


# ---- candidates and query blocks ----------------------------------------------------------------


def distinct_pairs(pairs: DataFrame) -> DataFrame:
    """A pair listed twice is one evaluation case: its rank does not depend on how often it is
    listed."""
    return pairs.select("query_pin", "pos_pin").distinct()


def candidate_pool(ids: DataFrame, size: int | None, seed: int) -> DataFrame:
    """(pin_id): every id, or the `size` ids with the smallest seeded hash (ties to the smaller id),
    the same set whatever the partitioning."""
    ids = ids.select("pin_id")
    if size is None:
        return ids
    order = seeded_hash(seed, CANDIDATE_POOL, "pin_id")
    return ids.orderBy(order, "pin_id").limit(size)


def blocks_for(pairs: int, dim: int, block_mb: float) -> tuple[int, int]:
    """(pairs per block, number of blocks): a block's float64 query matrix is about `block_mb`."""
    per_block = max(1, int(block_mb * _MB // (_FLOAT64_BYTES * max(dim, 1))))
    return per_block, max(1, math.ceil(pairs / per_block))


def pair_vectors(pairs: DataFrame, vectors: DataFrame, blocks: int) -> DataFrame:
    """(query_pin, pos_pin, qvec, pvec, block): each pair with both vectors, assigned by hash to one
    of `blocks` query blocks."""
    v = vectors.select("pin_id", "vec")
    query = v.select(F.col("pin_id").alias("query_pin"), F.col("vec").alias("qvec"))
    pos = v.select(F.col("pin_id").alias("pos_pin"), F.col("vec").alias("pvec"))
    block = F.pmod(seeded_hash(0, QUERY_BLOCK, "query_pin", "pos_pin"), F.lit(blocks)).cast("int")
    joined = pairs.join(query, "query_pin").join(pos, "pos_pin")
    return joined.select("query_pin", "pos_pin", "qvec", "pvec", block.alias("block"))


@dataclass(frozen=True)
class QueryBlock:
    """A block of pairs as the executors receive it: normalised query vectors [B, d] and the
    positive's score s(p) per pair [B]."""

    query: np.ndarray
    pos: np.ndarray
    q: np.ndarray
    s_pos: np.ndarray

    @classmethod
    def from_arrow(cls, table: pa.Table, dim: int) -> QueryBlock:
        def matrix(name: str) -> np.ndarray:
            return to_matrix(table.column(name).combine_chunks(), dim)

        q, p = normalise(matrix("qvec")), normalise(matrix("pvec"))
        return cls(
            query=table.column("query_pin").to_numpy().astype(np.int64),
            pos=table.column("pos_pin").to_numpy().astype(np.int64),
            q=q,
            s_pos=np.einsum("ij,ij->i", q, p),
        )

    def __len__(self) -> int:
        return len(self.query)


# ---- the executor kernel ------------------------------------------------------------------------

_COUNT_COLUMNS = ("higher", "ties", "seen")
_COUNTS = pa.schema([(n, pa.int64()) for n in ("query_pin", "pos_pin", *_COUNT_COLUMNS)])
COUNTS_DDL = ", ".join(f"{f.name} bigint" for f in _COUNTS)


def count_batches(batches: Iterator[pa.RecordBatch], block: Broadcast, dim: int) -> Iterator[pa.RecordBatch]:
    """Executor side of count_above: one row per pair of the block for the whole task, so the
    shuffle after it carries block-size rows per task, not per candidate."""
    qb: QueryBlock = block.value
    higher = np.zeros(len(qb), dtype=np.int64)
    ties = np.zeros(len(qb), dtype=np.int64)
    seen = np.zeros(len(qb), dtype=np.int64)
    chunk = max(1, _CHUNK_ELEMENTS // max(len(qb), 1))
    any_rows = False
    for batch in batches:
        if batch.num_rows == 0:
            continue
        any_rows = True
        ids = batch.column("pin_id").to_numpy(zero_copy_only=False)
        vectors = normalise(to_matrix(batch.column("vec"), dim))
        for lo in range(0, len(ids), chunk):
            cand = ids[lo : lo + chunk]
            diff = cosine_scores(qb.q, vectors[lo : lo + chunk]) - qb.s_pos[:, None]
            keep = (cand[None, :] != qb.query[:, None]) & (cand[None, :] != qb.pos[:, None])
            higher += ((diff > TIE_TOLERANCE) & keep).sum(axis=1)
            ties += ((np.abs(diff) <= TIE_TOLERANCE) & keep).sum(axis=1)
            seen += keep.sum(axis=1)
    if any_rows:
        arrays = [pa.array(a, pa.int64()) for a in (qb.query, qb.pos, higher, ties, seen)]
        yield pa.RecordBatch.from_arrays(arrays, schema=_COUNTS)


def _sum_counts(counts: DataFrame) -> DataFrame:
    return counts.groupBy("query_pin", "pos_pin").agg(*(F.sum(c).alias(c) for c in _COUNT_COLUMNS))


def count_above(candidates: DataFrame, block: Broadcast, dim: int) -> DataFrame:
    """(query_pin, pos_pin, higher, ties, seen) per pair of the broadcast QueryBlock, summed over
    `candidates` (pin_id, vec): how many candidates other than the query and the positive score
    above and level with the positive, and how many there were."""
    kernel = partial(count_batches, block=block, dim=dim)
    return _sum_counts(candidates.select("pin_id", "vec").mapInArrow(kernel, COUNTS_DDL))


def ranks_from_counts(pairs: DataFrame, counts: DataFrame, method: str) -> DataFrame:
    """PAIR_RANKS rows for `method` from count_above's rows (summed, in case a pair's block was
    scanned in parts); a pair that met no candidate ranks 1 of 1."""
    joined = distinct_pairs(pairs).join(_sum_counts(counts), ["query_pin", "pos_pin"], "left")
    higher, ties = F.coalesce("higher", F.lit(0)), F.coalesce("ties", F.lit(0))
    return pair_ranks(method, higher, ties, F.coalesce("seen", F.lit(0)) + 1, joined)


def pair_ranks(
    method: str | Column, higher: Column, ties: Column, candidates: Column, df: DataFrame
) -> DataFrame:
    """PAIR_RANKS rows of `df` (query_pin, pos_pin, ...): `method` a name, or a column of names."""
    cols = {
        "method": F.lit(method) if isinstance(method, str) else method,
        "query_pin": F.col("query_pin"),
        "pos_pin": F.col("pos_pin"),
        "rank": 1 + higher + ties,
        "higher": higher,
        "ties": ties,
        "candidates": candidates,
    }
    return df.select(*(cols[f.name].cast(f.dataType).alias(f.name) for f in PAIR_RANKS.fields))


def rank_by_similarity(
    method: str,
    vectors: DataFrame,
    dim: int,
    candidates: DataFrame,
    pairs: DataFrame,
    n_pairs: int,
    block_mb: float,
) -> DataFrame:
    """PAIR_RANKS rows by cosine similarity of `vectors` (pin_id, vec) for the distinct `pairs`,
    among `candidates` (pin_id, vec): one Spark job per block of queries, each broadcasting the
    block's query vectors and scanning every candidate once.

    The driver holds one block of query and positive vectors at a time, and the five counts of
    every pair (40 bytes a pair); the candidates' vectors never leave the executors."""
    spark = pairs.sparkSession
    sc = spark.sparkContext
    per_block, blocks = blocks_for(n_pairs, dim, block_mb)
    # Cached, not written: the pairs' vectors are small next to the candidates, and each block
    # reads them once.
    with_vectors = pair_vectors(pairs, vectors, blocks).persist(StorageLevel.MEMORY_AND_DISK)
    parts = []
    try:
        for b in range(blocks):
            sc.setJobDescription(f"{method}: rank query block {b + 1}/{blocks}")
            table = with_vectors.where(F.col("block") == b).toArrow()
            log.info(
                "%s: query block %d/%d: %d pairs (about %d a block)",
                method,
                b + 1,
                blocks,
                table.num_rows,
                per_block,
            )
            if table.num_rows == 0:
                continue
            ref = sc.broadcast(QueryBlock.from_arrow(table, dim))
            parts.append(count_above(candidates, ref, dim).toArrow())
            ref.destroy()
    finally:
        with_vectors.unpersist()
    if parts:
        counts = spark.createDataFrame(pa.concat_tables(parts))
    else:
        counts = spark.createDataFrame([], COUNTS_DDL)
    return ranks_from_counts(pairs, counts, method)


# ---- the graph and popularity baselines ---------------------------------------------------------


def graph_ranks(pairs: DataFrame, visits: DataFrame, pool: DataFrame, method: str = "graph") -> DataFrame:
    """PAIR_RANKS rows ranking candidates by walk visit count from the query (Pixie-style).

    `visits` is (query_pin, visited, count) for visited pins; every other candidate has count 0, so
    never-visited candidates rank after all visited ones and, when the positive was not visited
    either, tie with it (counted against it: such a positive ranks last)."""
    pool = pool.select("pin_id")
    pool_size = pool.agg(F.count(F.lit(1)).alias("pool_size"))
    in_pool = visits.join(pool.withColumnRenamed("pin_id", "visited"), "visited", "left_semi")
    pos_visits = visits.select(
        "query_pin", F.col("visited").alias("pos_pin"), F.col("count").alias("pos_count")
    )
    others = F.col("pool_size") - F.coalesce("q_in", F.lit(0)) - F.coalesce("p_in", F.lit(0))
    flags = (
        distinct_pairs(pairs)
        .join(pool.select(F.col("pin_id").alias("query_pin"), F.lit(1).alias("q_in")), "query_pin", "left")
        .join(pool.select(F.col("pin_id").alias("pos_pin"), F.lit(1).alias("p_in")), "pos_pin", "left")
        .join(pos_visits, ["query_pin", "pos_pin"], "left")
        .crossJoin(pool_size)
        .select(
            "query_pin",
            "pos_pin",
            F.coalesce("pos_count", F.lit(0)).alias("pos_count"),
            others.alias("others"),
        )
    )
    competing = flags.join(in_pool, "query_pin").where(
        (F.col("visited") != F.col("pos_pin")) & (F.col("visited") != F.col("query_pin"))
    )
    tallies = competing.groupBy("query_pin", "pos_pin").agg(
        F.sum((F.col("count") > F.col("pos_count")).cast("long")).alias("above"),
        F.sum((F.col("count") == F.col("pos_count")).cast("long")).alias("level"),
        F.count(F.lit(1)).alias("visited_others"),
    )
    joined = flags.join(tallies, ["query_pin", "pos_pin"], "left")
    above, level = F.coalesce("above", F.lit(0)), F.coalesce("level", F.lit(0))
    visited_others = F.coalesce("visited_others", F.lit(0))
    unvisited = F.col("pos_count") == 0
    higher = F.when(unvisited, visited_others).otherwise(above)
    ties = F.when(unvisited, F.col("others") - visited_others).otherwise(level)
    return pair_ranks(method, higher, ties, F.col("others") + 1, joined)


def same_type_visits(counts: DataFrame) -> DataFrame:
    """(query_pin, visited, count) from walks.run_walks rows of walks started at pins."""
    return counts.where(F.col("src_t") == PIN).select(
        F.col("src").alias("query_pin"), "visited", F.col("count").cast("long").alias("count")
    )


def rank_by_walks(
    pairs: DataFrame,
    edges: DataFrame,
    pool: DataFrame,
    params: WalkParams,
    walks_per_batch: int,
    work: str,
) -> DataFrame:
    """PAIR_RANKS rows by visit counts of random walks with restart from each query pin (the
    paper's Pixie baseline) over the deduplicated memberships `edges`, walked as the neighborhood
    job walks, with its work tables under `work`."""
    graph = build_walk_graph(edges, work)
    queries = pairs.select(F.lit(PIN).alias("node_t"), F.col("query_pin").alias("node")).distinct()
    counts = run_walks(graph, params, walks_per_batch, work, sources=queries, same_type=True)
    return graph_ranks(pairs, same_type_visits(counts), pool)


def popularity_ranks(
    pairs: DataFrame, edges: DataFrame, pool: DataFrame, method: str = "popularity"
) -> DataFrame:
    """PAIR_RANKS rows ranking candidates by their number of distinct boards, the same order for
    every query: how far popularity alone goes. Ties (same count) are counted against the positive.

    Per pair: higher = pool pins other than the query with more boards than the positive; ties =
    those with as many, the positive itself excluded. Only the pool's degree histogram and the
    pairs' distinct degrees meet, so nothing grows with pins x queries."""
    pool = pool.select("pin_id")
    degrees = (
        edges.select("pin_id", "board_id").distinct().groupBy("pin_id").agg(F.count(F.lit(1)).alias("deg"))
    )
    in_pool = pool.join(degrees, "pin_id", "left").select("pin_id", F.coalesce("deg", F.lit(0)).alias("deg"))
    histogram = in_pool.groupBy("deg").agg(F.count(F.lit(1)).alias("n"))
    pool_size = pool.agg(F.count(F.lit(1)).alias("pool_size"))

    def with_degree(df: DataFrame, col: str, prefix: str) -> DataFrame:
        """Adds <prefix>_d, the pin's boards (0 when it has none), and <prefix>_i, 1 when it is in
        the pool."""
        deg = degrees.select(F.col("pin_id").alias(col), F.col("deg").alias(f"{prefix}_deg"))
        member = pool.select(F.col("pin_id").alias(col), F.lit(1).alias(f"{prefix}_in"))
        df = df.join(deg, col, "left").join(member, col, "left")
        return df.select(
            *df.columns[:-2],
            F.coalesce(f"{prefix}_deg", F.lit(0)).alias(f"{prefix}_d"),
            F.coalesce(f"{prefix}_in", F.lit(0)).alias(f"{prefix}_i"),
        )

    flags = with_degree(with_degree(distinct_pairs(pairs), "query_pin", "q"), "pos_pin", "p")
    levels = flags.select(F.col("p_d").alias("d")).distinct()
    counted = (
        levels.join(histogram, histogram["deg"] >= levels["d"])
        .groupBy("d")
        .agg(
            F.sum(F.when(F.col("deg") > F.col("d"), F.col("n")).otherwise(0)).alias("more"),
            F.sum(F.when(F.col("deg") == F.col("d"), F.col("n")).otherwise(0)).alias("same"),
        )
    )
    joined = flags.join(counted, flags["p_d"] == counted["d"], "left").crossJoin(pool_size)
    more, same = F.coalesce("more", F.lit(0)), F.coalesce("same", F.lit(0))
    q_in = F.col("q_i") == 1
    higher = more - F.when(q_in & (F.col("q_d") > F.col("p_d")), 1).otherwise(0)
    ties = same - F.col("p_i") - F.when(q_in & (F.col("q_d") == F.col("p_d")), 1).otherwise(0)
    return pair_ranks(method, higher, ties, F.col("pool_size") - F.col("q_i") - F.col("p_i") + 1, joined)
