"""Benchmark the related-pins job: recall of the inverted file against exact, and the speed of both.

    python benchmarks/related.py [--pins 100000] [--dim 32] [--top-k 50] [--lists 512 --probes 16]
        [--sample 50000] [--queries 10000] [--out DIR]

Generates --pins topic-clustered vectors (jobs/demo/generate_graph.py's pin features, 32 wide by
default, standing in for embeddings), writes them as pin_embeddings, and runs jobs/related.py with
--method exact and --method ann in local mode on every core; then an in-process torch top-K over the
same vectors (float32 matrix products in blocks and torch.topk, every core), the floor a single
machine sets. Prints one markdown table: per method seconds, pins/s, candidate pairs scored, shuffle
bytes written, peak RSS of the Python driver alone and of the driver with the JVM and its Python
workers, and for ann recall@10 and recall@K against the exact table on a seeded sample of --queries
pins. Results also go to DIR/related.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.embed import PeakMemory, completed_stages
from jobs.demo.generate_graph import GraphSpec, generate
from jobs.lib.cli import CommonArgs
from jobs.lib.io import read_delta
from jobs.lib.report import Stopwatch
from jobs.lib.session import get_spark
from jobs.related import RelatedArgs, run

TORCH_BLOCK = 4096


def shuffle_bytes(spark) -> int:
    return sum(st.get("shuffleWriteBytes", 0) for st in completed_stages(spark).values())


def torch_top_k(vectors: np.ndarray, k: int) -> float:
    """Seconds for every row's k nearest other rows by cosine similarity, in process."""
    clock = Stopwatch()
    x = torch.nn.functional.normalize(torch.from_numpy(vectors), dim=1)
    for lo in range(0, len(x), TORCH_BLOCK):
        scores = x[lo : lo + TORCH_BLOCK] @ x.T
        rows = torch.arange(scores.shape[0])
        scores[rows, rows + lo] = -float("inf")
        torch.topk(scores, k, dim=1)
    return clock.seconds()


def lists(spark, path: str, queries: np.ndarray) -> dict[int, list[int]]:
    wanted = spark.createDataFrame(pa.table({"pin_id": queries}))
    rows = read_delta(spark, path).join(wanted, "pin_id").orderBy("pin_id", "rank").collect()
    out: dict[int, list[int]] = {}
    for r in rows:
        out.setdefault(r["pin_id"], []).append(r["related_pin_id"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pins", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--topics", type=int, default=200)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--lists", type=int, default=512)
    p.add_argument("--probes", type=int, default=16)
    p.add_argument("--sample", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-output/related")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    spark = get_spark("pinsage-bench-related", None, {"spark.ui.showConsoleProgress": "false"})
    spec = GraphSpec(pins=a.pins, boards=1, feature_dim=a.dim, topics=a.topics, seed=1)
    pins = generate(spec)["pins"]
    embeddings = f"{a.out}/input/pin_embeddings"
    os.makedirs(embeddings, exist_ok=True)
    table = pa.table({"pin_id": pins.column("pin_id"), "embedding": pins.column("features")})
    pq.write_table(table, f"{embeddings}/part-00000.parquet")

    results = {}
    for method in ("exact", "ann"):
        args = RelatedArgs(
            embeddings,
            f"{a.out}/{method}",
            top_k=a.top_k,
            method=method,
            lists=a.lists,
            probes=a.probes,
            sample=a.sample,
            seed=a.seed,
            common=CommonArgs(),
        )
        before = shuffle_bytes(spark)
        with PeakMemory(children=False) as driver, PeakMemory() as everything:
            clock = Stopwatch()
            report = run(spark, args)
            seconds = clock.seconds()
        pairs = report.index.get("pairs_scored", a.pins * (a.pins - 1))
        results[method] = {
            "seconds": seconds,
            "stage_seconds": report.seconds,
            "pins_per_s": round(a.pins / seconds),
            "pairs_scored": pairs,
            "shuffle_bytes": shuffle_bytes(spark) - before,
            "driver_peak_gib": round(driver.peak / 2**30, 2),
            "all_peak_gib": round(everything.peak / 2**30, 2),
        }
    rng = np.random.default_rng(a.seed)
    queries = np.sort(rng.choice(a.pins, min(a.queries, a.pins), replace=False)).astype(np.int64)
    exact = lists(spark, f"{a.out}/exact/related_pins", queries)
    ann = lists(spark, f"{a.out}/ann/related_pins", queries)
    for k in sorted({10, a.top_k}):
        found = [len(set(ann.get(q, [])[:k]) & set(exact[q][:k])) / len(exact[q][:k]) for q in exact]
        recall = np.mean(found)
        results["ann"][f"recall@{k}"] = round(float(recall), 4)
    vectors = np.array(pins.column("features").to_pylist(), dtype=np.float32)
    seconds = torch_top_k(vectors, a.top_k)
    results["torch"] = {"seconds": seconds, "pins_per_s": round(a.pins / seconds), "pairs_scored": a.pins**2}
    setup = {
        "pins": a.pins,
        "dim": a.dim,
        "topics": a.topics,
        "top_k": a.top_k,
        "lists": a.lists,
        "probes": a.probes,
        "sample": a.sample,
        "queries": len(queries),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    with open(f"{a.out}/related.json", "w") as f:
        json.dump({"setup": setup, "results": results}, f, indent=2)
    print(json.dumps(setup))
    print(
        "| method | seconds | pins/s | pairs scored | shuffle MiB | driver peak GiB | all peak GiB "
        "| recall@10 | recall@K |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for method, r in results.items():
        print(
            f"| {method} | {r['seconds']:.1f} | {r['pins_per_s']:,} | {r['pairs_scored']:,} | "
            f"{r.get('shuffle_bytes', 0) / 2**20:,.0f} | {r.get('driver_peak_gib', '')} | "
            f"{r.get('all_peak_gib', '')} | {r.get('recall@10', '')} | {r.get(f'recall@{a.top_k}', '')} |"
        )
    spark.stop()


if __name__ == "__main__":
    main()
