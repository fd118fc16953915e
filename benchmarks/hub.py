"""Benchmark a hub board: the neighborhood job's top-T bound and task skew in the embed job's stages.

    python benchmarks/hub.py [--pins 1000000] [--hub 1000000] [--top-t 20] [--out DIR]

Generates a graph with jobs/demo/generate_graph.py's generator (5 memberships per pin on average, as in
benchmarks/embed.py) plus one hub board holding `--hub` distinct pins, and writes it as Parquet. Then:

1. runs jobs/neighborhoods.py and asserts the top-T bound: the hub has at most T rows in
   board_neighbors and no pin has more than T in pin_neighbors; it reports how many distinct nodes
   the walks visited before the cut (so the bound is seen to bind) and the hub's in-degree in
   pin_neighbors (how many pins keep the hub among their top T boards);
2. embeds every pin twice with jobs/embed.py on those tables, once with projections broadcast
   (`--broadcast-projections-mb 512`, the default) and once with the shuffle join (`0`), and reads
   every task's duration from the Spark UI's REST API. Per layer it reports the stage that pools and
   writes the layer (the stage with output records) and any stage that reads one shuffle and writes
   the next ("regroup": with the shuffle join, the join of projections to neighbor rows on the
   source; in layer 1 also the distinct board ids); for each: tasks, median and max task
   seconds, max/median, and which task holds the hub's rows (found by matching each task's shuffle
   records against the hub's hash partition).

Results go to DIR/hub.json and print as markdown rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import statistics
import time
import urllib.request

import numpy as np
import pyarrow as pa

# benchmarks/ is the script's directory, so it is on sys.path: the embedding benchmark's graph sizes.
from embed import graph_spec
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import embed, neighborhoods
from jobs.demo.generate_graph import generate, write_tables
from jobs.lib.io import delete_path, read_delta
from jobs.lib.report import Stopwatch
from jobs.lib.session import get_spark
from pinsage_model.checkpoint import read_checkpoint, save_checkpoint
from pinsage_model.config import ModelConfig
from pinsage_model.model import random_model

MODEL = (32, 64, 32)  # the embedding benchmark's small model: features, hidden, embedding


def hub_graph(pins: int, hub: int, root: str) -> dict:
    """Write pins and edges under ROOT: the generator's graph plus one board holding `hub` distinct
    pins (every pin when hub == pins). Returns the hub's id and the table sizes."""
    tables = generate(graph_spec(pins, MODEL[0]))
    edges = tables["edges"]
    hub_id = int(np.max(edges.column("board_id").to_numpy())) + 1
    members = np.sort(np.random.default_rng(11).choice(pins, hub, replace=False)).astype(np.int64)
    hub_edges = pa.table(
        {
            "pin_id": members,
            "board_id": np.full(hub, hub_id, np.int64),
            "weight": np.ones(hub, np.float32),
        }
    )
    edges = pa.concat_tables([edges, hub_edges])
    write_tables({"pins": tables["pins"], "edges": edges}, root)
    boards = len(np.unique(edges.column("board_id").to_numpy()))
    return {"hub_id": hub_id, "pins": pins, "boards": boards, "edges": edges.num_rows, "hub_members": hub}


def check_top_t(spark: SparkSession, out: str, work: str, hub_id: int, top_t: int) -> dict:
    """Assert the top-T bound on the published neighbor tables; the walks' distinct visits before
    the cut (from the kept visit counts) show whether the bound had anything to cut."""
    bn = read_delta(spark, f"{out}/board_neighbors")
    pn = read_delta(spark, f"{out}/pin_neighbors")
    per_board = bn.groupBy("board_id").count()
    per_pin = pn.groupBy("pin_id").count()
    visits = read_delta(spark, f"{work}/counts").select("src_t", "src", "visited").distinct()
    before = visits.groupBy("src_t", "src").count()
    r = {
        "hub_board_neighbors_rows": bn.where(F.col("board_id") == hub_id).count(),
        "max_board_neighbors_rows_per_board": per_board.agg(F.max("count")).first()[0],
        "max_pin_neighbors_rows_per_pin": per_pin.agg(F.max("count")).first()[0],
        "hub_in_degree_pin_neighbors": pn.where(F.col("board_id") == hub_id).count(),
        "pins_in_pin_neighbors": per_pin.count(),
        "hub_distinct_pins_visited": before.where((F.col("src_t") == 1) & (F.col("src") == hub_id))
        .select("count")
        .first()[0],
        "max_distinct_boards_visited_per_pin": before.where(F.col("src_t") == 0)
        .agg(F.max("count"))
        .first()[0],
    }
    assert r["hub_board_neighbors_rows"] <= top_t, r
    assert r["max_board_neighbors_rows_per_board"] <= top_t, r
    assert r["max_pin_neighbors_rows_per_pin"] <= top_t, r
    return r


def rest(spark: SparkSession, path: str):
    sc = spark.sparkContext
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/{path}"
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def job_ids(spark: SparkSession) -> set[int]:
    return {j["jobId"] for j in rest(spark, "jobs")}


def layer_stages(spark: SparkSession, before: set[int], k: int) -> list[dict]:
    """The completed stage attempts of the jobs, new since `before`, that run under layer k's job
    description (jobs/embed.py sets one per layer), with their tasks. Waits for the UI's listener to
    catch up with the finished jobs."""
    for _ in range(60):
        jobs = [j for j in rest(spark, "jobs") if j["jobId"] not in before]
        jobs = [j for j in jobs if (j.get("description") or "").startswith(f"layer {k}/")]
        if jobs and all(j["status"] == "SUCCEEDED" for j in jobs):
            break
        time.sleep(0.5)
    stages = []
    for sid in sorted({s for j in jobs for s in j["stageIds"]}):
        for st in rest(spark, f"stages/{sid}"):
            if st["status"] != "COMPLETE":
                continue  # skipped (its shuffle reused) or retried
            st["tasks"] = rest(spark, f"stages/{sid}/{st['attemptId']}/taskList?length=100000")
            stages.append(st)
    return stages


def role(stage: dict) -> str | None:
    """pool: runs the pooling map and writes the layer table; regroup: reads a shuffle and writes the
    gather's (the join of projections to neighbor rows on the source, with shuffled projections;
    the distinct board ids of layer 1)."""
    if stage["outputRecords"] > 0:
        return "pool"
    if stage["shuffleReadRecords"] > 0 and stage["shuffleWriteRecords"] > 0:
        return "regroup"
    return None


def reducer_counts(spark: SparkSession, keys: DataFrame, n: int) -> list[int]:
    """Rows per shuffle partition when `keys` (one column, k) is hash-partitioned into n partitions,
    as Spark's HashPartitioning does it: pmod(murmur3(key, seed 42), n)."""
    rows = keys.groupBy(F.pmod(F.hash("k"), F.lit(n)).alias("p")).count().collect()
    counts = [0] * n
    for r in rows:
        counts[r["p"]] = r["count"]
    return counts


def hub_task(tasks: list[dict], counts: list[int], hub_partition: int) -> int | None:
    """The taskId that read shuffle partition `hub_partition`: after AQE coalescing, each reading task
    (in partition order) covers a contiguous run of shuffle partitions, recovered by matching its
    records read against `counts`. None when the records do not match (e.g. a split skewed
    partition)."""
    readers = sorted(
        (t for t in tasks if t["taskMetrics"]["shuffleReadMetrics"]["recordsRead"] > 0),
        key=lambda t: t["partitionId"],
    )
    j = 0
    for t in readers:
        want, got, first = t["taskMetrics"]["shuffleReadMetrics"]["recordsRead"], 0, j
        while got < want and j < len(counts):
            got, j = got + counts[j], j + 1
        if got != want:
            return None
        if first <= hub_partition < j:
            return t["taskId"]
    return None


def stage_rows(spark: SparkSession, inputs: dict, hub_id: int, k: int, stages: list[dict]) -> list[dict]:
    n = int(spark.conf.get("spark.sql.shuffle.partitions"))
    hub_partition = spark.range(1).select(F.pmod(F.hash(F.lit(hub_id).cast("bigint")), F.lit(n))).first()[0]
    bn, pn = inputs["board_neighbors"], inputs["pin_neighbors"]
    boards = bn.select("board_id").union(pn.select("board_id")).union(inputs["edges"].select("board_id"))
    boards = boards.distinct()
    # Which rows carry the hub's key in each stage: as a target of layer 1 (its own row and its at
    # most T board_neighbors rows) and as a source of layer 2 (its projection and every pin_neighbors
    # row naming it, joined on the board). Elsewhere its rows are spread by pin.
    keyed = {
        (1, "pool"): boards.select(F.col("board_id").alias("k")).union(
            bn.select(F.col("board_id").alias("k"))
        ),
        (2, "regroup"): boards.select(F.col("board_id").alias("k")).union(
            pn.select(F.col("board_id").alias("k"))
        ),
    }
    rows = []
    for st in stages:
        r = role(st)
        if r is None:
            continue
        done = [t for t in st["tasks"] if t["status"] == "SUCCESS"]
        seconds = sorted(t["duration"] / 1000 for t in done)
        median, top = statistics.median(seconds), seconds[-1]
        largest = max(done, key=lambda t: t["duration"])
        if (k, r) in keyed:
            holder = hub_task(done, reducer_counts(spark, keyed[(k, r)], n), hub_partition)
            hub = "unknown" if holder is None else ("yes" if holder == largest["taskId"] else "no")
        else:
            hub = "spread"
        records = [t["taskMetrics"]["shuffleReadMetrics"]["recordsRead"] for t in done]
        rows.append(
            {
                "layer": k,
                "stage": r,
                "stage_id": st["stageId"],
                "tasks": len(done),
                "median_s": round(median, 2),
                "max_s": round(top, 2),
                "max_over_median": round(top / median, 2),
                "largest_task_holds_hub": hub,
                "max_records": max(records),
                "median_records": int(statistics.median(records)),
            }
        )
    return rows


def embed_run(spark, root: str, nbrs: str, mode: str, broadcast_mb: str, hub_id: int) -> dict:
    out = f"{root}/embed-{mode}"
    delete_path(spark, out)
    args = embed.parse_args(
        shlex.split(
            f"--pins {root}/input/pins --edges {root}/input/edges --board-neighbors {nbrs}/board_neighbors "
            f"--pin-neighbors {nbrs}/pin_neighbors --checkpoint {root}/model.pt --out {out} --device cpu "
            f"--broadcast-projections-mb {broadcast_mb}"
        )
    )
    before = job_ids(spark)
    clock = Stopwatch()
    report = embed.run(spark, args, read_checkpoint(f"{root}/model.pt"))
    seconds = round(clock.seconds(), 1)
    inputs = {
        "pins": spark.read.parquet(f"{root}/input/pins"),
        "edges": spark.read.parquet(f"{root}/input/edges"),
        "board_neighbors": read_delta(spark, f"{nbrs}/board_neighbors"),
        "pin_neighbors": read_delta(spark, f"{nbrs}/pin_neighbors"),
    }
    stages = []
    for layer in report.layers:
        found = layer_stages(spark, before, layer.k)
        stages += stage_rows(spark, inputs, hub_id, layer.k, found)
    return {
        "mode": mode,
        "seconds": seconds,
        "phases_s": report.seconds,
        "projections": [layer.projections for layer in report.layers],
        "layer_seconds": [layer.seconds for layer in report.layers],
        "stages": stages,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pins", type=int, default=1_000_000)
    p.add_argument("--hub", type=int, default=1_000_000, help="distinct member pins of the hub board")
    p.add_argument("--walks-per-node", type=int, default=10)
    p.add_argument("--walk-length", type=int, default=8)
    p.add_argument("--top-t", type=int, default=20)
    p.add_argument("--out", default="bench-output/hub")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf")
    a = p.parse_args()
    if not 0 < a.hub <= a.pins:
        p.error("--hub must be between 1 and --pins")
    logging.basicConfig(level=logging.WARNING)
    conf = {
        "spark.ui.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        **dict(c.split("=", 1) for c in a.conf),
    }
    spark = get_spark("pinsage-bench-hub", None, conf)
    root = f"{a.out}/{a.pins}-hub{a.hub}"
    result: dict = {"graph": hub_graph(a.pins, a.hub, f"{root}/input")}
    hub_id = result["graph"]["hub_id"]
    config = ModelConfig(2, MODEL[0], 0, MODEL[1], MODEL[2], "importance", True)
    save_checkpoint(random_model(config, seed=5), f"{root}/model.pt")
    print(json.dumps(result["graph"]), flush=True)

    nbrs = f"{root}/neighbors"
    delete_path(spark, nbrs)
    args = neighborhoods.parse_args(
        shlex.split(
            f"--edges {root}/input/edges --pins {root}/input/pins --out {nbrs} --top-t {a.top_t} --keep-work "
            f"--walks-per-node {a.walks_per_node} --walk-length {a.walk_length} "
            f"--walks-per-batch {a.walks_per_node}"
        )
    )
    clock = Stopwatch()
    report = neighborhoods.run(spark, args)
    result["neighbors"] = {
        "seconds": round(clock.seconds(), 1),
        "walks": report.counts["walks"],
        "top_t": a.top_t,
        "walks_per_node": a.walks_per_node,
        **check_top_t(spark, nbrs, f"{nbrs}/_work/{report.run_id}", hub_id, a.top_t),
    }
    delete_path(spark, f"{nbrs}/_work")
    print(json.dumps(result["neighbors"]), flush=True)

    result["embed"] = []
    for mode, mb in (("broadcast", "512"), ("shuffle", "0")):
        run = embed_run(spark, root, nbrs, mode, mb, hub_id)
        result["embed"].append(run)
        print(json.dumps(run), flush=True)

    cores = spark.sparkContext.defaultParallelism
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Spark local[{cores}]"
    result["shuffle_partitions"] = spark.conf.get("spark.sql.shuffle.partitions")
    os.makedirs(a.out, exist_ok=True)
    with open(f"{a.out}/hub.json", "w") as f:
        json.dump(result, f, indent=2)
    g, nb = result["graph"], result["neighbors"]
    print(result["machine"])
    print(
        f"graph: {g['pins']:,} pins, {g['boards']:,} boards, {g['edges']:,} edges, hub {g['hub_members']:,}"
    )
    print(
        f"top-T (T = {a.top_t}): hub rows in board_neighbors {nb['hub_board_neighbors_rows']} "
        f"(walks visited {nb['hub_distinct_pins_visited']:,} distinct pins), most rows of a pin in "
        f"pin_neighbors {nb['max_pin_neighbors_rows_per_pin']} (most distinct boards visited "
        f"{nb['max_distinct_boards_visited_per_pin']}), hub in-degree in pin_neighbors "
        f"{nb['hub_in_degree_pin_neighbors']:,} of {nb['pins_in_pin_neighbors']:,} pins"
    )
    head = (
        "projections",
        "layer",
        "stage",
        "tasks",
        "median task s",
        "max task s",
        "max/median",
        "largest task holds hub",
    )
    print("| " + " | ".join(head) + " |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for run in result["embed"]:
        for s in run["stages"]:
            print(
                f"| {run['mode']} | {s['layer']} | {s['stage']} | {s['tasks']} | {s['median_s']} | "
                f"{s['max_s']} | {s['max_over_median']} | {s['largest_task_holds_hub']} |"
            )


if __name__ == "__main__":
    main()
