"""One pass of the layer chain, shared by the full run (jobs/embed.py) and new pins
(jobs/embed_new.py): project the sources, gather their projections to the targets, pool and combine,
and materialise h(k) as a Delta table before the next layer starts (PinSage paper, section 3.4).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.lib.inference import ModelRef
from jobs.lib.io import VECTOR_TABLE, delete_path, write_and_reload
from jobs.lib.report import LayerReport, Stopwatch
from jobs.lib.transforms import (
    broadcast_bound_mb,
    collect_adjacency,
    collect_projections,
    combine_parts,
    executor_count,
    gather,
    gather_parts,
    hash_part,
    neighbors_fit,
    part_rows,
    pool_and_combine,
    pool_local,
    pool_part,
    project,
    projection_parts,
)
from pinsage_model.config import Layer, LayerDims

log = logging.getLogger("pinsage.chain")

FLOAT32 = "float32"
# How a layer that broadcasts its neighbor rows beside its projections reports them (LayerReport).
WITH_NEIGHBORS = ", with the neighbor rows"


def board_tables(num_layers: int) -> dict[int, str]:
    """Where a full run publishes each board layer it keeps, relative to its output root: h_b(k) of
    every odd k below K-1 as board_layers/layer_<k> (what embed_new pools when K > 2), and h_b(K-1)
    as board_embeddings."""
    tables = {k: f"board_layers/layer_{k}" for k in range(1, num_layers - 1, 2)}
    tables[num_layers - 1] = "board_embeddings"
    return tables


def run_key(checkpoint_sha256: str, inputs: dict[str, dict], projection_precision: str = FLOAT32) -> str:
    """Names the work of one (checkpoint, inputs, precision) run: a layer table is reused by --resume
    only when it carries the same key, so layers from different checkpoints, inputs or projection
    precisions never mix."""
    what = {"checkpoint_sha256": checkpoint_sha256, "inputs": inputs}
    if projection_precision != FLOAT32:  # float32 runs keep the keys they always had
        what["projection_precision"] = projection_precision
    blob = json.dumps(what, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def through_w(
    linear_pooling: bool, dims: LayerDims, source_rows: int | None, target_rows: int | None
) -> bool:
    """Whether a layer sends its sources' projections through W_pool before pooling them
    (`PinSageConv.message`). Importance and mean pooling are weighted means, so
    W_pool (sum_v w_v m_v / sum_v w_v) = sum_v w_v (W_pool m_v) / sum_v w_v: the same pooled term (up
    to float rounding) either way. Through W_pool, every message, broadcast, shuffled row and
    partial state is out_dim wide instead of hidden_dim, and the product runs once per source
    instead of once per target. Chosen when the messages get narrower (out_dim < hidden_dim: the
    bytes moved shrink, which costs more than the product here), or when they keep their width and
    there are fewer sources than targets (the product runs fewer times)."""
    if not linear_pooling:
        return False
    if dims.out_dim != dims.hidden_dim:
        return dims.out_dim < dims.hidden_dim
    return source_rows is not None and target_rows is not None and source_rows < target_rows


def run_layer(
    layer: Layer,
    ref: ModelRef,
    targets: DataFrame,
    neighbors: DataFrame,
    sources: DataFrame,
    source_rows: int | None,
    path: str,
    broadcast_mb: float | None,
    description: str,
    metadata: dict | None = None,
    with_head: bool = False,
    target_rows: int | None = None,
    neighbor_rows: int | None = None,
    check_dim: int | None = None,
) -> tuple[DataFrame, LayerReport]:
    """Layer `layer.k`: h(k) of `targets` (node_id, vec = h(k-2)) from `sources` (node_id, vec =
    h(k-1)) pooled over `neighbors` (dst, src, weight), written to `path` with `metadata` and read
    back. `description` names the pass in the Spark UI and the log. The projections are the
    sources' messages: through W_pool (out_dim wide) where `through_w` says so, else hidden_dim wide.

    How the projections reach the neighbor rows (`transforms.projection_parts`, against
    `broadcast_mb`, None: derived from the session's memory settings by
    `transforms.broadcast_bound_mb`):
    - when the targets carry vectors of their own and the `source_rows` projections and the
      `neighbor_rows` together fit the bound (`transforms.neighbors_fit`), both are collected and
      broadcast, and the layer is one map over the targets: nothing is shuffled;
    - when only the projections fit the bound they are collected once and broadcast, and only
      (target, source, weight) rows are shuffled with the targets' own rows;
    - when they do not, but `target_rows` (targets with neighbor rows) and `neighbor_rows` are
      given and splitting moves less (`transforms.projection_parts`), they are broadcast in hash
      parts of the sources, one at a time: each part pools its sources' rows
      into one partial state per target, written to `path`_parts, and a last pass folds each
      target's partial states in part order and combines (`_run_parts`);
    - otherwise they are joined to the neighbor rows and shuffled with them.

    `with_head` (the last layer of a full run): the table holds the output head's embeddings
    (pin_id, embedding), ready to publish, instead of h(k). `check_dim`: the sources are an input
    table whose features no pass has read yet; the projection checks them on the way and fails
    the layer, before its table is committed, on the first batch with a bad row
    (`inference.check_features`)."""
    clock = Stopwatch()
    spark: SparkSession = targets.sparkSession
    sc = spark.sparkContext
    pre = through_w(ref.linear_pooling, layer.dims, source_rows, target_rows)
    ref = dataclasses.replace(ref, through_w=pre)
    k, width = layer.k, layer.dims.message_dim(pre)
    projected, written, pooled = sc.accumulator(0), sc.accumulator(0), sc.accumulator(0)
    sc.setJobDescription(description)
    bound_mb, bound_from = broadcast_bound_mb(sc, broadcast_mb)
    executors = executor_count(sc.master, sc.getConf().get, sc.defaultParallelism)
    parts, size_mb = projection_parts(source_rows, target_rows, neighbor_rows, width, bound_mb, executors)
    local = parts == 1 and neighbors_fit(neighbor_rows, layer.dims.self_dim, size_mb, bound_mb)
    moved = {0: "shuffled", 1: "broadcast"}.get(parts, f"broadcast in {parts} parts")
    if ref.projection_precision != FLOAT32:
        moved += f" as {ref.projection_precision}"
    if local:
        moved += WITH_NEIGHBORS
    log.info(
        "%s (projections%s %.0f MB, %s; broadcast bound %.0f MB from %s)",
        description,
        f" through W_{k}" if pre else "",
        size_mb,
        moved,
        bound_mb,
        bound_from,
    )
    if parts > 1:
        combined = _run_parts(
            k, width, ref, targets, neighbors, sources, path, parts, description, projected, check_dim
        )
        table = write_and_reload(
            combine_parts(combined, ref, k, written, pooled, with_head), path, metadata, VECTOR_TABLE
        )
        delete_path(spark, f"{path}_parts")
    elif local:
        projections = project(sources, ref, k, projected, check_dim)
        messages = collect_projections(projections, width, ref.projection_precision)
        sc.setJobDescription(f"{description} (collect the neighbor rows)")
        rows = sc.broadcast(collect_adjacency(neighbors, messages))
        lookup = sc.broadcast(messages)
        sc.setJobDescription(description)
        table = write_and_reload(
            pool_local(targets, ref, k, lookup, rows, written, pooled, with_head),
            path,
            metadata,
            VECTOR_TABLE,
        )
        lookup.destroy()
        rows.destroy()
    else:
        lookup = None
        projections = project(sources, ref, k, projected, check_dim)
        if parts == 1:
            lookup = sc.broadcast(collect_projections(projections, width, ref.projection_precision))
            projections = None
        gathered = gather(targets, neighbors, projections)
        table = write_and_reload(
            pool_and_combine(gathered, ref, k, written, pooled, lookup, with_head),
            path,
            metadata,
            VECTOR_TABLE,
        )
        if lookup is not None:
            lookup.destroy()
    report = LayerReport(
        k,
        layer.target,
        layer.source,
        projected.value,
        written.value,
        pooled.value,
        clock.seconds(),
        moved,
        width,
    )
    log.info("layer %d done: %s", k, report)
    return table, report


def _run_parts(
    k: int,
    width: int,
    ref: ModelRef,
    targets: DataFrame,
    neighbors: DataFrame,
    sources: DataFrame,
    path: str,
    parts: int,
    description: str,
    projected,
    check_dim: int | None = None,
) -> DataFrame:
    """The parts of a layer whose projections are broadcast in `parts` hash parts: every source
    projected once into `path`_parts/projections, partitioned by part; then for each part, its
    projections collected and broadcast, and the neighbor rows naming them pooled into partial
    states per target, written to `path`_parts/part_<i> before the next part's broadcast (so one
    part's projections are held at a time). Returns every target's own row and partial states,
    ready for `combine_parts`."""
    sc = targets.sparkSession.sparkContext
    sc.setJobDescription(f"{description} (project into {parts} parts)")
    by_part = project(sources, ref, k, projected, check_dim).withColumn("part", hash_part("src", parts))
    by_part = write_and_reload(
        by_part, f"{path}_parts/projections", options=VECTOR_TABLE, partition_by="part"
    )
    states = None
    for part in range(parts):
        sc.setJobDescription(f"{description} (part {part + 1}/{parts})")
        mine = by_part.where(F.col("part") == part).select("src", "proj")
        table = collect_projections(mine, width, ref.projection_precision)
        log.info("layer %d part %d/%d: %d sources broadcast", k, part + 1, parts, len(table.ids))
        lookup = sc.broadcast(table)
        del table
        pooled = pool_part(part_rows(neighbors, parts, part), ref, k, lookup, part)
        done = write_and_reload(pooled, f"{path}_parts/part_{part}", options=VECTOR_TABLE)
        lookup.destroy()
        states = done if states is None else states.unionByName(done)
    sc.setJobDescription(f"{description} (combine {parts} parts)")
    return gather_parts(targets, states)
