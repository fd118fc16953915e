"""Benchmark the related-pins job: recall of the inverted file against exact, and the speed of both.

    python benchmarks/related.py [--pins 1000000] [--vectors model|features|PATH] [--top-k 50]
        [--lists 1024 --probes 16] [--sample 100000] [--queries 10000] [--exact-all] [--out DIR]

The vectors (`--vectors`): `model` (default), the pin_embeddings of make bench's small model (32
wide, random weights, seed 5) on make bench's generated graph of --pins pins, embedded by
`python jobs/embed.py` first (reused when DIR already holds them); `features`, --pins
topic-clustered vectors (jobs/demo/generate_graph.py's pin features, --dim wide) written as
pin_embeddings; any other value, the path of a pin_embeddings Delta table (--pins is then its row
count). It runs jobs/related.py in local mode on every core: --method ann for every pin,
and --method exact for a seeded sample of --queries pins (their lists against every pin; with
--exact-all, for every pin); then an in-process torch top-K for the same queries over the same
vectors (float32 matrix products in blocks and torch.topk, every core), the floor a single machine
sets. Exact and torch cost the same per query whatever the sample, so queries/s is their speed for
a whole run. Prints one markdown table: per method queries, seconds, queries/s, candidate pairs
scored, shuffle bytes written, peak RSS of the Python driver alone and of the driver with the JVM
and its Python workers, and for ann recall@10 and recall@K against the exact lists of the sampled
queries. Results also go to DIR/related.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.embed import PeakMemory, completed_stages, job_flags, write_graph
from jobs.demo.generate_graph import GraphSpec, generate
from jobs.lib.cli import CommonArgs
from jobs.lib.io import read_delta
from jobs.lib.report import Stopwatch
from jobs.lib.session import get_spark
from jobs.related import RelatedArgs, run

TORCH_SCORES = 1 << 27  # scores per torch block: 512 MB of float32


def shuffle_bytes(spark) -> int:
    return sum(st.get("shuffleWriteBytes", 0) for st in completed_stages(spark).values())


def torch_top_k(vectors: np.ndarray, rows: np.ndarray, k: int) -> float:
    """Seconds for the k nearest other rows of each of `rows` by cosine similarity, in process."""
    clock = Stopwatch()
    x = torch.nn.functional.normalize(torch.from_numpy(vectors), dim=1)
    block = max(1, TORCH_SCORES // len(x))
    for lo in range(0, len(rows), block):
        own = torch.from_numpy(rows[lo : lo + block])
        scores = x[own] @ x.T
        scores[torch.arange(len(own)), own] = -float("inf")
        torch.topk(scores, k, dim=1)
    return clock.seconds()


def model_embeddings(pins: int, root: str) -> str:
    """ROOT/out/pin_embeddings: make bench's small model (random weights, seed 5) on make bench's
    generated graph of `pins` pins, embedded by a `python jobs/embed.py` process unless ROOT holds
    them already."""
    out = f"{root}/out/pin_embeddings"
    if os.path.exists(f"{out}/_delta_log"):
        return out
    write_graph(root, pins, "small")
    cmd = [sys.executable, "jobs/embed.py", *shlex.split(job_flags(root, "512", "float32"))]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    return out


def feature_embeddings(pins: int, dim: int, topics: int, path: str) -> str:
    """PATH: the generated graph's topic-clustered pin features as a Parquet pin_embeddings table."""
    features = generate(GraphSpec(pins=pins, boards=1, feature_dim=dim, topics=topics, seed=1))["pins"]
    os.makedirs(path, exist_ok=True)
    table = pa.table({"pin_id": features.column("pin_id"), "embedding": features.column("features")})
    pq.write_table(table, f"{path}/part-00000.parquet")
    return path


def lists(spark, path: str, queries: np.ndarray) -> dict[int, list[int]]:
    wanted = spark.createDataFrame(pa.table({"pin_id": queries}))
    rows = read_delta(spark, path).join(wanted, "pin_id").orderBy("pin_id", "rank").collect()
    out: dict[int, list[int]] = {}
    for r in rows:
        out.setdefault(r["pin_id"], []).append(r["related_pin_id"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pins", type=int, default=1_000_000)
    p.add_argument("--vectors", default="model", help="model, features, or a pin_embeddings Delta table")
    p.add_argument("--dim", type=int, default=32, help="features: their width")
    p.add_argument("--topics", type=int, default=200)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--lists", type=int, default=1024)
    p.add_argument("--probes", type=int, default=16)
    p.add_argument("--sample", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=10_000, help="seeded sample: exact, torch and recall")
    p.add_argument("--exact-all", action="store_true", help="exact and torch for every pin")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-output/related")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    spark = get_spark("pinsage-bench-related", None, {"spark.ui.showConsoleProgress": "false"})
    if a.vectors == "features":
        embeddings = feature_embeddings(a.pins, a.dim, a.topics, f"{a.out}/input/pin_embeddings")
        table = pq.read_table(embeddings)
    else:
        embeddings = model_embeddings(a.pins, f"{a.out}/graph") if a.vectors == "model" else a.vectors
        table = read_delta(spark, embeddings).orderBy("pin_id").toArrow()
        a.pins = table.num_rows
    all_ids = table.column("pin_id").to_numpy()
    column = table.column("embedding").combine_chunks()
    vectors = column.flatten().to_numpy().astype(np.float32).reshape(len(column), -1)
    rng = np.random.default_rng(a.seed)
    queries = np.sort(rng.choice(a.pins, min(a.queries, a.pins), replace=False)).astype(np.int64)
    query_table = None
    if not a.exact_all:
        query_table = f"{a.out}/input/queries"
        os.makedirs(query_table, exist_ok=True)
        pq.write_table(pa.table({"pin_id": all_ids[queries]}), f"{query_table}/part-00000.parquet")
    exact_rows = np.arange(a.pins) if a.exact_all else queries

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
            queries=query_table if method == "exact" else None,
            common=CommonArgs(),
        )
        before = shuffle_bytes(spark)
        with PeakMemory(children=False) as driver, PeakMemory() as everything:
            clock = Stopwatch()
            report = run(spark, args)
            seconds = clock.seconds()
        n = len(exact_rows) if method == "exact" else a.pins
        pairs = report.index.get("pairs_scored", n * (a.pins - 1))
        results[method] = {
            "queries": n,
            "seconds": seconds,
            "stage_seconds": report.seconds,
            "queries_per_s": round(n / seconds),
            "pairs_scored": pairs,
            "shuffle_bytes": shuffle_bytes(spark) - before,
            "driver_peak_gib": round(driver.peak / 2**30, 2),
            "all_peak_gib": round(everything.peak / 2**30, 2),
        }
    sampled = all_ids[queries]
    exact = lists(spark, f"{a.out}/exact/related_pins", sampled)
    ann = lists(spark, f"{a.out}/ann/related_pins", sampled)
    for k in sorted({10, a.top_k}):
        found = [len(set(ann.get(q, [])[:k]) & set(exact[q][:k])) / len(exact[q][:k]) for q in exact]
        recall = np.mean(found)
        results["ann"][f"recall@{k}"] = round(float(recall), 4)
    seconds = torch_top_k(vectors, exact_rows, a.top_k)
    n = len(exact_rows)
    results["torch"] = {
        "queries": n,
        "seconds": seconds,
        "queries_per_s": round(n / seconds),
        "pairs_scored": n * a.pins,
    }
    setup = {
        "pins": a.pins,
        "vectors": a.vectors,
        "dim": vectors.shape[1],
        "topics": a.topics,
        "top_k": a.top_k,
        "lists": a.lists,
        "probes": a.probes,
        "sample": a.sample,
        "queries": len(queries),
        "exact_all": a.exact_all,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    with open(f"{a.out}/related.json", "w") as f:
        json.dump({"setup": setup, "results": results}, f, indent=2)
    print(json.dumps(setup))
    print(
        "| method | queries | seconds | queries/s | pairs scored | shuffle MiB | driver peak GiB "
        "| all peak GiB | recall@10 | recall@K |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for method, r in results.items():
        print(
            f"| {method} | {r['queries']:,} | {r['seconds']:.1f} | {r['queries_per_s']:,} | "
            f"{r['pairs_scored']:,} | "
            f"{r.get('shuffle_bytes', 0) / 2**20:,.0f} | {r.get('driver_peak_gib', '')} | "
            f"{r.get('all_peak_gib', '')} | {r.get('recall@10', '')} | {r.get(f'recall@{a.top_k}', '')} |"
        )
    spark.stop()


if __name__ == "__main__":
    main()
