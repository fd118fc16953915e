"""Pure DataFrame transforms of the embedding chain. None of them reads, writes or triggers a job.

Node tables are (node_id, vec): vec is ARRAY<FLOAT> for input features (layer 0) and BINARY float32
for computed layers; the executor code reads either.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType

from jobs.lib import inference
from jobs.lib.inference import NEIGHBOR_ROW, OWN_ROW, ModelRef
from jobs.lib.vectors import to_matrix
from schemas import GATHERED, LAYER, NEIGHBORS, PROJECTIONS


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


def project(sources: DataFrame, ref: ModelRef, k: int, counter=None) -> DataFrame:
    """Step 1 of layer k: every source node once through ReLU(Q_k h + q_k) -> (src, proj)."""
    fn = partial(inference.project_batches, ref=ref, k=k, counter=counter)
    return sources.select("node_id", "vec").mapInArrow(fn, PROJECTIONS)


def collect_projections(
    projections: DataFrame, hidden_dim: int, precision: str = "float32"
) -> inference.Projections:
    """Bring a (src, proj) table to the driver as a sorted float32 lookup table, for broadcasting.

    Only for tables known to be small (the caller bounds the size): one Arrow transfer, no row
    objects. `precision` is how proj is encoded (`ModelRef.projection_precision`)."""
    table = projections.toArrow()
    ids = table.column("src").to_numpy()
    matrix = to_matrix(table.column("proj").combine_chunks(), hidden_dim, precision)
    return inference.Projections.build(ids, matrix)


MEMORY_UNITS = {"k": 2**-10, "m": 1, "g": 2**10, "t": 2**20, "p": 2**30}


def memory_mb(text: str) -> float:
    """A JVM memory string of Spark's memory settings ("4g", "512m", "2048": MiB without a unit) in
    MiB."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)b?\s*", str(text).lower())
    if not match:
        raise ValueError(f"cannot read the memory size {text!r}")
    return int(match.group(1)) * MEMORY_UNITS[match.group(2) or "m"]


def auto_broadcast_mb(
    master: str, conf: Callable[[str, str], str], default_parallelism: int
) -> tuple[float, str]:
    """The broadcast bound when none is given: the largest projection table the job's processes
    hold without running short, and how it was derived.

    A broadcast table is held by the executor's JVM and by each of its Python workers (one per
    core): executor memory / (1 + cores). The driver collects it first and holds it in its Python
    process and its JVM: driver memory / 2. In local mode the driver is the executor and its cores
    are the local threads. `conf(key, default)` reads the Spark conf."""
    driver = memory_mb(conf("spark.driver.memory", "1g"))
    if master.startswith("local"):
        cores = max(1, default_parallelism)
        return driver / (1 + cores), f"driver memory {driver:.0f} MB / (1 + {cores} local cores)"
    executor = memory_mb(conf("spark.executor.memory", "1g"))
    cores = int(conf("spark.executor.cores", "0") or 0) or max(1, default_parallelism)
    bound = min(executor / (1 + cores), driver / 2)
    return bound, (
        f"the smaller of executor memory {executor:.0f} MB / (1 + {cores} cores) and driver memory "
        f"{driver:.0f} MB / 2"
    )


def broadcast_bound_mb(sc, bound_mb: float | None) -> tuple[float, str]:
    """`bound_mb`, or with None the bound `auto_broadcast_mb` derives from the session's conf."""
    if bound_mb is not None:
        return float(bound_mb), "--broadcast-projections-mb"
    conf = sc.getConf()
    return auto_broadcast_mb(sc.master, conf.get, sc.defaultParallelism)


def broadcast_if_small(
    sc,
    projections: DataFrame,
    rows: int | None,
    hidden_dim: int,
    bound_mb: float,
    precision: str = "float32",
):
    """The bound on broadcasting a layer's projections: with `rows` known and rows x hidden_dim x 4
    bytes (the broadcast table is float32; its position table for dense ids, 4 bytes per id of the
    range, is not counted) at most `bound_mb`, they are collected and broadcast ->
    (broadcast, None, MB); otherwise -> (None, projections, MB), for `gather` to join and shuffle
    them with the neighbor rows, in `precision`. `bound_mb` is `broadcast_bound_mb`'s."""
    size_mb = (rows or 0) * hidden_dim * 4 / 2**20
    if rows is None or size_mb > bound_mb:
        return None, projections, size_mb
    return sc.broadcast(collect_projections(projections, hidden_dim, precision)), None, size_mb


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


def embed_pins(last_pins: DataFrame, ref: ModelRef) -> DataFrame:
    """The output head on h_p(K) -> (pin_id, embedding ARRAY<FLOAT>)."""
    fn = partial(inference.head_batches, ref=ref)
    return last_pins.select("node_id", "vec").mapInArrow(fn, EMBEDDINGS)


def board_vectors(last_boards: DataFrame, dim: int) -> DataFrame:
    """h_b(K-1) as (board_id, embedding ARRAY<FLOAT>)."""
    fn = partial(inference.vectors_to_arrays, dim=dim, id_name="board_id")
    return last_boards.select("node_id", "vec").mapInArrow(fn, "board_id bigint, embedding array<float>")
