"""Importance neighborhoods from random walks with restart: the board_neighbors and pin_neighbors
tables that jobs/embed.py pools over.

    spark-submit jobs/neighborhoods.py --edges E --out O [--pins P] [--boards B]
        [--walks-per-node 100] [--walk-length 8] [--restart-prob 0.3] [--top-t 50] [--seed 0]
        [--walks-per-batch 25]

From every node with edges, `walks-per-node` walks of `walk-length` steps each; at each step the
walker jumps back to its source with probability `restart-prob`, else moves to a neighbor drawn
proportionally to edge weight. Each step that lands on a node of the other type than the source
counts one visit. A source's neighborhood is its `top-t` most visited nodes (ties to the smaller
id), weighted by visit count over the kept counts' sum. Writes Delta tables O/board_neighbors and
O/pin_neighbors.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.lib import walks
from jobs.lib.cli import CommonArgs, add_common_args, add_walk_args, job_args, spark_job_main
from jobs.lib.io import (
    committed_rows,
    delete_path,
    read_table,
    snapshot,
    write_and_reload,
    write_delta_commit,
)
from jobs.lib.provenance import software
from jobs.lib.report import Report
from jobs.lib.validate import check_links, check_nodes, conform

log = logging.getLogger("pinsage.neighborhoods")


@dataclass(frozen=True)
class NeighborhoodArgs:
    edges: str
    out: str
    pins: str | None = None
    boards: str | None = None
    params: walks.WalkParams = field(default_factory=walks.WalkParams)
    walks_per_batch: int = 25
    common: CommonArgs = CommonArgs()


def parse_args(argv: list[str] | None = None) -> NeighborhoodArgs:
    defaults = walks.WalkParams()
    p = argparse.ArgumentParser(description="Random-walk importance neighborhoods on Spark.")
    p.add_argument("--edges", required=True, help="memberships: pin_id, board_id[, weight]")
    p.add_argument("--out", required=True, help="output root for board_neighbors and pin_neighbors")
    p.add_argument(
        "--pins", help="pins table: edges naming other pins are dropped; pins without edges reported"
    )
    p.add_argument("--boards", help="boards table: edges naming other boards are dropped")
    add_walk_args(p, defaults.walks_per_node, top_t=defaults.top_t)
    add_common_args(p)
    a = p.parse_args(argv)
    params = walks.WalkParams(a.walks_per_node, a.walk_length, a.restart_prob, a.top_t, a.seed)
    return job_args(NeighborhoodArgs, p, a, out=a.out.rstrip("/"), params=params)


@dataclass
class NeighborhoodReport(Report):
    run_id: str
    params: dict
    counts: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        lines = [f"run {self.run_id}: " + ", ".join(f"{k} {v}" for k, v in self.params.items())]
        return lines + [f"  {k}: {v:,}" for k, v in self.counts.items()]


def clean_edges(spark: SparkSession, args: NeighborhoodArgs, report: NeighborhoodReport) -> DataFrame:
    """Validated, deduplicated memberships between known nodes; what was dropped is counted."""
    edges = conform(read_table(spark, "edges", args.edges), "edges")
    stats = check_links(edges, "edges", ("pin_id", "board_id"))
    report.counts["edges read"] = stats.rows
    report.counts["edges with NULL ids (dropped)"] = stats.null_ids
    kept = edges.where(F.col("pin_id").isNotNull() & F.col("board_id").isNotNull())
    known = stats.rows - stats.null_ids
    for table, path, column in (("pins", args.pins, "pin_id"), ("boards", args.boards, "board_id")):
        if path:
            nodes = conform(read_table(spark, table, path), table)
            report.counts[f"{table} read"] = check_nodes(nodes, table, column, None, "")
            kept = kept.join(nodes.select(column), column, "left_semi")
    if args.pins or args.boards:
        known = kept.count()
    report.counts["edges naming unknown nodes (dropped)"] = stats.rows - stats.null_ids - known
    return walks.memberships(kept)


def count_nodes(graph: walks.WalkGraph, report: NeighborhoodReport) -> None:
    """Nodes with edges per type, and the nodes of a given node table without any (isolated)."""
    node_counts = {r["node_t"]: r["count"] for r in graph.stats.groupBy("node_t").count().collect()}
    report.counts["pins with edges"] = node_counts.get(walks.PIN, 0)
    report.counts["boards with edges"] = node_counts.get(walks.BOARD, 0)
    for node_table, kind in (("pins", "pin"), ("boards", "board")):
        if f"{node_table} read" in report.counts:
            isolated = report.counts[f"{node_table} read"] - report.counts[f"{kind}s with edges"]
            report.counts[f"isolated {node_table} (empty neighborhood)"] = isolated


def run(spark: SparkSession, args: NeighborhoodArgs) -> NeighborhoodReport:
    params = args.params
    run_id = args.common.run_id
    report = NeighborhoodReport(run_id, asdict(params))
    work = f"{args.out}/_work/{run_id}"
    sc = spark.sparkContext
    with report.timed("prepare"):
        inputs = {
            name: snapshot(spark, name, path)
            for name, path in (("edges", args.edges), ("pins", args.pins), ("boards", args.boards))
            if path
        }
        sc.setJobDescription("validate and deduplicate edges")
        edges = write_and_reload(clean_edges(spark, args, report), f"{work}/edges")
        report.counts["edges kept"] = edges.count()
        report.counts["duplicate memberships (merged)"] = (
            report.counts["edges read"]
            - report.counts["edges with NULL ids (dropped)"]
            - report.counts["edges naming unknown nodes (dropped)"]
            - report.counts["edges kept"]
        )
        graph = walks.build_walk_graph(edges, work)
        count_nodes(graph, report)

    with report.timed("walks"):
        counts = walks.run_walks(graph, params, args.walks_per_batch, work)
    walk_count = (
        report.counts["pins with edges"] + report.counts["boards with edges"]
    ) * params.walks_per_node
    report.counts["walks"] = walk_count
    report.counts["walks per second"] = int(walk_count / max(report.seconds["walks"], 1e-9))

    with report.timed("publish"):
        metadata = {"run_id": run_id, "walk": report.params, "inputs": inputs, "software": software(spark)}
        for name, df in walks.top_neighbor_tables(counts, params.top_t).items():
            sc.setJobDescription(f"publish {name}")
            path = f"{args.out}/{name}"
            report.counts[f"{name} rows"] = committed_rows(
                spark, path, write_delta_commit(df, path, metadata)
            )
    if not args.common.keep_work:
        delete_path(spark, work)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return spark_job_main("pinsage-neighborhoods", args, run, writes=args.out)


if __name__ == "__main__":
    sys.exit(main())
