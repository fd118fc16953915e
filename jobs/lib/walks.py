"""Random walks with restart over the pin/board graph, as DataFrame joins.

Nodes are keyed by (type, id): type 0 is a pin, 1 a board, since the two id spaces may overlap.

How a step picks a neighbor without replicating a hub's adjacency per walker: every node's
neighbors, sorted by id, split [0, 1) into intervals of length weight / total weight. The range is
cut into B = degree equal buckets, and each neighbor is listed once per bucket its interval
touches, so a node has at most 2 * degree bucket rows. A walker draws u in [0, 1), joins on
(node, floor(u * B)) and keeps the one row whose interval holds u: an equi-join that meets about two
rows per walker however large the node is, and an exact draw proportional to edge weight.

Every random number is a hash of (seed, source, walk index, step, purpose), never of partition order,
so the walks, and the visit counts, are the same whatever the partitioning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.lib.io import append_delta, read_delta, write_and_reload
from jobs.lib.seeded import WALK_MOVE, WALK_RESTART, uniform

PIN, BOARD = 0, 1

log = logging.getLogger("pinsage.walks")


@dataclass(frozen=True)
class WalkParams:
    walks_per_node: int = 100
    walk_length: int = 8
    restart_prob: float = 0.3
    top_t: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("walks_per_node", "walk_length", "top_t"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.restart_prob < 1.0:
            raise ValueError(f"restart_prob must be in [0, 1), got {self.restart_prob}")


def memberships(edges: DataFrame) -> DataFrame:
    """(pin_id, board_id, weight) as the walk's graph: rows with a NULL id dropped, and a membership
    listed twice kept once, with the largest weight listed."""
    known = edges.where(F.col("pin_id").isNotNull() & F.col("board_id").isNotNull())
    return known.groupBy("pin_id", "board_id").agg(F.max("weight").alias("weight"))


def undirected(edges: DataFrame) -> DataFrame:
    """(node_t, node, nbr_t, nbr, weight) in both directions from deduplicated memberships."""
    pins_side, boards_side = (
        edges.select(
            F.lit(node_t).alias("node_t"),
            F.col(node).alias("node"),
            F.lit(1 - node_t).alias("nbr_t"),
            F.col(nbr).alias("nbr"),
            "weight",
        )
        for node_t, node, nbr in ((PIN, "pin_id", "board_id"), (BOARD, "board_id", "pin_id"))
    )
    return pins_side.unionByName(boards_side)


def node_stats(adjacency: DataFrame) -> DataFrame:
    """(node_t, node, deg, total) for every node with at least one edge."""
    return adjacency.groupBy("node_t", "node").agg(
        F.count(F.lit(1)).alias("deg"), F.sum("weight").alias("total")
    )


def buckets(adjacency: DataFrame, stats: DataFrame) -> DataFrame:
    """(node_t, node, bucket, nbr, lo, hi, nbr_deg): the bucketed inverse-CDF table (module doc)."""
    order = Window.partitionBy("node_t", "node").orderBy("nbr")
    cum = adjacency.withColumn("cum", F.sum("weight").over(order.rowsBetween(Window.unboundedPreceding, 0)))
    cum = cum.withColumn("prev", F.coalesce(F.lag("cum").over(order), F.lit(0.0)))
    cum = cum.join(stats, ["node_t", "node"])
    last = F.row_number().over(order.orderBy(F.desc("nbr"))) == 1
    lo = F.col("prev") / F.col("total")
    hi = F.when(last, F.lit(2.0)).otherwise(F.col("cum") / F.col("total"))
    first_bucket = F.floor(lo * F.col("deg")).cast("int")
    last_bucket = F.least(F.floor(F.least(hi, F.lit(1.0)) * F.col("deg")).cast("int"), F.col("deg") - 1)
    intervals = cum.select(
        "node_t",
        "node",
        "nbr_t",
        "nbr",
        "deg",
        lo.alias("lo"),
        hi.alias("hi"),
        first_bucket.alias("b0"),
        last_bucket.alias("b1"),
    )
    stats_nbr = stats.select(
        F.col("node_t").alias("nbr_t"), F.col("node").alias("nbr"), F.col("deg").alias("nbr_deg")
    )
    return intervals.join(stats_nbr, ["nbr_t", "nbr"]).select(
        "node_t",
        "node",
        F.explode(F.sequence("b0", F.greatest("b0", "b1"))).alias("bucket"),
        "nbr",
        "lo",
        "hi",
        "nbr_deg",
    )


def start_walkers(stats: DataFrame, walks: range) -> DataFrame:
    """One row per (source, walk index): every node with edges starts `len(walks)` walks."""
    walk_ids = F.explode(F.sequence(F.lit(walks.start), F.lit(walks.stop - 1))).alias("walk")
    return stats.select(
        F.col("node_t").alias("src_t"),
        F.col("node").alias("src"),
        F.col("deg").alias("src_deg"),
        walk_ids,
        F.col("node_t").alias("cur_t"),
        F.col("node").alias("cur"),
        F.col("deg").alias("cur_deg"),
        F.array().cast("array<bigint>").alias("visits"),
    )


def step(
    walkers: DataFrame, table: DataFrame, params: WalkParams, s: int, same_type: bool = False
) -> DataFrame:
    """Advance every walker one step and append the node it lands on to `visits` when that node is
    of the other type than its source. With `same_type`, record instead the nodes of the source's
    own type other than the source itself: the pin-to-pin visit counts of a Pixie-style
    recommender, where the source is the query and never its own answer.

    One left join, no branching of the walker plan: a restarting walker asks for bucket -1, which
    matches nothing, and goes back to its source; a moving walker matches exactly one row.
    """
    key = (F.col("src_t"), F.col("src"), F.col("walk"), F.lit(s))
    restart = uniform(params.seed, *key, WALK_RESTART) < params.restart_prob
    u = uniform(params.seed, *key, WALK_MOVE)
    bucket = F.when(restart, F.lit(-1)).otherwise(
        F.least(F.floor(u * F.col("cur_deg")).cast("int"), F.col("cur_deg") - 1)
    )
    walkers = walkers.select("*", restart.alias("restart"), u.alias("u"), bucket.alias("bucket"))
    t = table.select(
        F.col("node_t").alias("t_node_t"),
        F.col("node").alias("t_node"),
        F.col("bucket").alias("t_bucket"),
        "nbr",
        "lo",
        "hi",
        "nbr_deg",
    )
    on = (
        (F.col("cur_t") == F.col("t_node_t"))
        & (F.col("cur") == F.col("t_node"))
        & (F.col("bucket") == F.col("t_bucket"))
        & (F.col("lo") <= F.col("u"))
        & (F.col("u") < F.col("hi"))
    )
    joined = walkers.join(t, on, "left")
    cur_t = F.when(F.col("restart"), F.col("src_t")).otherwise(1 - F.col("cur_t"))
    landed = joined.select(
        "src_t",
        "src",
        "src_deg",
        "walk",
        "visits",
        cur_t.alias("cur_t"),
        F.when(F.col("restart"), F.col("src")).otherwise(F.col("nbr")).alias("cur"),
        F.when(F.col("restart"), F.col("src_deg")).otherwise(F.col("nbr_deg")).alias("cur_deg"),
    )
    if same_type:
        record = (F.col("cur_t") == F.col("src_t")) & (F.col("cur") != F.col("src"))
    else:
        record = F.col("cur_t") != F.col("src_t")
    visits = F.when(record, F.concat("visits", F.array("cur"))).otherwise(F.col("visits"))
    return landed.withColumn("visits", visits)


def visit_counts(walkers: DataFrame) -> DataFrame:
    """(src_t, src, visited, count) from finished walkers."""
    return (
        walkers.select("src_t", "src", F.explode("visits").alias("visited"))
        .groupBy("src_t", "src", "visited")
        .agg(F.count(F.lit(1)).alias("count"))
    )


def top_neighbors(counts: DataFrame, top_t: int) -> DataFrame:
    """(src_t, src, visited, weight): the top_t visited nodes of each source by count (ties to the
    smaller id), weight = count / sum of the kept counts."""
    order = Window.partitionBy("src_t", "src").orderBy(F.desc("count"), "visited")
    kept = counts.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top_t)
    total = F.sum("count").over(Window.partitionBy("src_t", "src"))
    return kept.select("src_t", "src", "visited", (F.col("count") / total).cast("float").alias("weight"))


def top_neighbor_tables(counts: DataFrame, top_t: int) -> dict[str, DataFrame]:
    """board_neighbors and pin_neighbors from visit counts: each source's top_t (`top_neighbors`)."""
    top = top_neighbors(counts, top_t)
    return {
        "board_neighbors": top.where(F.col("src_t") == BOARD).select(
            F.col("src").alias("board_id"), F.col("visited").alias("pin_id"), "weight"
        ),
        "pin_neighbors": top.where(F.col("src_t") == PIN).select(
            F.col("src").alias("pin_id"), F.col("visited").alias("board_id"), "weight"
        ),
    }


# ---- the walk runner: the loop every job that walks shares ------------------------------------


@dataclass(frozen=True)
class WalkGraph:
    """The tables every step joins, materialised: node stats (node_t, node, deg, total) and the
    bucketed inverse-CDF table (`buckets`)."""

    stats: DataFrame
    buckets: DataFrame


def build_walk_graph(edges: DataFrame, work: str) -> WalkGraph:
    """Write the walk's node stats and bucketed adjacency of deduplicated `edges` (`memberships`)
    under `work`, and read both back."""
    edges.sparkSession.sparkContext.setJobDescription("build the bucketed adjacency")
    adjacency = undirected(edges)
    stats = write_and_reload(node_stats(adjacency), f"{work}/stats")
    return WalkGraph(stats, write_and_reload(buckets(adjacency, stats), f"{work}/buckets"))


def batch_walks(walks_per_node: int, walks_per_batch: int, nodes: int, sources: int) -> int:
    """Walk indices per batch when `sources` of the graph's `nodes` walk: `walks_per_batch` scaled
    by nodes / sources (rounded down), at most `walks_per_node` and at least `walks_per_batch`."""
    scaled = walks_per_batch * nodes // max(sources, 1)
    return max(walks_per_batch, min(walks_per_node, scaled))


def run_walks(
    graph: WalkGraph,
    params: WalkParams,
    walks_per_batch: int,
    work: str,
    sources: DataFrame | None = None,
    same_type: bool = False,
) -> DataFrame:
    """Every walk from each node of the graph (or only from the (node_t, node) rows of `sources`),
    `walks_per_batch` walk indices per Spark job, visit counts appended to WORK/counts; returns
    (src_t, src, visited, count). A walk depends only on the seed, its source and its index, so
    walking from a subset of the sources gives those sources exactly what walking from all gives.
    `same_type` records visits as `step` describes (pin-to-pin, for the graph baseline).

    Walking from a subset, a batch takes more walk indices (`batch_walks`): as many as keep its
    walkers within the `walks_per_batch` x nodes of a batch from every node. Each step joins the
    whole bucketed table whatever the number of walkers, so a few sources walk in one batch."""
    stats = graph.stats
    sc = stats.sparkSession.sparkContext
    starts = stats
    if sources is not None:
        starts = stats.join(sources, ["node_t", "node"], "left_semi")
        sc.setJobDescription("count the walks' sources")
        walks_per_batch = batch_walks(params.walks_per_node, walks_per_batch, stats.count(), starts.count())
    counts_path = f"{work}/counts"
    batches = range(0, params.walks_per_node, walks_per_batch)
    for i, first in enumerate(batches):
        walk_ids = range(first, min(first + walks_per_batch, params.walks_per_node))
        sc.setJobDescription(f"walks {walk_ids.start}-{walk_ids.stop - 1} of {params.walks_per_node}")
        log.info(
            "walk batch %d/%d: walk indices %d-%d", i + 1, len(batches), walk_ids.start, walk_ids.stop - 1
        )
        walkers = start_walkers(starts, walk_ids)
        for s in range(1, params.walk_length + 1):
            walkers = step(walkers, graph.buckets, params, s, same_type)
        append_delta(visit_counts(walkers), counts_path, first=i == 0)
    counts = read_delta(stats.sparkSession, counts_path)
    return counts.groupBy("src_t", "src", "visited").agg(F.sum("count").alias("count"))
