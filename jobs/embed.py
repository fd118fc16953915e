"""Embed every pin with a trained PinSage checkpoint, as a layer-wise chain of Spark jobs.

    spark-submit jobs/embed.py --pins P --edges E [--boards B] --board-neighbors BN
        --pin-neighbors PN --checkpoint C --out O [--device auto|cpu|cuda]

Each layer k projects every source node once with Q_k, gathers the projections to the targets that
pool them, applies W_k, and materialises h(k) as a Delta table before layer k+1 starts (the
MapReduce inference of the PinSage paper, section 3.4). The outputs are the Delta tables
O/pin_embeddings and O/board_embeddings.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession

from jobs.lib import transforms as T
from jobs.lib.cli import job_main, new_run_id
from jobs.lib.inference import ModelRef
from jobs.lib.io import InputError, delete_path, read_table, write_delta
from jobs.lib.report import LayerReport, RunReport
from jobs.lib.session import get_spark
from jobs.lib.validate import check_links, check_nodes, conform
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
    p.add_argument("--report-json", help="also write the run report as JSON to this local file")
    p.add_argument(
        "--broadcast-projections-mb", type=int, default=512, metavar="MB",
        help="broadcast a layer's projections instead of shuffling them when they are at most this big "
        "(0: never)",
    )  # fmt: skip
    a = p.parse_args(argv)
    conf = {}
    for item in a.conf:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--conf expects KEY=VALUE, got {item!r}")
        conf[key] = value
    return EmbedArgs(
        pins=a.pins, edges=a.edges, boards=a.boards, board_neighbors=a.board_neighbors,
        pin_neighbors=a.pin_neighbors, checkpoint=a.checkpoint, out=a.out.rstrip("/"),
        device=a.device, master=a.master, conf=conf, keep_work=a.keep_work, report_json=a.report_json,
        broadcast_mb=a.broadcast_projections_mb, checkpoint_sha256=a.checkpoint_sha256,
    )  # fmt: skip


@dataclass
class Graph:
    """Validated inputs as node tables (node_id, vec) and neighbour tables (dst, src, weight) per
    target type, all lazy."""

    nodes: dict[str, DataFrame]
    neighbours: dict[str, DataFrame]


def load_graph(spark: SparkSession, args: EmbedArgs, config: ModelConfig, report: RunReport) -> Graph:
    """Read and check every input. Everything that can reject the input runs here, before the first
    write; nothing is materialised: dangling neighbour rows fall out of the layer joins and are
    counted there."""
    spark.sparkContext.setJobDescription("validate inputs")
    pins = conform(read_table(spark, "pins", args.pins), "pins")
    edges = conform(read_table(spark, "edges", args.edges), "edges")
    links = {
        "board_neighbors": conform(
            read_table(spark, "board_neighbors", args.board_neighbors), "board_neighbors"
        ),
        "pin_neighbors": conform(read_table(spark, "pin_neighbors", args.pin_neighbors), "pin_neighbors"),
    }
    boards = conform(read_table(spark, "boards", args.boards), "boards") if args.boards else None
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


def run_layers(
    spark: SparkSession, graph: Graph, ref: ModelRef, config: ModelConfig, work: str, report: RunReport,
    broadcast_mb: int = 0,
) -> dict[str, DataFrame]:  # fmt: skip
    """The layer loop. Layer k turns h(k-1) of the source type and h(k-2) of the target type into
    h(k) of the target type; each layer is written before the next starts. Returns the last
    representation of each node type.

    When a layer's projections fit in `broadcast_mb` they are collected once and broadcast, and only
    (target, source, weight) rows are shuffled; otherwise projections are joined to the neighbour
    rows and shuffled with them."""
    current = dict(graph.nodes)
    sc = spark.sparkContext
    counts = {"pin": report.input_rows["pins"], "board": report.input_rows.get("boards")}
    for k in range(1, config.num_layers + 1):
        target, source = ModelConfig.target_type(k), ModelConfig.source_type(k)
        projected, written, pooled = sc.accumulator(0), sc.accumulator(0), sc.accumulator(0)
        started = time.perf_counter()
        sc.setJobDescription(
            f"layer {k}/{config.num_layers}: project {source}s with Q_{k}, pool into {target}s, apply W_{k}"
        )
        projections = T.project(current[source], ref, k, projected)
        size_mb = (counts[source] or 0) * config.hidden_dim * 4 / 2**20
        broadcast = counts[source] is not None and size_mb <= broadcast_mb
        log.info("layer %d/%d: %ss from %ss (projections %.0f MB, %s)", k, config.num_layers, target, source,
                 size_mb, "broadcast" if broadcast else "shuffled")  # fmt: skip
        lookup = None
        if broadcast:
            lookup = sc.broadcast(T.collect_projections(projections, config.hidden_dim))
            projections = None
        gathered = T.gather(current[target], graph.neighbours[target], projections)
        path = f"{work}/layer_{k}_{target}s"
        write_delta(T.pool_and_combine(gathered, ref, k, written, pooled, lookup), path)
        if lookup is not None:
            lookup.destroy()
        current[target] = spark.read.format("delta").load(path)
        counts[target] = written.value
        layer = LayerReport(
            k, target, source, projected.value, written.value, pooled.value,
            round(time.perf_counter() - started, 3), "broadcast" if broadcast else "shuffled",
        )  # fmt: skip
        table = f"{target}_neighbors"
        report.dropped_rows.setdefault(table, report.input_rows[table] - pooled.value)
        log.info("layer %d/%d done: %s", k, config.num_layers, layer)
        report.layers.append(layer)
    return current


def publish(
    spark: SparkSession, last: dict[str, DataFrame], ref: ModelRef, config: ModelConfig, args: EmbedArgs,
    report: RunReport,
) -> None:  # fmt: skip
    """Replace O/pin_embeddings and O/board_embeddings, one Delta commit each."""
    metadata = {"run_id": report.run_id, "checkpoint_sha256": report.checkpoint_sha256}
    tables = {
        "pin_embeddings": T.embed_pins(last["pin"], ref),
        "board_embeddings": T.board_vectors(last["board"], config.embed_dim),
    }
    for name, df in tables.items():
        spark.sparkContext.setJobDescription(f"publish {name}")
        path = f"{args.out}/{name}"
        version = write_delta(df, path, metadata)
        rows = spark.read.format("delta").load(path).count()
        report.outputs[name] = {"path": path, "version": version, "rows": rows}
        log.info("published %s: %d rows, version %d", name, rows, version)


def run(spark: SparkSession, args: EmbedArgs, checkpoint: Checkpoint) -> RunReport:
    config = checkpoint.config
    run_id = new_run_id()
    report = RunReport(run_id, checkpoint.sha256, config.num_layers, config.pooling, args.device)
    work = f"{args.out}/_work/{run_id}"
    clock = time.perf_counter()
    graph = load_graph(spark, args, config, report)
    report.seconds["inputs"] = round(time.perf_counter() - clock, 3)

    ref = ModelRef(spark.sparkContext.broadcast(checkpoint.data), checkpoint.sha256, args.device)
    clock = time.perf_counter()
    last = run_layers(spark, graph, ref, config, work, report, args.broadcast_mb)
    report.seconds["layers"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    publish(spark, last, ref, config, args, report)
    report.seconds["publish"] = round(time.perf_counter() - clock, 3)
    if not args.keep_work:
        delete_path(spark, work)
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
