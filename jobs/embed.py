"""Embed every pin with a trained PinSage checkpoint, as a layer-wise chain of Spark jobs.

    spark-submit jobs/embed.py --pins P --edges E [--boards B] --board-neighbors BN
        --pin-neighbors PN --checkpoint C --out O [--device auto|cpu|cuda] [--resume]

Each layer k projects every source node once with Q_k, gathers the projections to the targets that
pool them, applies W_k, and materialises h(k) as a Delta table before layer k+1 starts (the
MapReduce inference of the PinSage paper, section 3.4). The outputs are the Delta tables
O/pin_embeddings and O/board_embeddings (and O/board_layers/layer_<k> when K > 2). With --resume, a
layer that a failed run with the same checkpoint and inputs completed is read back, not recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession

from jobs.lib import transforms as T
from jobs.lib.cli import job_main, new_run_id, spark_conf
from jobs.lib.inference import ModelRef
from jobs.lib.io import (
    InputError,
    delete_path,
    delete_work,
    is_delta,
    last_commit,
    read_snapshot,
    snapshot,
    write_delta,
    write_delta_commit,
)
from jobs.lib.report import LayerReport, RunReport
from jobs.lib.session import get_spark
from jobs.lib.validate import check_links, check_nodes, conform
from jobs.lib.vectors import PRECISIONS
from pinsage_model.checkpoint import Checkpoint, read_checkpoint
from pinsage_model.config import ModelConfig

log = logging.getLogger("pinsage.embed")


@dataclass(frozen=True)
class EmbedArgs:
    pins: str
    edges: str
    board_neighbors: str
    pin_neighbors: str
    checkpoint: str
    out: str
    boards: str | None = None
    device: str = "auto"
    master: str | None = None
    conf: dict[str, str] = field(default_factory=dict)
    keep_work: bool = False
    report_json: str | None = None
    broadcast_mb: int = 512
    checkpoint_sha256: str | None = None
    resume: bool = False
    projection_precision: str = "float32"

    def inputs(self) -> dict[str, str]:
        """Input table name -> path, for the tables given."""
        paths = {
            "pins": self.pins, "edges": self.edges, "boards": self.boards,
            "board_neighbors": self.board_neighbors, "pin_neighbors": self.pin_neighbors,
        }  # fmt: skip
        return {name: path for name, path in paths.items() if path}


def parse_args(argv: list[str] | None = None) -> EmbedArgs:
    p = argparse.ArgumentParser(description="Embed every pin with a PinSage checkpoint on Spark.")
    p.add_argument("--pins", required=True, help="pins table: pin_id, features")
    p.add_argument("--edges", required=True, help="memberships: pin_id, board_id[, weight]")
    p.add_argument("--boards", help="optional boards table: board_id[, features]")
    p.add_argument("--board-neighbors", required=True, help="board_id, pin_id, weight")
    p.add_argument("--pin-neighbors", required=True, help="pin_id, board_id, weight")
    p.add_argument("--checkpoint", required=True, help="format_version 1 checkpoint file")
    p.add_argument(
        "--checkpoint-sha256", metavar="HEX",
        help="refuse the checkpoint unless its SHA-256 is this (checked before it is parsed)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output root for the Delta tables")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--master", help="Spark master when run with python (default local[*])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf")
    p.add_argument("--keep-work", action="store_true", help="keep the per-layer tables in OUT/_work")
    p.add_argument(
        "--resume", action="store_true",
        help="reuse the layer tables a failed run with the same checkpoint and inputs completed",
    )  # fmt: skip
    p.add_argument("--report-json", help="also write the run report as JSON to this local file")
    p.add_argument(
        "--broadcast-projections-mb", type=int, default=512, metavar="MB",
        help="broadcast a layer's projections instead of shuffling them when they are at most this big "
        "(0: never)",
    )  # fmt: skip
    p.add_argument(
        "--projection-precision", choices=tuple(PRECISIONS), default="float32",
        help="encoding of the projections moved between stages (shuffled with the neighbour rows, or "
        "collected for the broadcast): bfloat16 or float16 halve those bytes and round each value "
        "to 8 or 11 significant bits (README, Reduced-precision projections)",
    )  # fmt: skip
    a = p.parse_args(argv)
    conf = spark_conf(p, a.conf)
    return EmbedArgs(
        pins=a.pins, edges=a.edges, boards=a.boards, board_neighbors=a.board_neighbors,
        pin_neighbors=a.pin_neighbors, checkpoint=a.checkpoint, out=a.out.rstrip("/"),
        device=a.device, master=a.master, conf=conf, keep_work=a.keep_work, report_json=a.report_json,
        broadcast_mb=a.broadcast_projections_mb, checkpoint_sha256=a.checkpoint_sha256, resume=a.resume,
        projection_precision=a.projection_precision,
    )  # fmt: skip


@dataclass
class Graph:
    """Validated inputs as node tables (node_id, vec) and neighbour tables (dst, src, weight) per
    target type, all lazy."""

    nodes: dict[str, DataFrame]
    neighbours: dict[str, DataFrame]


def load_graph(spark: SparkSession, config: ModelConfig, report: RunReport, inputs: dict[str, dict]) -> Graph:
    """Read and check every input, Delta tables at the versions recorded in `inputs`. Everything
    that can reject the input runs here, before the first write; nothing is materialised: dangling
    neighbour rows fall out of the layer joins and are counted there."""
    spark.sparkContext.setJobDescription("validate inputs")

    def read(name: str) -> DataFrame:
        return conform(read_snapshot(spark, name, inputs[name]), name)

    pins, edges = read("pins"), read("edges")
    links = {name: read(name) for name in ("board_neighbors", "pin_neighbors")}
    boards = read("boards") if "boards" in inputs else None
    if boards is None and config.board_feature_dim > 0:
        raise InputError(
            "boards",
            "features",
            f"the checkpoint expects board features of width {config.board_feature_dim}, "
            "but no --boards table was given",
        )

    dim_note = "the checkpoint's {} is {}"
    report.input_rows["pins"] = check_nodes(
        pins, "pins", "pin_id", config.pin_feature_dim,
        dim_note.format("pin_feature_dim", config.pin_feature_dim),
    )  # fmt: skip
    if boards is not None:
        with_features = config.board_feature_dim > 0
        report.input_rows["boards"] = check_nodes(
            boards, "boards", "board_id", config.board_feature_dim if with_features else None,
            dim_note.format("board_feature_dim", config.board_feature_dim),
        )  # fmt: skip
    report.input_rows["edges"] = check_links(edges, "edges", ("pin_id", "board_id")).rows
    for name, df in links.items():
        report.input_rows[name] = check_links(df, name, tuple(df.columns[:2])).rows

    if boards is None:
        boards = T.board_ids_from_links(edges, *links.values())
    return Graph(
        nodes={
            "pin": T.node_table(pins, "pin_id", with_features=True),
            "board": T.node_table(boards, "board_id", with_features=config.board_feature_dim > 0),
        },
        neighbours={
            "board": T.links(links["board_neighbors"], "board_id", "pin_id"),
            "pin": T.links(links["pin_neighbors"], "pin_id", "board_id"),
        },
    )


def run_key(checkpoint_sha256: str, inputs: dict[str, dict], projection_precision: str = "float32") -> str:
    """Names the work of one (checkpoint, inputs, precision) run: a layer table is reused by --resume
    only when it carries the same key, so layers from different checkpoints, inputs or projection
    precisions never mix."""
    what = {"checkpoint_sha256": checkpoint_sha256, "inputs": inputs}
    if projection_precision != "float32":  # float32 runs keep the keys they always had
        what["projection_precision"] = projection_precision
    blob = json.dumps(what, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def completed_layer(spark: SparkSession, path: str, key: str, k: int) -> DataFrame | None:
    """The layer table at `path` when an earlier run with the same key committed it, else None."""
    if not is_delta(spark, path):
        return None
    try:
        meta = last_commit(spark, path)["metadata"]
    except Exception:  # a _delta_log without a commit: the write that created it died
        return None
    if meta.get("run_key") != key or meta.get("layer") != k:
        return None
    return spark.read.format("delta").load(path)


def run_layers(
    spark: SparkSession, graph: Graph, ref: ModelRef, config: ModelConfig, work: str, report: RunReport,
    broadcast_mb: int = 0, key: str = "", resume: bool = False,
) -> dict[str, DataFrame]:  # fmt: skip
    """The layer loop. Layer k turns h(k-1) of the source type and h(k-2) of the target type into
    h(k) of the target type; each layer is written before the next starts, as WORK/layer_<k>_<type>s
    tagged with `key`. Returns every layer's table by k (0 and -1 are the input node tables).

    When a layer's projections fit in `broadcast_mb` they are collected once and broadcast, and only
    (target, source, weight) rows are shuffled; otherwise projections are joined to the neighbour
    rows and shuffled with them. With `resume`, a layer already written under the same key is read
    back instead of computed."""
    current = dict(graph.nodes)
    layers = {0: graph.nodes["pin"], -1: graph.nodes["board"]}
    sc = spark.sparkContext
    counts = {"pin": report.input_rows["pins"], "board": report.input_rows.get("boards")}
    for layer in config.schedule():
        k, target, source = layer.k, layer.target, layer.source
        path = f"{work}/layer_{k}_{target}s"
        started = time.perf_counter()
        done = completed_layer(spark, path, key, k) if resume else None
        if done is not None:
            current[target] = layers[k] = done
            counts[target] = done.count()
            seconds = round(time.perf_counter() - started, 3)
            layer = LayerReport(k, target, source, 0, counts[target], 0, seconds, "resumed")
            log.info(
                "layer %d/%d resumed from %s: %d %ss", k, config.num_layers, path, counts[target], target
            )
            report.layers.append(layer)
            continue
        projected, written, pooled = sc.accumulator(0), sc.accumulator(0), sc.accumulator(0)
        sc.setJobDescription(
            f"layer {k}/{config.num_layers}: project {source}s with Q_{k}, pool into {target}s, apply W_{k}"
        )
        lookup, projections, size_mb = T.broadcast_if_small(
            sc,
            T.project(current[source], ref, k, projected),
            counts[source],
            config.hidden_dim,
            broadcast_mb,
            ref.projection_precision,
        )
        moved = "broadcast" if lookup is not None else "shuffled"
        if ref.projection_precision != "float32":
            moved += f" as {ref.projection_precision}"
        log.info("layer %d/%d: %ss from %ss (projections %.0f MB, %s)", k, config.num_layers, target, source,
                 size_mb, moved)  # fmt: skip
        gathered = T.gather(current[target], graph.neighbours[target], projections)
        meta = {"run_key": key, "run_id": report.run_id, "layer": k}
        write_delta(T.pool_and_combine(gathered, ref, k, written, pooled, lookup), path, meta)
        if lookup is not None:
            lookup.destroy()
        current[target] = layers[k] = spark.read.format("delta").load(path)
        counts[target] = written.value
        layer = LayerReport(
            k, target, source, projected.value, written.value, pooled.value,
            round(time.perf_counter() - started, 3), moved,
        )  # fmt: skip
        table = f"{target}_neighbors"
        report.dropped_rows.setdefault(table, report.input_rows[table] - pooled.value)
        log.info("layer %d/%d done: %s", k, config.num_layers, layer)
        report.layers.append(layer)
    return layers


def output_tables(
    layers: dict[int, DataFrame], ref: ModelRef, config: ModelConfig
) -> dict[str, DataFrame]:  # fmt: skip
    """What a run publishes under OUT, in publishing order: the board representations of every
    board layer below K-1 (board_layers/layer_<k>; what embed_new reuses when K > 2), then
    board_embeddings = h_b(K-1), and pin_embeddings last."""
    K = config.num_layers
    tables = {
        f"board_layers/layer_{k}": T.board_vectors(layers[k], config.layer(k).out_dim)
        for k in range(1, K - 1, 2)
    }
    tables["board_embeddings"] = T.board_vectors(layers[K - 1], config.embed_dim)
    tables["pin_embeddings"] = T.embed_pins(layers[K], ref)
    return tables


def publish(
    spark: SparkSession, layers: dict[int, DataFrame], ref: ModelRef, config: ModelConfig, out: str,
    report: RunReport, metadata: dict,
) -> None:  # fmt: skip
    """Replace each output table under `out` with one Delta commit carrying `metadata`. Readers of a
    table see its previous version until its commit lands; pin_embeddings is committed last, so
    once it shows this run's id every other output already does."""
    for name, df in output_tables(layers, ref, config).items():
        spark.sparkContext.setJobDescription(f"publish {name}")
        path = f"{out}/{name}"
        commit = write_delta_commit(df, path, metadata)
        version, rows = int(commit["version"]), commit["metrics"].get("numOutputRows")
        if rows is None:  # spark.databricks.delta.history.metricsEnabled=false: no commit metrics
            rows = spark.read.format("delta").option("versionAsOf", version).load(path).count()
        rows = int(rows)
        report.outputs[name] = {"path": path, "version": version, "rows": rows}
        log.info("published %s: %d rows, version %d", name, rows, version)


def run(spark: SparkSession, args: EmbedArgs, checkpoint: Checkpoint) -> RunReport:
    config = checkpoint.config
    run_id = new_run_id()
    report = RunReport(run_id, checkpoint.sha256, config.num_layers, config.pooling, args.device)
    clock = time.perf_counter()
    inputs = {name: snapshot(spark, name, path) for name, path in args.inputs().items()}
    key = run_key(checkpoint.sha256, inputs, args.projection_precision)
    work = f"{args.out}/_work/{key}"
    if not args.resume:
        delete_path(spark, work)
    graph = load_graph(spark, config, report, inputs)
    report.seconds["inputs"] = round(time.perf_counter() - clock, 3)

    ref = ModelRef(
        spark.sparkContext.broadcast(checkpoint.data),
        checkpoint.sha256,
        args.device,
        args.projection_precision,
    )
    clock = time.perf_counter()
    layers = run_layers(spark, graph, ref, config, work, report, args.broadcast_mb, key, args.resume)
    report.seconds["layers"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    metadata = {
        "run_id": run_id, "run_key": key, "checkpoint_sha256": checkpoint.sha256, "inputs": inputs,
        "model": {"num_layers": config.num_layers, "pooling": config.pooling, "embed_dim": config.embed_dim},
        "projection_precision": args.projection_precision,
    }  # fmt: skip
    publish(spark, layers, ref, config, args.out, report, metadata)
    report.seconds["publish"] = round(time.perf_counter() - clock, 3)
    if not args.keep_work:
        delete_work(spark, work)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> RunReport:
        # Before Spark starts, so a bad or swapped file fails fast; executors re-check the hash of the
        # broadcast bytes before parsing them.
        checkpoint = read_checkpoint(args.checkpoint, args.checkpoint_sha256)
        return run(get_spark("pinsage-embed", args.master, args.conf), args, checkpoint)

    return job_main(job, args.report_json)


if __name__ == "__main__":
    sys.exit(main())
