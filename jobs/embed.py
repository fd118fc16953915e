"""Embed every pin with a trained PinSage checkpoint, as a layer-wise chain of Spark jobs.

    spark-submit jobs/embed.py --pins P --edges E [--boards B] --board-neighbors BN
        --pin-neighbors PN --checkpoint C --out O [--device auto|cpu|cuda] [--resume]

Each layer k projects every source node once with Q_k, gathers the projections to the targets that
pool them, applies W_k, and materialises h(k) as a Delta table before layer k+1 starts (the
MapReduce inference of the PinSage paper, section 3.4); the last layer applies the output head in
the same map.
The outputs are the Delta tables O/pin_embeddings and O/board_embeddings (and
O/board_layers/layer_<k> when K > 2). With --resume, a layer that a failed run with the same
checkpoint and inputs completed is read back, not recomputed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession

from jobs.lib.chain import board_tables, run_key, run_layer
from jobs.lib.cli import CommonArgs, add_common_args, add_model_args, job_args, model_job_main
from jobs.lib.inference import BadFeaturesError, ModelRef, inject_fault
from jobs.lib.io import (
    InputError,
    committed_rows,
    delete_path,
    delete_work,
    is_delta,
    last_commit,
    read_delta,
    read_snapshot,
    snapshot,
    write_delta_commit,
)
from jobs.lib.lease import note_run_key
from jobs.lib.provenance import software
from jobs.lib.report import LayerReport, RunReport, Stopwatch
from jobs.lib.transforms import (
    board_ids_from_links,
    board_vectors,
    links,
    node_table,
)
from jobs.lib.validate import check_links, check_nodes, conform
from pinsage_model.checkpoint import Checkpoint
from pinsage_model.config import LINEAR_POOLINGS, ModelConfig

log = logging.getLogger("pinsage.embed")

# What the work tables hold, recorded with each: --resume reuses only tables of this layout (2: the
# last layer's table holds the head's output).
WORK_FORMAT = 2


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
    broadcast_mb: int | None = None  # None: auto (`transforms.auto_broadcast_mb`)
    checkpoint_sha256: str | None = None
    resume: bool = False
    projection_precision: str = "float32"
    common: CommonArgs = CommonArgs()

    def inputs(self) -> dict[str, str]:
        """Input table name -> path, for the tables given."""
        paths = {
            "pins": self.pins,
            "edges": self.edges,
            "boards": self.boards,
            "board_neighbors": self.board_neighbors,
            "pin_neighbors": self.pin_neighbors,
        }
        return {name: path for name, path in paths.items() if path}


def parse_args(argv: list[str] | None = None) -> EmbedArgs:
    p = argparse.ArgumentParser(description="Embed every pin with a PinSage checkpoint on Spark.")
    p.add_argument("--pins", required=True, help="pins table: pin_id, features")
    p.add_argument("--edges", required=True, help="memberships: pin_id, board_id[, weight]")
    p.add_argument("--boards", help="optional boards table: board_id[, features]")
    p.add_argument("--board-neighbors", required=True, help="board_id, pin_id, weight")
    p.add_argument("--pin-neighbors", required=True, help="pin_id, board_id, weight")
    p.add_argument("--out", required=True, help="output root for the Delta tables")
    add_model_args(
        p, "broadcast a layer's projections instead of shuffling them when they are at most this big"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the layer tables a failed run with the same checkpoint and inputs completed",
    )
    add_common_args(p)
    a = p.parse_args(argv)
    return job_args(EmbedArgs, p, a, out=a.out.rstrip("/"))


@dataclass
class Graph:
    """Validated inputs as node tables (node_id, vec) and neighbor tables (dst, src, weight) per
    target type, all lazy. The pins' feature values are checked where layer 1 first reads them;
    `check_pin_features` is the full check that names what is wrong."""

    nodes: dict[str, DataFrame]
    neighbors: dict[str, DataFrame]
    targets_with_rows: dict[str, int]  # per target type, its ids in the neighbor table (approximate)
    check_pin_features: Callable[[], int]


def load_graph(spark: SparkSession, config: ModelConfig, report: RunReport, inputs: dict[str, dict]) -> Graph:
    """Read and check every input, Delta tables at the versions recorded in `inputs`. Everything
    that can reject the input runs here, before the first write, except the pins' feature values:
    they are 4 KB a pin at the paper's width, so layer 1's projection, which reads them anyway,
    checks them on the way (`run_layers`). Nothing is materialised: dangling neighbor rows fall out
    of the layer joins and are counted there."""
    spark.sparkContext.setJobDescription("validate inputs")

    def read(name: str) -> DataFrame:
        return conform(read_snapshot(spark, name, inputs[name]), name)

    pins, edges = read("pins"), read("edges")
    neighbor_tables = {name: read(name) for name in ("board_neighbors", "pin_neighbors")}
    boards = read("boards") if "boards" in inputs else None
    if boards is None and config.board_feature_dim > 0:
        raise InputError(
            "boards",
            "features",
            f"the checkpoint expects board features of width {config.board_feature_dim}, "
            "but no --boards table was given",
        )

    def dim_note(name: str) -> str:
        return f"the checkpoint's {name} is {getattr(config, name)}"

    report.input_rows["pins"] = check_nodes(pins, "pins", "pin_id", None, "")
    inject_fault("validate", 0)
    with_board_features = config.board_feature_dim > 0
    if boards is not None:
        board_dim = config.board_feature_dim if with_board_features else None
        report.input_rows["boards"] = check_nodes(
            boards, "boards", "board_id", board_dim, dim_note("board_feature_dim")
        )
    report.input_rows["edges"] = check_links(edges, "edges", ("pin_id", "board_id")).rows
    targets_with_rows = {}
    for name, df in neighbor_tables.items():
        stats = check_links(df, name, tuple(df.columns[:2]))
        report.input_rows[name] = stats.rows
        targets_with_rows[name.split("_")[0]] = stats.first_ids

    if boards is None:
        boards = board_ids_from_links(edges, *neighbor_tables.values())
    return Graph(
        nodes={
            "pin": node_table(pins, "pin_id", with_features=True),
            "board": node_table(boards, "board_id", with_features=with_board_features),
        },
        neighbors={
            "board": links(neighbor_tables["board_neighbors"], "board_id", "pin_id"),
            "pin": links(neighbor_tables["pin_neighbors"], "pin_id", "board_id"),
        },
        targets_with_rows=targets_with_rows,
        check_pin_features=lambda: check_nodes(
            pins, "pins", "pin_id", config.pin_feature_dim, dim_note("pin_feature_dim")
        ),
    )


def completed_layer(spark: SparkSession, path: str, key: str, k: int) -> DataFrame | None:
    """The layer table at `path` when an earlier run with the same key committed it, else None."""
    if not is_delta(spark, path):
        return None
    try:
        meta = last_commit(spark, path)["metadata"]
    except Exception:  # a _delta_log without a commit: the write that created it died
        return None
    if meta.get("run_key") != key or meta.get("layer") != k or meta.get("work_format") != WORK_FORMAT:
        return None
    return read_delta(spark, path)


def run_layers(
    spark: SparkSession,
    graph: Graph,
    ref: ModelRef,
    config: ModelConfig,
    work: str,
    report: RunReport,
    broadcast_mb: int | None = 0,
    key: str = "",
    resume: bool = False,
) -> dict[int, DataFrame]:
    """The layer loop over `config.schedule()`: layer k turns h(k-1) of the source type and h(k-2)
    of the target type into h(k) of the target type (`chain.run_layer`); each layer is written
    before the next starts, as WORK/layer_<k>_<type>s tagged with `key`; layer K applies the output
    head in the same map, so its table holds the rows pin_embeddings publishes. Returns every
    layer's table by k (0 and -1 are the input node tables). With `resume`, a layer already written
    under the same key is read back instead of computed (its run checked the same inputs).

    Layer 1 projects the input pins, so it checks their features on the way: a batch with a bad
    row fails the layer (`inference.BadFeaturesError`) before its table is committed, and the full
    check (`graph.check_pin_features`) then raises the InputError that names the rows."""
    current = dict(graph.nodes)
    layers = {0: graph.nodes["pin"], -1: graph.nodes["board"]}
    counts = {"pin": report.input_rows["pins"], "board": report.input_rows.get("boards")}
    K = config.num_layers
    for layer in config.schedule():
        k, target, source = layer.k, layer.target, layer.source
        path = f"{work}/layer_{k}_{target}s"
        clock = Stopwatch()
        done = completed_layer(spark, path, key, k) if resume else None
        if done is not None:
            counts[target] = done.count()
            current[target] = layers[k] = done
            log.info("layer %d/%d resumed from %s: %d %ss", k, K, path, counts[target], target)
            report.layers.append(
                LayerReport(k, target, source, 0, counts[target], 0, clock.seconds(), "resumed")
            )
            continue
        # Layer 1 projects the input pins: it checks their features as it reads them.
        unchecked = current[source] is graph.nodes["pin"]
        try:
            current[target], layer_report = run_layer(
                layer,
                ref,
                targets=current[target],
                neighbors=graph.neighbors[target],
                sources=current[source],
                source_rows=counts[source],
                path=path,
                broadcast_mb=broadcast_mb,
                description=f"layer {k}/{K}: project {source}s with Q_{k}, pool into {target}s, apply W_{k}",
                metadata={"run_key": key, "run_id": report.run_id, "layer": k, "work_format": WORK_FORMAT},
                with_head=k == K,
                target_rows=graph.targets_with_rows[target],
                neighbor_rows=report.input_rows[f"{target}_neighbors"],
                check_dim=config.pin_feature_dim if unchecked else None,
            )
        except Exception as exc:
            # Only a failed feature check pays for the full pass; any other failure is raised as is.
            if unchecked and BadFeaturesError.__name__ in str(exc):
                graph.check_pin_features()  # raises the InputError that names the rows
            raise
        layers[k] = current[target]
        counts[target] = layer_report.targets_written
        table = f"{target}_neighbors"
        report.dropped_rows.setdefault(table, report.input_rows[table] - layer_report.neighbor_rows)
        report.layers.append(layer_report)
    return layers


def output_tables(layers: dict[int, DataFrame], config: ModelConfig) -> dict[str, DataFrame]:
    """What a run publishes under OUT, in publishing order: the board representations of every
    board layer it keeps (`chain.board_tables`: board_layers/layer_<k>, what embed_new reuses when
    K > 2, then board_embeddings = h_b(K-1)), and pin_embeddings last (the last layer's table:
    its map applied the output head)."""
    tables = {
        name: board_vectors(layers[k], config.layer(k).out_dim)
        for k, name in board_tables(config.num_layers).items()
    }
    tables["pin_embeddings"] = layers[config.num_layers]
    return tables


def publish(
    spark: SparkSession,
    layers: dict[int, DataFrame],
    config: ModelConfig,
    out: str,
    report: RunReport,
    metadata: dict,
) -> None:
    """Replace each output table under `out` with one Delta commit carrying `metadata`. Readers of a
    table see its previous version until its commit lands; pin_embeddings is committed last, so
    once it shows this run's id every other output already does."""
    for i, (name, df) in enumerate(output_tables(layers, config).items(), 1):
        spark.sparkContext.setJobDescription(f"publish {name}")
        path = f"{out}/{name}"
        commit = write_delta_commit(df, path, metadata)
        version, rows = int(commit["version"]), committed_rows(spark, path, commit)
        report.outputs[name] = {"path": path, "version": version, "rows": rows}
        log.info("published %s: %d rows, version %d", name, rows, version)
        inject_fault("publish", i)


def run(spark: SparkSession, args: EmbedArgs, checkpoint: Checkpoint) -> RunReport:
    config = checkpoint.config
    run_id = args.common.run_id
    report = RunReport(run_id, checkpoint.sha256, config.num_layers, config.pooling, args.device)
    with report.timed("inputs"):
        inputs = {name: snapshot(spark, name, path) for name, path in args.inputs().items()}
        key = run_key(checkpoint.sha256, inputs, args.projection_precision)
        note_run_key(key)
        work = f"{args.out}/_work/{key}"
        if not args.resume:
            delete_path(spark, work)
        graph = load_graph(spark, config, report, inputs)

    ref = ModelRef(
        spark.sparkContext.broadcast(checkpoint.data),
        checkpoint.sha256,
        args.device,
        args.projection_precision,
        linear_pooling=config.pooling in LINEAR_POOLINGS,
    )
    with report.timed("layers"):
        try:
            layers = run_layers(spark, graph, ref, config, work, report, args.broadcast_mb, key, args.resume)
        except InputError:  # the pins' features, checked in layer 1: leave --out as it was
            if not args.resume:
                delete_work(spark, work)
            raise

    with report.timed("publish"):
        metadata = {
            "run_id": run_id,
            "run_key": key,
            "checkpoint_sha256": checkpoint.sha256,
            "inputs": inputs,
            "model": {
                "num_layers": config.num_layers,
                "pooling": config.pooling,
                "embed_dim": config.embed_dim,
            },
            "projection_precision": args.projection_precision,
            "software": software(spark),
        }
        publish(spark, layers, config, args.out, report, metadata)
    if not args.common.keep_work:
        delete_work(spark, work)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return model_job_main("pinsage-embed", args, run, writes=args.out)


if __name__ == "__main__":
    sys.exit(main())
