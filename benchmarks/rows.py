"""Benchmark what Spark alone costs to move one layer's rows, with no model arithmetic.

    python benchmarks/rows.py [--pins 1000000] [--reps 3] [--out DIR]

On the embedding benchmark's generated graph (benchmarks/embed.py's `graph_spec`, 32-dim features;
generated into DIR/input unless already there) it times the steps of layer 2 (pins from boards:
every pin's own row with its features, plus its neighbor rows) up to the point where the pooling
map would start, each ending in Spark's no-op sink so nothing is written:

1. read: the pins and pin_neighbors tables from Parquet;
2. shuffle: their rows (`jobs.lib.transforms.layer_rows`) repartitioned by target, as `gather` does;
3. shuffle + sort by target: the same, sorted within partitions by target only;
4. shuffle + sort: `gather` itself, sorted by (target, kind, source, weight) for deterministic sums;
5. shuffle + sort by target + Arrow: 3 handed to Python as Arrow batches (a map that returns nothing);
6. shuffle + sort + Arrow: 4 handed to Python likewise: the pooling stage without pooling or writing.

Each step runs --reps times after one warm-up run; it reports the fastest and the median wall
seconds. Results go to DIR/rows.json and print as markdown rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
from collections.abc import Iterator

import pyarrow as pa

# benchmarks/ is the script's directory, so it is on sys.path: the embedding benchmark's graphs.
from embed import MODELS, graph_spec
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.demo.generate_graph import generate, write_tables
from jobs.lib import transforms
from jobs.lib.report import Stopwatch
from jobs.lib.session import get_spark


def nothing(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Reads every Arrow batch and returns no rows."""
    for _ in batches:
        pass
    yield from ()


def steps(pins: DataFrame, neighbors: DataFrame) -> dict[str, DataFrame]:
    targets = pins.select(F.col("pin_id").alias("node_id"), F.col("features").alias("vec"))
    links = transforms.links(neighbors, "pin_id", "board_id")
    union = transforms.layer_rows(targets, links, None)
    rows = union.repartition("dst")
    by_target = rows.sortWithinPartitions("dst")
    gathered = transforms.gather(targets, links, None)
    return {
        "read": union,
        "shuffle": rows,
        "shuffle + sort by target": by_target,
        "shuffle + sort": gathered,
        "shuffle + sort by target + Arrow": by_target.mapInArrow(nothing, "n bigint"),
        "shuffle + sort + Arrow": gathered.mapInArrow(nothing, "n bigint"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pins", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default="bench-output/rows")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = f"{a.out}/small-{a.pins}"
    done = f"{root}/input/.complete"
    if not os.path.exists(done):
        write_tables(generate(graph_spec(a.pins, MODELS["small"][0])), f"{root}/input")
        open(done, "w").close()
    spark = get_spark("pinsage-bench-rows", None, {"spark.ui.showConsoleProgress": "false"})
    pins = spark.read.parquet(f"{root}/input/pins")
    neighbors = spark.read.parquet(f"{root}/input/pin_neighbors")
    rows = []
    for name, df in steps(pins, neighbors).items():
        spark.sparkContext.setJobDescription(f"rows: {name}")
        seconds = []
        for _ in range(a.reps + 1):  # the first run warms up and is not counted
            clock = Stopwatch()
            df.write.format("noop").mode("overwrite").save()
            seconds.append(round(clock.seconds(), 2))
        row = {"step": name, "runs_s": seconds[1:], "min_s": min(seconds[1:])}
        row["median_s"] = statistics.median(seconds[1:])
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Spark local[{spark.sparkContext.defaultParallelism}]"
    )
    with open(f"{a.out}/rows.json", "w") as f:
        json.dump({"machine": machine, "pins": a.pins, "rows": rows}, f, indent=2)
    print(machine)
    print("| step | fastest s | median s |")
    print("| --- | ---: | ---: |")
    for r in rows:
        print(f"| {r['step']} | {r['min_s']} | {r['median_s']} |")


if __name__ == "__main__":
    main()
