"""Pure DataFrame transforms of the embedding chain. None of them reads, writes or triggers a job.

Node tables are (node_id, vec): vec is ARRAY<FLOAT> for input features (layer 0) and BINARY float32
for computed layers; the executor code reads either.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import partial

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType

from jobs.lib import inference
from jobs.lib.inference import NEIGHBOR_ROW, OWN_ROW, ModelRef
from jobs.lib.vectors import to_matrix
from schemas import GATHERED, LAYER, MERGED, NEIGHBORS, PARTIALS, PROJECTIONS


def node_table(nodes: DataFrame, id_col: str, with_features: bool) -> DataFrame:
    """(node_id, vec) from a validated node table; vec is NULL when the type has no features."""
    vec = F.col("features") if with_features else F.lit(None).cast(BinaryType())
    return nodes.select(F.col(id_col).alias("node_id"), vec.alias("vec"))


def board_ids_from_links(*links: DataFrame) -> DataFrame:
    """The board set when no boards table is given: every non-null board_id named by a link table."""
    ids = [df.select("board_id") for df in links]
    union = ids[0]
    for more in ids[1:]:
        union = union.unionByName(more)
    return union.where(F.col("board_id").isNotNull()).distinct()


def links(table: DataFrame, dst_col: str, src_col: str) -> DataFrame:
    """The NEIGHBORS rows (dst, src, weight DOUBLE) of a neighbor table, without rows that have a
    NULL id.

    Rows naming unknown nodes are left in: an unknown source finds no projection in `gather`'s join,
    and an unknown target has no row of its own, so `pool_and_combine` drops its rows and counts them.
    """
    known = table.where(F.col(dst_col).isNotNull() & F.col(src_col).isNotNull())
    return known.select(
        *(
            F.col(c).cast(f.dataType).alias(f.name)
            for c, f in zip((dst_col, src_col, "weight"), NEIGHBORS, strict=True)
        )
    )


def project(
    sources: DataFrame, ref: ModelRef, k: int, counter=None, check_dim: int | None = None
) -> DataFrame:
    """Step 1 of layer k: every source node once through ReLU(Q_k h + q_k) -> (src, proj).
    `check_dim`: the sources are an input table's features, checked batch by batch on the way
    (`inference.check_features`)."""
    fn = partial(inference.project_batches, ref=ref, k=k, counter=counter, check_dim=check_dim)
    return sources.select("node_id", "vec").mapInArrow(fn, PROJECTIONS)


def collect_projections(
    projections: DataFrame, hidden_dim: int, precision: str = "float32"
) -> inference.Projections:
    """Bring a (src, proj) table to the driver as a sorted float32 lookup table, for broadcasting.

    Only for tables known to be small (the caller bounds the size): one Arrow transfer, no row
    objects, and each Arrow chunk decoded straight into its sorted rows, so the driver holds the
    transfer and the table, not a third copy. `precision` is how proj is encoded
    (`ModelRef.projection_precision`)."""
    table = projections.toArrow()
    ids = table.column("src").to_numpy()
    order = np.argsort(ids, kind="stable")
    row_of = np.empty_like(order)
    row_of[order] = np.arange(len(order))  # where each collected row goes in the sorted table
    matrix = np.empty((len(ids), hidden_dim), dtype=np.float32)
    at = 0
    for chunk in table.column("proj").chunks:
        matrix[row_of[at : at + len(chunk)]] = to_matrix(chunk, hidden_dim, precision)
        at += len(chunk)
    del table
    return inference.Projections.build(ids[order], matrix)


def collect_adjacency(neighbors: DataFrame, projections: inference.Projections) -> inference.Adjacency:
    """Bring a layer's neighbor rows (dst, src, weight) to the driver as an `inference.Adjacency`
    over the collected `projections`, for broadcasting beside them (`neighbors_fit` bounds the
    size): one Arrow transfer, sorted on the driver."""
    table = neighbors.select(*NEIGHBORS.fieldNames()).toArrow()
    dst, src = (table.column(c).to_numpy() for c in ("dst", "src"))
    weight = table.column("weight").to_numpy().astype(np.float64, copy=False)
    del table
    return inference.Adjacency.build(dst, src, weight, projections)


# What one neighbor row costs the driver when the rows are collected for an `inference.Adjacency`:
# its dst, src and weight, 8 bytes each (the broadcast table keeps 12: source position and weight).
NEIGHBOR_ROW_BYTES = 24


def neighbors_fit(neighbor_rows: int | None, self_dim: int, projections_mb: float, bound_mb: float) -> bool:
    """Whether a layer whose projections are broadcast whole broadcasts its neighbor rows beside
    them (`chain.run_layer`): when its targets carry vectors of their own (`self_dim` > 0), which
    would otherwise be shuffled to their rows, and both tables fit `bound_mb` together. Targets
    without (boards without features at layer 1) have only their rows shuffled, which costs less
    than collecting the rows on the driver and sorting them there. Unknown counts never fit."""
    if neighbor_rows is None or self_dim == 0:
        return False
    return projections_mb + neighbor_rows * NEIGHBOR_ROW_BYTES / 2**20 <= bound_mb


MEMORY_UNITS = {"k": 2**-10, "m": 1, "g": 2**10, "t": 2**20, "p": 2**30}


def memory_mb(text: str) -> float:
    """A JVM memory string of Spark's memory settings ("4g", "512m", "2048": MiB without a unit) in
    MiB."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)b?\s*", str(text).lower())
    if not match:
        raise ValueError(f"cannot read the memory size {text!r}")
    return int(match.group(1)) * MEMORY_UNITS[match.group(2) or "m"]


# Share of spark.driver.maxResultSize a broadcast table may take: the collect's Arrow batches carry
# the table's bytes plus their framing, and Spark fails the job once the results pass the limit.
RESULT_SIZE_SHARE = 0.9


def executor_cores(conf: Callable[[str, str], str]) -> int:
    """spark.executor.cores, 0 when it is not set."""
    return int(conf("spark.executor.cores", "0") or 0)


def auto_broadcast_mb(
    master: str, conf: Callable[[str, str], str], default_parallelism: int
) -> tuple[float, str]:
    """The broadcast bound when none is given: the largest projection table the job's processes
    hold without running short, and how it was derived.

    A broadcast table is held by the executor's JVM and by each of its Python workers (one per
    core): executor memory / (1 + cores). The driver collects it first and holds it in its Python
    process and its JVM: driver memory / 2. In local mode the driver is the executor and its cores
    are the local threads. The collect must also stay under spark.driver.maxResultSize (0:
    unlimited): at most RESULT_SIZE_SHARE of it. `conf(key, default)` reads the Spark conf."""
    driver = memory_mb(conf("spark.driver.memory", "1g"))
    if master.startswith("local"):
        cores = max(1, default_parallelism)
        bound, how = driver / (1 + cores), f"driver memory {driver:.0f} MB / (1 + {cores} local cores)"
    else:
        executor = memory_mb(conf("spark.executor.memory", "1g"))
        cores = executor_cores(conf) or max(1, default_parallelism)
        bound = min(executor / (1 + cores), driver / 2)
        how = (
            f"the smaller of executor memory {executor:.0f} MB / (1 + {cores} cores) and driver memory "
            f"{driver:.0f} MB / 2"
        )
    results = memory_mb(conf("spark.driver.maxResultSize", "1g"))
    if results > 0 and results * RESULT_SIZE_SHARE < bound:
        share = f"{RESULT_SIZE_SHARE:.0%}"
        return results * RESULT_SIZE_SHARE, f"{share} of spark.driver.maxResultSize {results:.0f} MB"
    return bound, how


def broadcast_bound_mb(sc, bound_mb: float | None) -> tuple[float, str]:
    """`bound_mb`, or with None the bound `auto_broadcast_mb` derives from the session's conf."""
    if bound_mb is not None:
        return float(bound_mb), "--broadcast-projections-mb"
    conf = sc.getConf()
    return auto_broadcast_mb(sc.master, conf.get, sc.defaultParallelism)


# The most parts a layer's projections are broadcast in. Each part reads its projections and the
# neighbor rows once more and writes one partial state per target it reaches; past this many parts
# joining the projections to the rows and shuffling them costs less.
MAX_BROADCAST_PARTS = 16
# Headroom when splitting: a hash part holds its share of the sources give or take a fraction of a
# percent, so parts are sized to 98% of the bound.
PART_FILL = 0.98


def projection_parts(
    source_rows: int | None,
    target_rows: int | None,
    neighbor_rows: int | None,
    hidden_dim: int,
    bound_mb: float,
    executors: int = 1,
) -> tuple[int, float]:
    """How a layer moves its projections, and their size: (parts, MB). The projections are
    `source_rows x hidden_dim` float32 (the broadcast table's position index is not counted).

    1: they fit `bound_mb` and are broadcast whole. p > 1: they do not, and are broadcast in p hash
    parts of the sources, one after another, each part pooled into partial states per target
    (`chain.run_layer`). Chosen when a positive bound splits them into at most MAX_BROADCAST_PARTS
    and that moves fewer hidden-wide vectors than the shuffle: a copy of every projection to each
    of the `executors` plus one partial state per part and target with rows (`target_rows`),
    against one projection per neighbor row. 0: joined to the neighbor rows and shuffled with them
    (also when a count is unknown, or the bound is 0)."""
    size_mb = (source_rows or 0) * hidden_dim * 4 / 2**20
    if source_rows is None:
        return 0, size_mb
    if size_mb <= bound_mb:
        return 1, size_mb
    if bound_mb <= 0 or target_rows is None or neighbor_rows is None:
        return 0, size_mb
    parts = math.ceil(size_mb / (bound_mb * PART_FILL))
    moved = executors * source_rows + parts * target_rows
    if parts > MAX_BROADCAST_PARTS or moved >= neighbor_rows:
        return 0, size_mb
    return parts, size_mb


def executor_count(master: str, conf: Callable[[str, str], str], default_parallelism: int) -> int:
    """The executors a broadcast reaches: 1 in local mode, else the job's cores over
    spark.executor.cores (each core counted as an executor when that is not set, as
    `auto_broadcast_mb` does)."""
    if master.startswith("local"):
        return 1
    cores = executor_cores(conf) or 1
    return max(1, default_parallelism // cores)


def hash_part(column: str, parts: int):
    """The part (0 .. parts-1) of a node id column: a hash, so parts are even whatever the ids."""
    return F.pmod(F.xxhash64(F.col(column)), F.lit(parts))


def part_rows(neighbors: DataFrame, parts: int, part: int) -> DataFrame:
    """The neighbor rows (dst, src, weight) whose source is in `part`, partitioned by target and
    sorted by (dst, src, weight), so a task meets each target's rows together and in the same order
    on every run."""
    rows = neighbors.where(hash_part("src", parts) == part).select(*NEIGHBORS.fieldNames())
    return rows.repartition("dst").sortWithinPartitions("dst", "src", "weight")


def pool_part(rows: DataFrame, ref: ModelRef, k: int, projections, part: int) -> DataFrame:
    """Step 2 of layer k for one part: `part_rows` pooled against the part's broadcast projections
    -> one partial state per target (PARTIALS)."""
    fn = partial(inference.pool_part_batches, ref=ref, k=k, projections=projections, part=part)
    return rows.mapInArrow(fn, PARTIALS)


def gather_parts(targets: DataFrame, partials: DataFrame) -> DataFrame:
    """Each target's own row and its parts' partial states (MERGED), partitioned by target and
    sorted by (dst, kind, part), so the states fold in part order on every run."""
    self_type = targets.schema["vec"].dataType
    own = targets.select(
        F.col("node_id").alias("dst"),
        F.lit(OWN_ROW).cast("byte").alias("kind"),
        F.lit(None).cast("int").alias("part"),
        F.lit(None).cast("bigint").alias("rows"),
        F.lit(None).cast("double").alias("norm"),
        F.col("vec").alias("self_vec"),
        F.lit(None).cast(BinaryType()).alias("acc"),
    )
    states = partials.select(
        "dst",
        F.lit(inference.PARTIAL_ROW).cast("byte").alias("kind"),
        "part",
        "rows",
        "norm",
        F.lit(None).cast(self_type).alias("self_vec"),
        "acc",
    )
    merged = own.unionByName(states).select(*MERGED.fieldNames())
    return merged.repartition("dst").sortWithinPartitions("dst", "kind", "part")


def combine_parts(
    merged: DataFrame, ref: ModelRef, k: int, written=None, pooled=None, with_head: bool = False
) -> DataFrame:
    """Step 3 of layer k from `gather_parts`' rows: what `pool_and_combine` gives."""
    fn = partial(
        inference.combine_parts_batches, ref=ref, k=k, written=written, pooled=pooled, with_head=with_head
    )
    return merged.mapInArrow(fn, EMBEDDINGS if with_head else LAYER)


def gather(targets: DataFrame, neighbors: DataFrame, projections: DataFrame | None) -> DataFrame:
    """Step 2 of layer k: each target's own row and its neighbors' projections, co-located.

    Partitioned by target and sorted by (dst, kind, src, weight), so a pooling task meets each
    target's rows contiguously and in the same order on every run, whatever the partitioning.
    With `projections` None the neighbor rows travel without vectors (proj NULL): the pooling map
    looks them up in a broadcast instead, and only ids and weights are shuffled.
    """
    rows = layer_rows(targets, neighbors, projections)
    return rows.repartition("dst").sortWithinPartitions("dst", "kind", "src", "weight")


def layer_rows(targets: DataFrame, neighbors: DataFrame, projections: DataFrame | None) -> DataFrame:
    """What `gather` shuffles, the GATHERED columns: one own row per target (OWN_ROW, self_vec) and
    one row per neighbor (NEIGHBOR_ROW, src, weight, proj or NULL)."""
    self_type = targets.schema["vec"].dataType
    own = targets.select(
        F.col("node_id").alias("dst"),
        F.lit(OWN_ROW).cast("byte").alias("kind"),
        F.lit(None).cast("bigint").alias("src"),
        F.lit(None).cast("double").alias("weight"),
        F.col("vec").alias("self_vec"),
        F.lit(None).cast(BinaryType()).alias("proj"),
    )
    if projections is None:
        joined = neighbors.withColumn("proj", F.lit(None).cast(BinaryType()))
    else:
        joined = neighbors.join(projections, "src")
    messages = joined.select(
        "dst",
        F.lit(NEIGHBOR_ROW).cast("byte").alias("kind"),
        "src",
        "weight",
        F.lit(None).cast(self_type).alias("self_vec"),
        "proj",
    )
    return own.unionByName(messages).select(*GATHERED.fieldNames())


def pool_and_combine(
    gathered: DataFrame,
    ref: ModelRef,
    k: int,
    written=None,
    pooled=None,
    projections=None,
    with_head: bool = False,
) -> DataFrame:
    """Steps 2-3 of layer k: pool each target's projections, apply W_k, normalise -> (node_id, vec),
    or with `with_head` (the last layer) the output head too -> (pin_id, embedding ARRAY<FLOAT>),
    the published rows.

    `written` counts targets, `pooled` the neighbor rows pooled (accumulators, optional);
    `projections` is the broadcast `inference.Projections` when `gather` ran without them."""
    fn = partial(
        inference.pool_and_combine_batches,
        ref=ref,
        k=k,
        written=written,
        pooled=pooled,
        projections=projections,
        with_head=with_head,
    )
    return gathered.mapInArrow(fn, EMBEDDINGS if with_head else LAYER)


EMBEDDINGS = "pin_id bigint, embedding array<float>"


def pool_local(
    targets: DataFrame,
    ref: ModelRef,
    k: int,
    projections,
    adjacency,
    written=None,
    pooled=None,
    with_head=False,
) -> DataFrame:
    """Steps 2-3 of layer k as a map over the targets, with the projections and the neighbor rows
    both broadcast (`collect_projections`, `collect_adjacency`): what `pool_and_combine` gives,
    with nothing shuffled."""
    fn = partial(
        inference.pool_local_batches,
        ref=ref,
        k=k,
        projections=projections,
        adjacency=adjacency,
        written=written,
        pooled=pooled,
        with_head=with_head,
    )
    return targets.select("node_id", "vec").mapInArrow(fn, EMBEDDINGS if with_head else LAYER)


def embed_pins(last_pins: DataFrame, ref: ModelRef) -> DataFrame:
    """The output head on h_p(K) -> (pin_id, embedding ARRAY<FLOAT>)."""
    fn = partial(inference.head_batches, ref=ref)
    return last_pins.select("node_id", "vec").mapInArrow(fn, EMBEDDINGS)


def board_vectors(last_boards: DataFrame, dim: int) -> DataFrame:
    """h_b(K-1) as (board_id, embedding ARRAY<FLOAT>)."""
    fn = partial(inference.vectors_to_arrays, dim=dim, id_name="board_id")
    return last_boards.select("node_id", "vec").mapInArrow(fn, "board_id bigint, embedding array<float>")
