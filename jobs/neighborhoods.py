"""Importance neighbourhoods from random walks with restart: the board_neighbors and pin_neighbors
tables that jobs/embed.py pools over.

    spark-submit jobs/neighborhoods.py --edges E --out O [--pins P] [--boards B]
        [--walks-per-node 100] [--walk-length 8] [--restart-prob 0.3] [--top-t 50] [--seed 0]
        [--walks-per-batch 25]

From every node with edges, `walks-per-node` walks of `walk-length` steps each; at each step the
walker jumps back to its source with probability `restart-prob`, else moves to a neighbour drawn
proportionally to edge weight. Each step that lands on a node of the other type than the source
counts one visit. A source's neighbourhood is its `top-t` most visited nodes (ties to the smaller
id), weighted by visit count over the kept counts' sum. Writes Delta tables O/board_neighbors and
O/pin_neighbors.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.lib import walks as W
from jobs.lib.cli import job_main, new_run_id, spark_conf
from jobs.lib.io import delete_path, read_table, snapshot, write_delta
from jobs.lib.session import get_spark
from jobs.lib.validate import check_links, check_nodes, conform

log = logging.getLogger("pinsage.neighborhoods")


@dataclass(frozen=True)
class NeighbourhoodArgs:
    edges: str
    out: str
    pins: str | None = None
    boards: str | None = None
    params: W.WalkParams = field(default_factory=W.WalkParams)
    walks_per_batch: int = 25
    master: str | None = None
    conf: dict[str, str] = field(default_factory=dict)
    keep_work: bool = False
    report_json: str | None = None


def parse_args(argv: list[str] | None = None) -> NeighbourhoodArgs:
    d = W.WalkParams()
    p = argparse.ArgumentParser(description="Random-walk importance neighbourhoods on Spark.")
    p.add_argument("--edges", required=True, help="memberships: pin_id, board_id[, weight]")
    p.add_argument("--out", required=True, help="output root for board_neighbors and pin_neighbors")
    p.add_argument(
        "--pins", help="pins table: edges naming other pins are dropped; pins without edges reported"
    )
    p.add_argument("--boards", help="boards table: edges naming other boards are dropped")
    p.add_argument("--walks-per-node", type=int, default=d.walks_per_node)
    p.add_argument("--walk-length", type=int, default=d.walk_length)
    p.add_argument("--restart-prob", type=float, default=d.restart_prob)
    p.add_argument("--top-t", type=int, default=d.top_t)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--walks-per-batch", type=int, default=25, help="walk indices simulated per Spark job")
    p.add_argument("--master", help="Spark master when run with python (default local[*])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf")
    p.add_argument("--keep-work", action="store_true", help="keep intermediate tables in OUT/_work")
    p.add_argument("--report-json", help="also write the run report as JSON to this local file")
    a = p.parse_args(argv)
    try:
        params = W.WalkParams(a.walks_per_node, a.walk_length, a.restart_prob, a.top_t, a.seed)
    except ValueError as exc:
        p.error(str(exc))
    if a.walks_per_batch < 1:
        p.error("--walks-per-batch must be at least 1")
    conf = spark_conf(p, a.conf)
    return NeighbourhoodArgs(
        a.edges, a.out.rstrip("/"), a.pins, a.boards, params, a.walks_per_batch, a.master, conf,
        a.keep_work, a.report_json,
    )  # fmt: skip


@dataclass
class NeighbourhoodReport:
    run_id: str
    params: dict
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"run {self.run_id}: " + ", ".join(f"{k} {v}" for k, v in self.params.items())]
        lines += [f"  {k}: {v:,}" for k, v in self.counts.items()]
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def clean_edges(spark: SparkSession, args: NeighbourhoodArgs, report: NeighbourhoodReport) -> DataFrame:
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
    return W.memberships(kept)


def run(spark: SparkSession, args: NeighbourhoodArgs) -> NeighbourhoodReport:
    params = args.params
    run_id = new_run_id()
    report = NeighbourhoodReport(run_id, {k: getattr(params, k) for k in params.__dataclass_fields__})
    work = f"{args.out}/_work/{run_id}"
    sc = spark.sparkContext
    clock = time.perf_counter()
    inputs = {
        name: snapshot(spark, name, path)
        for name, path in (("edges", args.edges), ("pins", args.pins), ("boards", args.boards))
        if path
    }

    sc.setJobDescription("validate and deduplicate edges")
    edges = clean_edges(spark, args, report)
    write_delta(edges, f"{work}/edges")
    edges = spark.read.format("delta").load(f"{work}/edges")
    report.counts["edges kept"] = edges.count()
    report.counts["duplicate memberships (merged)"] = (
        report.counts["edges read"]
        - report.counts["edges with NULL ids (dropped)"]
        - report.counts["edges naming unknown nodes (dropped)"]
        - report.counts["edges kept"]
    )

    graph = W.build_walk_graph(edges, work)
    node_counts = {r["node_t"]: r["count"] for r in graph.stats.groupBy("node_t").count().collect()}
    report.counts["pins with edges"] = node_counts.get(W.PIN, 0)
    report.counts["boards with edges"] = node_counts.get(W.BOARD, 0)
    for node_table, kind in (("pins", "pin"), ("boards", "board")):
        if f"{node_table} read" in report.counts:
            isolated = report.counts[f"{node_table} read"] - report.counts[f"{kind}s with edges"]
            report.counts[f"isolated {node_table} (empty neighbourhood)"] = isolated
    report.seconds["prepare"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    counts = W.run_walks(graph, params, args.walks_per_batch, work)
    walks = (report.counts["pins with edges"] + report.counts["boards with edges"]) * params.walks_per_node
    report.counts["walks"] = walks
    report.seconds["walks"] = round(time.perf_counter() - clock, 3)
    report.counts["walks per second"] = int(walks / max(report.seconds["walks"], 1e-9))

    clock = time.perf_counter()
    metadata = {"run_id": run_id, "walk": report.params, "inputs": inputs}
    for name, df in W.top_neighbor_tables(counts, params.top_t).items():
        sc.setJobDescription(f"publish {name}")
        write_delta(df, f"{args.out}/{name}", metadata)
        report.counts[f"{name} rows"] = spark.read.format("delta").load(f"{args.out}/{name}").count()
    report.seconds["publish"] = round(time.perf_counter() - clock, 3)
    if not args.keep_work:
        delete_path(spark, work)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return job_main(
        lambda: run(get_spark("pinsage-neighborhoods", args.master, args.conf), args), args.report_json
    )


if __name__ == "__main__":
    sys.exit(main())
