"""Offline evaluation of pin embeddings, as in the PinSage paper (section 4.2 and Figure 4): where the
positive of each (query, positive) pair ranks among the candidates, and how spread out the embedding
space is.

Ranks. For a pair (q, p) and a candidate pool S (every pin with an embedding, or a seeded sample of
them), the candidates are S without q and p, plus p itself. With s(c) the score of candidate c for
q (cosine similarity, or a walk visit count for the graph baseline):

    higher = #{c != p : s(c) > s(p)},   ties = #{c != p : s(c) = s(p)},   rank = 1 + higher + ties

Ties count against the positive (the pessimistic rank), so a model that scores everything alike
gets the worst rank rather than the best; `higher` and `ties` are kept per pair, so the optimistic
(1 + higher) and expected (1 + higher + ties / 2) ranks can be derived from the output. Cosine
scores are computed in float64 from vectors divided by max(||v||, 1e-12) (a zero vector scores 0
against everything); two scores within TIE_TOLERANCE are equal, so a candidate that carries the
positive's own vector ties with it whatever order the floating-point sums ran in.

Metrics over the distinct pairs: hit-rate@k = share of pairs with rank <= k, MRR = mean(1 / rank),
scaled MRR = mean(1 / ceil(rank / 100)) (the paper's MRR, whose candidate pool has billions of pins).

Here are the pure transforms (DataFrame -> DataFrame), the executor kernel they map with, the input
checks, and the numpy / matplotlib helpers the driver applies to bounded samples. The loop over
query blocks lives in jobs/evaluate.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark import Broadcast
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.lib.io import InputError
from jobs.lib.seeded import CANDIDATE_POOL, MAP_SAMPLE, PAIR_LEFT, PAIR_RIGHT, QUERY_BLOCK, seeded_hash
from jobs.lib.vectors import to_matrix
from schemas.tables import LABEL_ACCEPTED_TYPES, LABELS, PAIR_RANKS, accepted

TIE_TOLERANCE = 1e-10
NORM_EPS = 1e-12
EXAMPLES = 3
# Scores computed at once per executor step: a [block, chunk] float64 matrix of at most 16 MB.
_CHUNK_ELEMENTS = 1 << 21


# ---- input checks ------------------------------------------------------------------------------


def conform_labels(df: DataFrame) -> DataFrame:
    """labels as (pin_id BIGINT, label STRING); INT / BIGINT labels are cast to STRING."""
    present = {f.name: f.dataType for f in df.schema.fields}
    for field in LABELS.fields:
        if field.name not in present:
            found = ", ".join(present) or "none"
            raise InputError("labels", field.name, f"missing column (found: {found})")
    allowed = {"pin_id": accepted(LABELS["pin_id"]), "label": LABEL_ACCEPTED_TYPES}
    for name, types in allowed.items():
        if present[name] not in types:
            want = " or ".join(t.simpleString() for t in types)
            raise InputError("labels", name, f"has type {present[name].simpleString()}, expected {want}")
    return df.select(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in LABELS.fields))


def vector_width(df: DataFrame, column: str) -> int:
    """The length of the first non-NULL vector (0 when there is none); the node checks then hold
    every other row to it."""
    row = df.where(F.col(column).isNotNull()).select(F.size(column).alias("n")).first()
    return int(row["n"]) if row else 0


@dataclass(frozen=True)
class PairStats:
    rows: int
    distinct: int


def check_pairs(pairs: DataFrame, known: DataFrame, known_table: str) -> PairStats:
    """Pairs non-empty, ids non-NULL, query != positive, and every pin in `known` (pin_id, unique):
    one pass, plus a look-up of examples only when something is wrong."""
    ids = known.select("pin_id")
    flagged = pairs.join(
        ids.select(F.col("pin_id").alias("query_pin"), F.lit(1).alias("query_known")), "query_pin", "left"
    ).join(ids.select(F.col("pin_id").alias("pos_pin"), F.lit(1).alias("pos_known")), "pos_pin", "left")
    count = lambda cond: F.sum(cond.cast("long"))  # noqa: E731

    def unknown(column: str) -> Column:
        return F.col(column).isNotNull() & F.col(column.replace("_pin", "_known")).isNull()

    stats = flagged.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct("query_pin", "pos_pin").alias("distinct"),
        count(F.col("query_pin").isNull()).alias("null_query_pin"),
        count(F.col("pos_pin").isNull()).alias("null_pos_pin"),
        count(F.col("query_pin") == F.col("pos_pin")).alias("self"),
        count(unknown("query_pin")).alias("unknown_query_pin"),
        count(unknown("pos_pin")).alias("unknown_pos_pin"),
    ).collect()[0]
    if not stats["rows"]:
        raise InputError("pairs", None, "has no rows")

    def examples(cond: Column, column: str) -> str:
        shown = sorted({r[column] for r in flagged.where(cond).select(column).limit(50).collect()})
        return f"(e.g. {column} {', '.join(map(str, shown[:EXAMPLES]))})"

    for column in ("query_pin", "pos_pin"):
        if stats[f"null_{column}"]:
            raise InputError("pairs", column, f"{stats[f'null_{column}']} rows have a NULL id")
    if stats["self"]:
        shown = examples(F.col("query_pin") == F.col("pos_pin"), "query_pin")
        raise InputError(
            "pairs", "pos_pin", f"{stats['self']} rows name the query pin itself as the positive {shown}"
        )
    for column in ("query_pin", "pos_pin"):
        if stats[f"unknown_{column}"]:
            raise InputError(
                "pairs", column,
                f"{stats[f'unknown_{column}']} rows name a pin that is not in {known_table} "
                + examples(unknown(column), column),
            )  # fmt: skip
    return PairStats(int(stats["rows"]), int(stats["distinct"]))


def check_covered(ids: DataFrame, table: DataFrame, table_name: str, why: str) -> None:
    """Every pin_id of `ids` has a row in `table` (pin_id)."""
    missing = ids.join(table.select("pin_id"), "pin_id", "left_anti")
    count = missing.count()
    if count:
        shown = [r["pin_id"] for r in missing.orderBy("pin_id").limit(EXAMPLES).collect()]
        raise InputError(
            table_name, "pin_id", f"{count} {why} have no row (e.g. pin_id {', '.join(map(str, shown))})"
        )


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


def pair_vectors(pairs: DataFrame, vectors: DataFrame, blocks: int) -> DataFrame:
    """(query_pin, pos_pin, qvec, pvec, block): each pair with both vectors, assigned by hash to one
    of `blocks` query blocks."""
    v = vectors.select("pin_id", "vec")
    return (
        pairs.join(v.withColumnRenamed("pin_id", "query_pin").withColumnRenamed("vec", "qvec"), "query_pin")
        .join(v.withColumnRenamed("pin_id", "pos_pin").withColumnRenamed("vec", "pvec"), "pos_pin")
        .select(
            "query_pin", "pos_pin", "qvec", "pvec",
            F.pmod(seeded_hash(0, QUERY_BLOCK, "query_pin", "pos_pin"), F.lit(blocks))
            .cast("int")
            .alias("block"),
        )
    )  # fmt: skip


def normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows divided by max(L2 norm, NORM_EPS), in float64."""
    m = np.asarray(matrix, dtype=np.float64)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), NORM_EPS)


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


_COUNTS = pa.schema([(n, pa.int64()) for n in ("query_pin", "pos_pin", "higher", "ties", "seen")])
COUNTS_DDL = "query_pin bigint, pos_pin bigint, higher bigint, ties bigint, seen bigint"


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
            diff = qb.q @ vectors[lo : lo + chunk].T - qb.s_pos[:, None]
            keep = (cand[None, :] != qb.query[:, None]) & (cand[None, :] != qb.pos[:, None])
            higher += ((diff > TIE_TOLERANCE) & keep).sum(axis=1)
            ties += ((np.abs(diff) <= TIE_TOLERANCE) & keep).sum(axis=1)
            seen += keep.sum(axis=1)
    if any_rows:
        arrays = [pa.array(a, pa.int64()) for a in (qb.query, qb.pos, higher, ties, seen)]
        yield pa.RecordBatch.from_arrays(arrays, schema=_COUNTS)


def count_above(candidates: DataFrame, block: Broadcast, dim: int) -> DataFrame:
    """(query_pin, pos_pin, higher, ties, seen) per pair of the broadcast QueryBlock, summed over
    `candidates` (pin_id, vec): how many candidates other than the query and the positive score
    above and level with the positive, and how many there were."""
    partial_counts = candidates.select("pin_id", "vec").mapInArrow(
        partial(count_batches, block=block, dim=dim), COUNTS_DDL
    )
    return partial_counts.groupBy("query_pin", "pos_pin").agg(
        *(F.sum(c).alias(c) for c in ("higher", "ties", "seen"))
    )


def ranks_from_counts(pairs: DataFrame, counts: DataFrame, method: str) -> DataFrame:
    """PAIR_RANKS rows for `method` from count_above's rows (summed, in case a pair's block was
    scanned in parts); a pair that met no candidate ranks 1 of 1."""
    summed = counts.groupBy("query_pin", "pos_pin").agg(
        *(F.sum(c).alias(c) for c in ("higher", "ties", "seen"))
    )
    joined = distinct_pairs(pairs).join(summed, ["query_pin", "pos_pin"], "left")
    higher, ties = F.coalesce("higher", F.lit(0)), F.coalesce("ties", F.lit(0))
    return _pair_ranks(method, higher, ties, F.coalesce("seen", F.lit(0)) + 1, joined)


def _pair_ranks(method: str, higher: Column, ties: Column, candidates: Column, df: DataFrame) -> DataFrame:
    cols = {
        "method": F.lit(method),
        "query_pin": F.col("query_pin"),
        "pos_pin": F.col("pos_pin"),
        "rank": 1 + higher + ties,
        "higher": higher,
        "ties": ties,
        "candidates": candidates,
    }
    return df.select(*(cols[f.name].cast(f.dataType).alias(f.name) for f in PAIR_RANKS.fields))


def graph_ranks(pairs: DataFrame, visits: DataFrame, pool: DataFrame, method: str = "graph") -> DataFrame:
    """PAIR_RANKS rows ranking candidates by walk visit count from the query (Pixie-style).

    `visits` is (query_pin, visited, count) for visited pins; every other candidate has count 0, so
    never-visited candidates rank after all visited ones and, when the positive was not visited
    either, tie with it (counted against it: such a positive ranks last)."""
    pool = pool.select("pin_id")
    pool_size = pool.agg(F.count(F.lit(1)).alias("pool_size"))
    in_pool = visits.join(pool.withColumnRenamed("pin_id", "visited"), "visited", "left_semi")
    flags = (
        distinct_pairs(pairs)
        .join(pool.select(F.col("pin_id").alias("query_pin"), F.lit(1).alias("q_in")), "query_pin", "left")
        .join(pool.select(F.col("pin_id").alias("pos_pin"), F.lit(1).alias("p_in")), "pos_pin", "left")
        .join(
            visits.select("query_pin", F.col("visited").alias("pos_pin"), F.col("count").alias("pos_count")),
            ["query_pin", "pos_pin"], "left",
        )
        .crossJoin(pool_size)
        .select(
            "query_pin", "pos_pin", F.coalesce("pos_count", F.lit(0)).alias("pos_count"),
            (F.col("pool_size") - F.coalesce("q_in", F.lit(0)) - F.coalesce("p_in", F.lit(0)))
            .alias("others"),
        )
    )  # fmt: skip
    others = flags.join(in_pool, "query_pin").where(
        (F.col("visited") != F.col("pos_pin")) & (F.col("visited") != F.col("query_pin"))
    )
    tallies = others.groupBy("query_pin", "pos_pin").agg(
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
    return _pair_ranks(method, higher, ties, F.col("others") + 1, joined)


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
    return _pair_ranks(method, higher, ties, F.col("pool_size") - F.col("q_i") - F.col("p_i") + 1, joined)


def same_type_visits(counts: DataFrame, pin_type: int) -> DataFrame:
    """(query_pin, visited, count) from walks.visit_counts rows of walks started at pins."""
    return counts.where(F.col("src_t") == pin_type).select(
        F.col("src").alias("query_pin"), "visited", F.col("count").cast("long").alias("count")
    )


# ---- metrics -----------------------------------------------------------------------------------


def metric_names(ks: Sequence[int]) -> list[str]:
    return [f"hit@{k}" for k in ks] + ["mrr", "scaled_mrr"]


def metrics(ranks: DataFrame, ks: Sequence[int]) -> DataFrame:
    """One row per method: pairs, mean_candidates, hit@k for each k, mrr, scaled_mrr."""
    rank = F.col("rank").cast("double")
    return ranks.groupBy("method").agg(
        F.count(F.lit(1)).alias("pairs"),
        F.avg("candidates").alias("mean_candidates"),
        *(F.avg((F.col("rank") <= k).cast("double")).alias(f"hit@{k}") for k in ks),
        F.avg(1.0 / rank).alias("mrr"),
        F.avg(1.0 / F.ceil(rank / 100.0)).alias("scaled_mrr"),
    )


def paired_hits(ranks: DataFrame, ks: Sequence[int], reference: str = "embedding") -> DataFrame:
    """Per other method and k, the pairs only one side ranks within the top k: one row (method,
    k, reference_only, method_only). The pairs both or neither hit carry no evidence of which
    method is better; these two counts are what a paired (McNemar) test weighs."""
    ref = ranks.where(F.col("method") == reference).select("query_pin", "pos_pin", F.col("rank").alias("ref"))
    other = ranks.where(F.col("method") != reference).select("method", "query_pin", "pos_pin", "rank")
    both = other.join(ref, ["query_pin", "pos_pin"])
    per_k = [
        F.struct(
            F.lit(k).alias("k"),
            F.sum(((F.col("ref") <= k) & (F.col("rank") > k)).cast("long")).alias("reference_only"),
            F.sum(((F.col("rank") <= k) & (F.col("ref") > k)).cast("long")).alias("method_only"),
        )
        for k in ks
    ]
    return both.groupBy("method").agg(F.array(*per_k).alias("k")).select("method", F.inline("k"))


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test (McNemar's exact test) of `wins` against `losses` discordant
    pairs: 2 P(X <= min) for X ~ Binomial(wins + losses, 1/2), at most 1; 1.0 when there are none."""
    n, low = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    log_half_n = n * math.log(0.5)
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
               for i in range(low + 1))  # fmt: skip
    return min(1.0, 2.0 * tail)


def format_p(p: float) -> str:
    """A p-value for reports: two significant digits; one that underflowed to 0 as '< 1e-300'."""
    return f"{p:.2g}" if p > 0 else "< 1e-300"


# ---- embedding-space health (Figure 4) ----------------------------------------------------------


def random_pairs(ids: DataFrame, count: int, seed: int) -> DataFrame:
    """(pin_a, pin_b): up to `count` seeded random pairs of distinct pins. Two independent seeded
    orders of the ids each give their first `count` pins; the i-th of one is paired with the i-th of
    the other, and the few pairs of a pin with itself are dropped."""

    def first(purpose: int, name: str) -> DataFrame:
        h = seeded_hash(seed, purpose, "pin_id")
        top = ids.select(F.col("pin_id").alias(name), h.alias("h")).orderBy("h", name).limit(count)
        return top.select(name, F.row_number().over(Window.orderBy("h", name)).alias("i"))

    joined = first(PAIR_LEFT, "pin_a").join(first(PAIR_RIGHT, "pin_b"), "i")
    return joined.where(F.col("pin_a") != F.col("pin_b")).select("pin_a", "pin_b")


def _dot(a: Column, b: Column) -> Column:
    zero = F.lit(0.0).cast("double")
    return F.aggregate(F.zip_with(a, b, lambda x, y: x.cast("double") * y), zero, lambda s, v: s + v)


def pair_cosines(pairs: DataFrame, vectors: DataFrame) -> DataFrame:
    """(pin_a, pin_b, cosine) with the norms floored at NORM_EPS as in the ranking."""
    v = vectors.select("pin_id", "vec")
    a = v.select(F.col("pin_id").alias("pin_a"), F.col("vec").alias("va"))
    b = v.select(F.col("pin_id").alias("pin_b"), F.col("vec").alias("vb"))
    norm = lambda c: F.greatest(F.sqrt(_dot(F.col(c), F.col(c))), F.lit(NORM_EPS))  # noqa: E731
    cosine = _dot(F.col("va"), F.col("vb")) / (norm("va") * norm("vb"))
    return pairs.join(a, "pin_a").join(b, "pin_b").select("pin_a", "pin_b", cosine.alias("cosine"))


def similarity_stats(cosines: DataFrame) -> DataFrame:
    """One row: pairs, mean, std, kurtosis (excess, population: m4 / m2^2 - 3), min, max."""
    c = F.col("cosine")
    return cosines.agg(
        F.count(c).alias("pairs"), F.avg(c).alias("mean"), F.stddev_pop(c).alias("std"),
        F.kurtosis(c).alias("kurtosis"), F.min(c).alias("min"), F.max(c).alias("max"),
    )  # fmt: skip


def similarity_histogram(cosines: DataFrame, bins: int) -> DataFrame:
    """(bin, count) over `bins` equal bins of [-1, 1]; cosine 1 falls in the last bin."""
    b = F.floor((F.col("cosine") + 1.0) / 2.0 * bins).cast("int")
    b = F.least(F.greatest(b, F.lit(0)), F.lit(bins - 1))
    return cosines.groupBy(b.alias("bin")).agg(F.count(F.lit(1)).alias("count"))


def labelled_sample(vectors: DataFrame, labels: DataFrame, size: int, seed: int) -> DataFrame:
    """(pin_id, label, vec) for up to `size` labelled pins, a seeded sample."""
    joined = vectors.select("pin_id", "vec").join(labels, "pin_id")
    return (
        joined.orderBy(seeded_hash(seed, MAP_SAMPLE, "pin_id"), "pin_id")
        .limit(size)
        .select("pin_id", "label", "vec")
    )


def pca_2d(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([n, 2] coordinates, [2] explained variance ratios) of the normalised, centred rows on their
    first two principal axes (numpy SVD)."""
    x = normalise(matrix)
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    coords = np.zeros((len(x), 2))
    axes = min(2, vt.shape[0])
    coords[:, :axes] = x @ vt[:axes].T
    var = s**2
    ratio = np.zeros(2)
    ratio[:axes] = var[:axes] / var.sum() if var.sum() > 0 else 0.0
    return coords, ratio


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas: PNG without a display or pyplot's global state
    return fig


def plot_histograms(panels: dict[str, tuple[np.ndarray, dict]], path: str) -> None:
    """One bar chart per vector table of its random-pair cosine histogram over [-1, 1] (bin counts),
    annotated with the summary statistics."""
    fig = _figure(7, 3.2 * len(panels))
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
    for ax, (name, (counts, stats)) in zip(axes, panels.items(), strict=True):
        bins = len(counts)
        edges = np.linspace(-1.0, 1.0, bins + 1)
        ax.bar(edges[:-1], counts / max(counts.sum(), 1), width=2.0 / bins, align="edge", color="#4c72b0")
        ax.set_xlim(-1, 1)
        ax.set_ylabel("share of pairs")
        ax.set_title(f"{name}: cosine similarity of random pairs")
        shown = [(k, stats.get(k)) for k in ("pairs", "mean", "std", "kurtosis") if stats.get(k) is not None]
        text = "\n".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.3f}" for k, v in shown)
        text = text.replace("kurtosis", "excess kurtosis")
        ax.text(0.02, 0.95, text, transform=ax.transAxes, va="top", family="monospace", fontsize=9)
    axes[-1].set_xlabel("cosine similarity")
    fig.tight_layout()
    fig.savefig(path, format="png")


# tab10 without its grey, which marks the labels beyond the most frequent ones.
_COLOURS = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9"]


def plot_map(coords: np.ndarray, labels: Sequence[str], ratio: np.ndarray, path: str) -> None:
    """Scatter of the 2-D map; the most frequent labels get a colour each, the rest are grey."""
    top = len(_COLOURS)
    labels = np.asarray(labels, dtype=object)
    names, freq = np.unique(labels.astype(str), return_counts=True)
    shown = [str(n) for n in names[np.argsort(-freq, kind="stable")][:top]]
    fig = _figure(7, 6)
    ax = fig.subplots()
    rest = ~np.isin(labels.astype(str), shown)
    if rest.any():
        ax.scatter(coords[rest, 0], coords[rest, 1], s=6, c="#bbbbbb", label="other", alpha=0.6)
    for colour, name in zip(_COLOURS, shown, strict=False):
        mask = labels.astype(str) == name
        ax.scatter(coords[mask, 0], coords[mask, 1], s=8, c=colour, label=name, alpha=0.8)
    ax.set_xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
    ax.set_title(f"PCA of {len(coords):,} normalised embeddings by label")
    ax.legend(fontsize=8, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")


def blocks_for(pairs: int, dim: int, block_mb: float) -> tuple[int, int]:
    """(pairs per block, number of blocks): a block's float64 query matrix is about `block_mb`."""
    per_block = max(1, int(block_mb * 2**20 // (8 * max(dim, 1))))
    return per_block, max(1, math.ceil(pairs / per_block))
