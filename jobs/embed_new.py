"""Embed pins that arrived after the last full run, inductively, and merge them into its output.

    spark-submit jobs/embed_new.py --new-pins P --new-edges E --base O --checkpoint C

New pins (and existing pins listed again, e.g. with new features or memberships) get their
neighbourhoods from the same random walk as jobs/neighborhoods.py, over the base run's edges plus
the new edges, walked from these pins only. Their pin layers k = 2, 4, ..., K are then computed with
the model of the full run, pooling the board representations h_b(k-1) that the full run stored
(O/board_embeddings, and O/board_layers/layer_<k> when K > 2); no board is recomputed. The result is
merged into O/pin_embeddings with one Delta MERGE: new pins inserted, pins already there updated.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.lib import transforms as T
from jobs.lib import walks as W
from jobs.lib.cli import job_main, new_run_id, spark_conf
from jobs.lib.inference import ModelRef
from jobs.lib.io import InputError, delete_work, is_delta, last_commit, read_snapshot, snapshot, write_delta
from jobs.lib.session import get_spark
from jobs.lib.validate import check_links, check_nodes, conform
from pinsage_model.checkpoint import Checkpoint, read_checkpoint
from pinsage_model.config import ModelConfig

log = logging.getLogger("pinsage.embed_new")


@dataclass(frozen=True)
class EmbedNewArgs:
    new_pins: str
    new_edges: str
    base: str
    checkpoint: str
    checkpoint_sha256: str | None = None
    edges: str | None = None  # the base graph's edges; default: what the base run recorded
    walks_per_batch: int = 25
    broadcast_mb: int = 512
    device: str = "auto"
    master: str | None = None
    conf: dict[str, str] = field(default_factory=dict)
    keep_work: bool = False
    report_json: str | None = None


def parse_args(argv: list[str] | None = None) -> EmbedNewArgs:
    p = argparse.ArgumentParser(description="Embed new pins against the last full run and merge them in.")
    p.add_argument("--new-pins", required=True, help="pins to (re-)embed: pin_id, features")
    p.add_argument("--new-edges", required=True, help="their memberships: pin_id, board_id[, weight]")
    p.add_argument("--base", required=True, help="output root of the last full jobs/embed.py run")
    p.add_argument("--checkpoint", required=True, help="the checkpoint of the base run")
    p.add_argument("--checkpoint-sha256", metavar="HEX", help="refuse the checkpoint unless it has this hash")
    p.add_argument("--edges", help="the base graph's edges (default: the table the base run recorded)")
    p.add_argument("--walks-per-batch", type=int, default=25, help="walk indices simulated per Spark job")
    p.add_argument(
        "--broadcast-projections-mb", type=int, default=512, metavar="MB",
        help="broadcast the projected boards instead of shuffling them when they are at most this big "
        "(rows x hidden_dim x 4 bytes); 0 always shuffles",
    )  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--master", help="Spark master when run with python (default local[*])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf")
    p.add_argument("--keep-work", action="store_true", help="keep intermediate tables in BASE/_work")
    p.add_argument("--report-json", help="also write the run report as JSON to this local file")
    a = p.parse_args(argv)
    if a.walks_per_batch < 1:
        p.error("--walks-per-batch must be at least 1")
    if a.broadcast_projections_mb < 0:
        p.error("--broadcast-projections-mb must be at least 0")
    conf = spark_conf(p, a.conf)
    return EmbedNewArgs(
        a.new_pins, a.new_edges, a.base.rstrip("/"), a.checkpoint, a.checkpoint_sha256, a.edges,
        a.walks_per_batch, a.broadcast_projections_mb, a.device, a.master, conf, a.keep_work, a.report_json,
    )  # fmt: skip


@dataclass
class EmbedNewReport:
    run_id: str
    base_run_id: str
    checkpoint_sha256: str
    counts: dict[str, int] = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"run {self.run_id}: new pins against full run {self.base_run_id}"]
        lines += [f"  {k}: {v:,}" for k, v in self.counts.items()]
        if self.output:
            lines.append(
                f"merged into {self.output['path']}: version {self.output['version']}, "
                f"{self.output['inserted']:,} inserted, {self.output['updated']:,} updated"
            )
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


@dataclass(frozen=True)
class Base:
    """What the last full run left: its record (commit metadata) and its board representations."""

    run_id: str
    metadata: dict
    walk: W.WalkParams
    boards: dict[int, str]  # layer k (odd) -> Delta path of h_b(k) as (board_id, embedding)


def read_base(spark: SparkSession, root: str, config: ModelConfig, checkpoint_sha256: str) -> Base:
    """Check that `root` holds a complete full run of this checkpoint and find its parts."""
    pins_path = f"{root}/pin_embeddings"
    if not is_delta(spark, pins_path):
        raise InputError("pin_embeddings", None, f"{pins_path} is not a Delta table of a full run")
    meta = last_commit(spark, pins_path)["metadata"]
    if "inputs" not in meta or "run_id" not in meta:
        raise InputError("pin_embeddings", None, f"{pins_path} carries no run record in its last commit")
    run_id = meta.get("base_run_id", meta["run_id"])
    if meta.get("checkpoint_sha256") != checkpoint_sha256:
        raise InputError(
            "pin_embeddings", None,
            f"was computed with checkpoint sha256 {meta.get('checkpoint_sha256')}, but --checkpoint has "
            f"{checkpoint_sha256}: new pins must be embedded with the model of the full run",
        )  # fmt: skip
    K = config.num_layers
    boards = {k: f"{root}/board_layers/layer_{k}" for k in range(1, K - 1, 2)}
    boards[K - 1] = f"{root}/board_embeddings"
    for k, path in boards.items():
        name = path.removeprefix(root + "/")
        if not is_delta(spark, path):
            raise InputError(name, None, f"{path} is missing: the full run's h_b({k}) is needed")
        stored = last_commit(spark, path)["metadata"].get("run_id")
        if stored != run_id:
            raise InputError(name, None, f"belongs to run {stored}, pin_embeddings to run {run_id}")
    pin_neighbors = meta["inputs"].get("pin_neighbors", {}).get("path")
    walk_params = None
    if pin_neighbors and is_delta(spark, pin_neighbors):
        walk_params = last_commit(spark, pin_neighbors)["metadata"].get("walk")
    if walk_params is None:
        raise InputError(
            "pin_neighbors", None,
            f"{pin_neighbors} does not record the walk that built it (it was not written by "
            "jobs/neighborhoods.py), so new pins cannot get neighbourhoods drawn the same way",
        )  # fmt: skip
    return Base(run_id, meta, W.WalkParams(**walk_params), boards)


def walk_edges(spark: SparkSession, base_edges: dict, new_edges: DataFrame) -> DataFrame:
    """The base graph's memberships (at the recorded version) plus the new ones, as the neighbourhood
    job builds its graph: NULL ids dropped, a membership listed twice kept once with its largest
    weight."""
    edges = conform(read_snapshot(spark, "edges", base_edges), "edges")
    return W.memberships(edges.unionByName(new_edges))


def board_layer(spark: SparkSession, path: str) -> DataFrame:
    return (
        spark.read.format("delta")
        .load(path)
        .select(F.col("board_id").alias("node_id"), F.col("embedding").alias("vec"))
    )


def merge_pins(spark: SparkSession, path: str, embeddings: DataFrame, metadata: dict) -> dict:
    """Upsert (pin_id, embedding) rows into the Delta table at `path` in one MERGE commit."""
    from delta.tables import DeltaTable

    key = "spark.databricks.delta.commitInfo.userMetadata"
    spark.conf.set(key, json.dumps(metadata, sort_keys=True))
    try:
        (
            DeltaTable.forPath(spark, path).alias("t")
            .merge(embeddings.alias("s"), "t.pin_id = s.pin_id")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )  # fmt: skip
    finally:
        spark.conf.unset(key)
    commit = last_commit(spark, path)
    return {
        "path": path,
        "version": commit["version"],
        "inserted": int(commit["metrics"].get("numTargetRowsInserted", 0)),
        "updated": int(commit["metrics"].get("numTargetRowsUpdated", 0)),
    }


def run(spark: SparkSession, args: EmbedNewArgs, checkpoint: Checkpoint) -> EmbedNewReport:
    config = checkpoint.config
    base = read_base(spark, args.base, config, checkpoint.sha256)
    report = EmbedNewReport(new_run_id(), base.run_id, checkpoint.sha256)
    sc = spark.sparkContext
    work = f"{args.base}/_work/{report.run_id}"
    clock = time.perf_counter()

    sc.setJobDescription("validate new pins and edges")
    inputs = {"new_pins": snapshot(spark, "new_pins", args.new_pins)}
    inputs["new_edges"] = snapshot(spark, "new_edges", args.new_edges)
    pins = conform(read_snapshot(spark, "new_pins", inputs["new_pins"]), "pins")
    new_edges = conform(read_snapshot(spark, "new_edges", inputs["new_edges"]), "edges")
    note = f"the checkpoint's pin_feature_dim is {config.pin_feature_dim}"
    report.counts["new pins"] = check_nodes(pins, "new_pins", "pin_id", config.pin_feature_dim, note)
    report.counts["new edges"] = check_links(new_edges, "new_edges", ("pin_id", "board_id")).rows
    base_edges = base.metadata["inputs"]["edges"]
    if args.edges:
        base_edges = snapshot(spark, "edges", args.edges)
    report.seconds["inputs"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    write_delta(walk_edges(spark, base_edges, new_edges), f"{work}/edges")
    graph = W.build_walk_graph(spark.read.format("delta").load(f"{work}/edges"), work)
    sources = pins.select(F.lit(W.PIN).alias("node_t"), F.col("pin_id").alias("node"))
    counts = W.run_walks(graph, base.walk, args.walks_per_batch, work, sources)
    write_delta(W.top_neighbor_tables(counts, base.walk.top_t)["pin_neighbors"], f"{work}/pin_neighbors")
    neighbours = T.links(spark.read.format("delta").load(f"{work}/pin_neighbors"), "pin_id", "board_id")
    report.counts["neighbour rows"] = neighbours.count()
    report.seconds["walks"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    ref = ModelRef(sc.broadcast(checkpoint.data), checkpoint.sha256, args.device)
    current = T.node_table(pins, "pin_id", with_features=True)
    for k in range(2, config.num_layers + 1, 2):
        sc.setJobDescription(
            f"layer {k}/{config.num_layers}: new pins from stored h_b({k - 1}) with Q_{k}, W_{k}"
        )
        # Only the boards some new pin pools are projected.
        boards = board_layer(spark, base.boards[k - 1]).join(
            neighbours.select(F.col("src").alias("node_id")).distinct(), "node_id", "left_semi"
        )
        projected, written, pooled = sc.accumulator(0), sc.accumulator(0), sc.accumulator(0)
        lookup, projections, size_mb = T.broadcast_if_small(
            sc, T.project(boards, ref, k, projected), boards.count(), config.hidden_dim, args.broadcast_mb
        )
        log.info("layer %d/%d: projections of stored boards %.0f MB, %s", k, config.num_layers, size_mb,
                 "broadcast" if lookup is not None else "shuffled")  # fmt: skip
        gathered = T.gather(current, neighbours, projections)
        path = f"{work}/layer_{k}_pins"
        write_delta(T.pool_and_combine(gathered, ref, k, written, pooled, lookup), path)
        if lookup is not None:
            lookup.destroy()
        current = spark.read.format("delta").load(path)
        report.counts[f"layer {k}: stored boards projected"] = projected.value
        # A board that only the new edges create has no stored representation until the next full run.
        report.counts[f"layer {k}: neighbour rows naming boards without a stored h_b (dropped)"] = (
            report.counts["neighbour rows"] - pooled.value
        )
    report.seconds["layers"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    sc.setJobDescription("merge into pin_embeddings")
    metadata = {
        **base.metadata, "run_id": report.run_id, "base_run_id": base.run_id, "operation": "embed_new",
        "new_inputs": inputs,
    }  # fmt: skip
    report.output = merge_pins(spark, f"{args.base}/pin_embeddings", T.embed_pins(current, ref), metadata)
    report.seconds["merge"] = round(time.perf_counter() - clock, 3)
    if not args.keep_work:
        delete_work(spark, work)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> EmbedNewReport:
        checkpoint = read_checkpoint(args.checkpoint, args.checkpoint_sha256)
        return run(get_spark("pinsage-embed-new", args.master, args.conf), args, checkpoint)

    return job_main(job, args.report_json)


if __name__ == "__main__":
    sys.exit(main())
