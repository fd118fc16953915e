"""One pass of the layer chain, shared by the full run (jobs/embed.py) and new pins
(jobs/embed_new.py): project the sources, gather their projections to the targets, pool and combine,
and materialise h(k) as a Delta table before the next layer starts (PinSage paper, section 3.4).
"""

from __future__ import annotations

import hashlib
import json
import logging

from pyspark.sql import DataFrame, SparkSession

from jobs.lib.inference import ModelRef
from jobs.lib.io import VECTOR_TABLE, write_and_reload
from jobs.lib.report import LayerReport, Stopwatch
from jobs.lib.transforms import broadcast_bound_mb, broadcast_if_small, gather, pool_and_combine, project
from pinsage_model.config import Layer

log = logging.getLogger("pinsage.chain")

FLOAT32 = "float32"


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
) -> tuple[DataFrame, LayerReport]:
    """Layer `layer.k`: h(k) of `targets` (node_id, vec = h(k-2)) from `sources` (node_id, vec =
    h(k-1)) pooled over `neighbors` (dst, src, weight), written to `path` with `metadata` and read
    back. `description` names the pass in the Spark UI and the log.

    When the `source_rows` projections fit in `broadcast_mb` (None: derived from the session's
    memory settings, `transforms.broadcast_bound_mb`) they are collected once and broadcast,
    and only (target, source, weight) rows are shuffled; otherwise (or with `source_rows` None) the
    projections are joined to the neighbor rows and shuffled with them.

    `with_head` (the last layer of a full run): the table holds the output head's embeddings
    (pin_id, embedding), ready to publish, instead of h(k)."""
    clock = Stopwatch()
    spark: SparkSession = targets.sparkSession
    sc = spark.sparkContext
    k, hidden_dim = layer.k, layer.dims.hidden_dim
    projected, written, pooled = sc.accumulator(0), sc.accumulator(0), sc.accumulator(0)
    sc.setJobDescription(description)
    bound_mb, bound_from = broadcast_bound_mb(sc, broadcast_mb)
    lookup, projections, size_mb = broadcast_if_small(
        sc,
        project(sources, ref, k, projected),
        source_rows,
        hidden_dim,
        bound_mb,
        ref.projection_precision,
    )
    moved = "broadcast" if lookup is not None else "shuffled"
    if ref.projection_precision != FLOAT32:
        moved += f" as {ref.projection_precision}"
    log.info(
        "%s (projections %.0f MB, %s; broadcast bound %.0f MB from %s)",
        description,
        size_mb,
        moved,
        bound_mb,
        bound_from,
    )
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
        k, layer.target, layer.source, projected.value, written.value, pooled.value, clock.seconds(), moved
    )
    log.info("layer %d done: %s", k, report)
    return table, report
