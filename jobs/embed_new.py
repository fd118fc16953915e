"""Embed pins that arrived after the last full run, inductively, and merge them into its output.

    spark-submit jobs/embed_new.py --new-pins P --new-edges E --base O --checkpoint C [--related R]

New pins (and existing pins listed again, e.g. with new features or memberships) get their
neighborhoods from the same random walk as jobs/neighborhoods.py, over the base run's edges plus
the new edges, walked from these pins only. Their pin layers k = 2, 4, ..., K are then computed with
the model of the full run, pooling the board representations h_b(k-1) that the full run stored
(O/board_embeddings, and O/board_layers/layer_<k> when K > 2: jobs.lib.chain.board_tables); no
board is recomputed. The result is merged into O/pin_embeddings with one Delta MERGE: new pins
inserted, pins already there updated. With --related R (the output root of the base run's
jobs/related.py --method ann), the embedded pins then get their related lists from R/related_index,
merged into R/related_pins with a second MERGE that replaces these pins' rows.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.lib import walks
from jobs.lib.chain import board_tables, run_key, run_layer
from jobs.lib.cli import (
    CommonArgs,
    add_common_args,
    add_model_args,
    add_walks_per_batch,
    job_args,
    model_job_main,
)
from jobs.lib.inference import ModelRef, inject_fault
from jobs.lib.io import (
    InputError,
    delete_work,
    is_delta,
    last_commit,
    merge_delta,
    path_exists,
    qualified,
    read_delta,
    read_snapshot,
    snapshot,
    write_and_reload,
)
from jobs.lib.lease import held
from jobs.lib.provenance import software
from jobs.lib.related import WrittenIndex, index_related, read_written_index, replacement_rows
from jobs.lib.report import Report
from jobs.lib.transforms import embed_pins, links, node_table
from jobs.lib.validate import check_links, check_nodes, conform
from pinsage_model.checkpoint import Checkpoint
from pinsage_model.config import LINEAR_POOLINGS, ModelConfig

log = logging.getLogger("pinsage.embed_new")


@dataclass(frozen=True)
class EmbedNewArgs:
    new_pins: str
    new_edges: str
    base: str
    checkpoint: str
    checkpoint_sha256: str | None = None
    edges: str | None = None  # the base graph's edges; default: what the base run recorded
    related: str | None = None  # output root of the base run's jobs/related.py --method ann
    walks_per_batch: int = 25
    broadcast_mb: int | None = None  # None: auto (`transforms.auto_broadcast_mb`)
    device: str = "auto"
    projection_precision: str = "float32"
    common: CommonArgs = CommonArgs()


def parse_args(argv: list[str] | None = None) -> EmbedNewArgs:
    p = argparse.ArgumentParser(description="Embed new pins against the last full run and merge them in.")
    p.add_argument("--new-pins", required=True, help="pins to (re-)embed: pin_id, features")
    p.add_argument("--new-edges", required=True, help="their memberships: pin_id, board_id[, weight]")
    p.add_argument("--base", required=True, help="output root of the last full jobs/embed.py run")
    p.add_argument("--edges", help="the base graph's edges (default: the table the base run recorded)")
    p.add_argument(
        "--related",
        metavar="R",
        help="output root of the base run's jobs/related.py --method ann: give the embedded pins related "
        "lists from R/related_index and merge them into R/related_pins",
    )
    add_walks_per_batch(p)
    add_model_args(
        p,
        "broadcast the projected boards instead of shuffling them when they are at most this big "
        "(rows x hidden_dim x 4 bytes)",
    )
    add_common_args(p)
    a = p.parse_args(argv)
    related = a.related.rstrip("/") if a.related else None
    return job_args(EmbedNewArgs, p, a, base=a.base.rstrip("/"), related=related)


@dataclass
class EmbedNewReport(Report):
    run_id: str
    base_run_id: str
    checkpoint_sha256: str
    counts: dict[str, int] = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    related: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        lines = [f"run {self.run_id}: new pins against full run {self.base_run_id}"]
        lines += [f"  {k}: {v:,}" for k, v in self.counts.items()]
        if self.output:
            lines.append(
                f"merged into {self.output['path']}: version {self.output['version']}, "
                f"{self.output['inserted']:,} inserted, {self.output['updated']:,} updated"
            )
        if self.related:
            r = self.related
            lines.append(
                f"related lists from the index of run {r['index_run_id']} merged into {r['path']}: "
                f"version {r['version']}, {r['inserted']:,} rows inserted, {r['updated']:,} updated, "
                f"{r['deleted']:,} deleted"
            )
        return lines


@dataclass(frozen=True)
class Base:
    """What the last full run left: its record (commit metadata) and its board representations."""

    run_id: str
    metadata: dict
    walk: walks.WalkParams
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
            "pin_embeddings",
            None,
            f"was computed with checkpoint sha256 {meta.get('checkpoint_sha256')}, but --checkpoint has "
            f"{checkpoint_sha256}: new pins must be embedded with the model of the full run",
        )
    boards = {k: f"{root}/{name}" for k, name in board_tables(config.num_layers).items()}
    for k, path in boards.items():
        name = path.removeprefix(root + "/")
        if not is_delta(spark, path):
            raise InputError(name, None, f"{path} is missing: the full run's h_b({k}) is needed")
        stored = last_commit(spark, path)["metadata"].get("run_id")
        if stored != run_id:
            raise InputError(name, None, f"belongs to run {stored}, pin_embeddings to run {run_id}")
    pin_neighbors = meta["inputs"].get("pin_neighbors", {}).get("path")
    if pin_neighbors and not path_exists(spark, pin_neighbors):
        raise InputError(
            "pin_neighbors",
            None,
            f"missing: nothing at {pin_neighbors}, the path the base run recorded in {pins_path}",
        )
    walk_params = None
    if pin_neighbors and is_delta(spark, pin_neighbors):
        walk_params = last_commit(spark, pin_neighbors)["metadata"].get("walk")
    if walk_params is None:
        raise InputError(
            "pin_neighbors",
            None,
            f"{pin_neighbors} does not record the walk that built it (it was not written by "
            "jobs/neighborhoods.py), so new pins cannot get neighborhoods drawn the same way",
        )
    return Base(run_id, meta, walks.WalkParams(**walk_params), boards)


def walk_edges(spark: SparkSession, base_edges: dict, new_edges: DataFrame) -> DataFrame:
    """The base graph's memberships (at the recorded version) plus the new ones, as the neighborhood
    job builds its graph: NULL ids dropped, a membership listed twice kept once with its largest
    weight."""
    if not path_exists(spark, base_edges["path"]):
        raise InputError(
            "edges",
            None,
            f"missing: nothing at {base_edges['path']}, the path the base run recorded",
        )
    edges = conform(read_snapshot(spark, "edges", base_edges), "edges")
    return walks.memberships(edges.unionByName(new_edges))


def board_layer(spark: SparkSession, path: str) -> DataFrame:
    """A stored board layer (board_id, embedding) as a node table (node_id, vec)."""
    stored = read_delta(spark, path)
    return stored.select(F.col("board_id").alias("node_id"), F.col("embedding").alias("vec"))


def new_pin_neighbors(
    spark: SparkSession, base: Base, pins: DataFrame, edges: DataFrame, walks_per_batch: int, work: str
) -> tuple[DataFrame, int]:
    """The new pins' neighbor rows (dst, src, weight), walked as the base run's neighborhoods were,
    and how many of the pins have a membership to walk from. A pin without one has no walk; when
    none has, the walk graph is not built."""
    edges = write_and_reload(edges, f"{work}/edges")
    walking = pins.join(edges.select("pin_id"), "pin_id", "left_semi").count()
    if walking == 0:
        none = spark.createDataFrame([], "pin_id bigint, board_id bigint, weight float")
        return links(none, "pin_id", "board_id"), 0
    graph = walks.build_walk_graph(edges, work)
    sources = pins.select(F.lit(walks.PIN).alias("node_t"), F.col("pin_id").alias("node"))
    counts = walks.run_walks(graph, base.walk, walks_per_batch, work, sources)
    top = walks.top_neighbor_tables(counts, base.walk.top_t)["pin_neighbors"]
    return links(write_and_reload(top, f"{work}/pin_neighbors"), "pin_id", "board_id"), walking


def merge_related(
    spark: SparkSession, index: WrittenIndex, embedded: DataFrame, pins: DataFrame, metadata: dict
) -> dict:
    """Replace the related lists of the embedded `pins` (pin_id) in the index's related_pins table
    by their lookups in the index (`embedded`: pin_id, vec) in one MERGE; the other pins' rows are
    not touched."""
    spark.sparkContext.setJobDescription("merge into related_pins")
    new = index_related(index, embedded)
    old = read_delta(spark, index.table, index.version)
    source = replacement_rows(new, pins, old)
    commit = merge_delta(source, index.table, ("pin_id", "rank"), metadata, drop="drop")
    metrics = commit["metrics"]
    return {
        "path": index.table,
        "index_run_id": index.run_id,
        "version": commit["version"],
        "inserted": int(metrics.get("numTargetRowsInserted", 0)),
        "updated": int(metrics.get("numTargetRowsUpdated", 0)),
        "deleted": int(metrics.get("numTargetRowsDeleted", 0)),
    }


def run(spark: SparkSession, args: EmbedNewArgs, checkpoint: Checkpoint) -> EmbedNewReport:
    if args.related and qualified(spark, args.related) != qualified(spark, args.base):
        # The run writes R/related_pins too: it holds R's lease as jobs/related.py does.
        with held(spark, args.related, args.common.run_id, args.common.lease_timeout):
            return embed_and_merge(spark, args, checkpoint)
    return embed_and_merge(spark, args, checkpoint)


def embed_and_merge(spark: SparkSession, args: EmbedNewArgs, checkpoint: Checkpoint) -> EmbedNewReport:
    config = checkpoint.config
    base = read_base(spark, args.base, config, checkpoint.sha256)
    # Checked before anything is computed or written, as the base is.
    index = read_written_index(spark, args.related, base.run_id) if args.related else None
    report = EmbedNewReport(args.common.run_id, base.run_id, checkpoint.sha256)
    sc = spark.sparkContext
    work = f"{args.base}/_work/{report.run_id}"

    with report.timed("inputs"):
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

    with report.timed("walks"):
        edges = walk_edges(spark, base_edges, new_edges)
        neighbors, walking = new_pin_neighbors(spark, base, pins, edges, args.walks_per_batch, work)
        report.counts["pins with memberships (walked)"] = walking
        report.counts["neighbor rows"] = neighbors.count()

    ref = ModelRef(
        sc.broadcast(checkpoint.data),
        checkpoint.sha256,
        args.device,
        args.projection_precision,
        linear_pooling=config.pooling in LINEAR_POOLINGS,
    )
    key = run_key(checkpoint.sha256, {**inputs, "edges": base_edges}, args.projection_precision)
    with report.timed("layers"):
        current = node_table(pins, "pin_id", with_features=True)
        K = config.num_layers
        for layer in (layer for layer in config.schedule() if layer.target == "pin"):
            k = layer.k
            sc.setJobDescription(f"layer {k}/{K}: find the stored boards h_b({k - 1}) new pins pool")
            # Only the boards some new pin pools are projected.
            boards = board_layer(spark, base.boards[k - 1]).join(
                neighbors.select(F.col("src").alias("node_id")).distinct(), "node_id", "left_semi"
            )
            current, layer_report = run_layer(
                layer,
                ref,
                targets=current,
                neighbors=neighbors,
                sources=boards,
                source_rows=boards.count(),
                path=f"{work}/layer_{k}_pins",
                broadcast_mb=args.broadcast_mb,
                description=f"layer {k}/{K}: new pins from stored h_b({k - 1}) with Q_{k}, W_{k}",
                metadata={"run_key": key, "run_id": report.run_id, "layer": k},
            )
            report.counts[f"layer {k}: stored boards projected"] = layer_report.sources_projected
            # A board that only the new edges create has no stored representation until the next full run.
            report.counts[f"layer {k}: neighbor rows naming boards without a stored h_b (dropped)"] = (
                report.counts["neighbor rows"] - layer_report.neighbor_rows
            )

    with report.timed("merge"):
        sc.setJobDescription("merge into pin_embeddings")
        metadata = {
            **base.metadata,
            "run_id": report.run_id,
            "base_run_id": base.run_id,
            "operation": "embed_new",
            "new_inputs": inputs,
            "new_pins_projection_precision": args.projection_precision,
            "software": software(spark),
        }
        path = f"{args.base}/pin_embeddings"
        commit = merge_delta(embed_pins(current, ref), path, "pin_id", metadata)
        report.output = {
            "path": path,
            "version": commit["version"],
            "inserted": int(commit["metrics"].get("numTargetRowsInserted", 0)),
            "updated": int(commit["metrics"].get("numTargetRowsUpdated", 0)),
        }
    if index is not None:
        inject_fault("merge", 1)
        with report.timed("related"):
            # The embeddings as the MERGE stored them, so the lists score exactly what readers see.
            ids = pins.select("pin_id")
            embedded = read_delta(spark, path, report.output["version"]).join(ids, "pin_id", "left_semi")
            embedded = embedded.select("pin_id", F.col("embedding").alias("vec"))
            related_metadata = {
                **index.record,
                "run_id": report.run_id,
                "related_run_id": index.run_id,
                "operation": "embed_new",
                "new_inputs": inputs,
                "pin_embeddings": {"path": qualified(spark, path), "version": report.output["version"]},
                "software": software(spark),
            }
            report.related = merge_related(spark, index, embedded, ids, related_metadata)
    if not args.common.keep_work:
        delete_work(spark, work)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return model_job_main("pinsage-embed-new", args, run, writes=args.base)


if __name__ == "__main__":
    sys.exit(main())
