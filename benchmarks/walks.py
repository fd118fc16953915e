"""Benchmark the random-walk neighborhood job: walks per second and growth with the edge count.

    python benchmarks/walks.py [--edges 250000 500000 1000000 2000000] [--walks-per-node 10] [--out DIR]

For each size it generates a graph with jobs/demo/generate_graph.py's generator (pins = edges / 10,
boards sized so the graph has at least about the requested number of memberships), runs jobs/neighborhoods.py
in local mode on every core, and prints one markdown row per size: edges, nodes, walks, seconds in
the walk phase and in total, walks per second. Results also go to DIR/walks.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex

from jobs.demo.generate_graph import GraphSpec, generate, write_tables
from jobs.lib.report import Stopwatch
from jobs.lib.session import get_spark
from jobs.neighborhoods import parse_args, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edges", type=int, nargs="+", default=[250_000, 500_000, 1_000_000, 2_000_000])
    p.add_argument("--walks-per-node", type=int, default=10)
    p.add_argument("--walk-length", type=int, default=8)
    p.add_argument("--out", default="bench-output/walks")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    spark = get_spark("pinsage-bench-walks", None, {"spark.ui.showConsoleProgress": "false"})
    cores = spark.sparkContext.defaultParallelism
    rows = []
    for target in a.edges:
        root = f"{a.out}/{target}"
        spec = GraphSpec(pins=target // 10, boards=int(target / 33.0), feature_dim=4, seed=1)
        tables = generate(spec)
        write_tables({"edges": tables["edges"]}, f"{root}/input")
        args = parse_args(
            shlex.split(
                f"--edges {root}/input/edges --out {root}/out --walks-per-node {a.walks_per_node} "
                f"--walk-length {a.walk_length} --walks-per-batch {a.walks_per_node}"
            )
        )
        clock = Stopwatch()
        report = run(spark, args)
        total = clock.seconds()
        row = {
            "edges": report.counts["edges kept"],
            "nodes": report.counts["pins with edges"] + report.counts["boards with edges"],
            "walks": report.counts["walks"],
            "walk_length": a.walk_length,
            "walk_seconds": report.seconds["walks"],
            "total_seconds": round(total, 1),
            "walks_per_second": round(report.counts["walks"] / report.seconds["walks"]),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    os.makedirs(a.out, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Spark local[{cores}]", "rows": rows}
    with open(f"{a.out}/walks.json", "w") as f:
        json.dump(meta, f, indent=2)
    print("| edges | nodes | walks | walk phase (s) | total (s) | walks/s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['edges']:,} | {r['nodes']:,} | {r['walks']:,} | {r['walk_seconds']:.1f} | "
            f"{r['total_seconds']:.1f} | {r['walks_per_second']:,} |"
        )


if __name__ == "__main__":
    main()
