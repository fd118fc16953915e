"""Related pins: every pin's K nearest other pins by cosine similarity of its embedding (the
nearest-neighbor lookups of the PinSage paper, section 3.5).

    spark-submit jobs/related.py --embeddings O/pin_embeddings --out R [--top-k 50]
        [--method exact|ann] [--lists N --probes P --sample S --seed X] [--query-block-mb MB]
        [--pairs PAIRS] [--queries PINS]

Writes the Delta table R/related_pins (pin_id, rank, related_pin_id, score) in one commit recording
the run. `exact` scores every pair (blocked brute force on the executors); `ann` scores the pins of
each query's P nearest lists of an inverted file whose N centroids are trained on a seeded sample of
S pins, and also writes the index, R/related_index, that pinsage_model.related.related_for answers
lookups from without Spark. With --pairs (query_pin, pos_pin), the report gives the table's hit@10
(and hit@K) over those pairs. With --queries (pin_id), only those pins get lists, every pin staying a
candidate. Method, order and index format: docs/related.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.lib.cli import CommonArgs, add_common_args, at_least, job_args, positive, spark_job_main
from jobs.lib.evaluation.checks import check_vector_table
from jobs.lib.io import (
    InputError,
    committed_rows,
    delete_path,
    delete_work,
    put_file,
    read_delta,
    read_snapshot,
    snapshot,
    write_delta_commit,
    write_parquet,
)
from jobs.lib.related import (
    KMEANS_ITERATIONS,
    ann_related,
    centroid_sample,
    exact_related,
    related_hits,
    train_centroids,
)
from jobs.lib.report import Report
from jobs.lib.validate import conform
from pinsage_model import related as index_format

METHODS = ("exact", "ann")


@dataclass(frozen=True)
class RelatedArgs:
    embeddings: str
    out: str
    top_k: int = 50
    method: str = "exact"
    lists: int = 1024
    probes: int = 16
    sample: int = 100_000
    seed: int = 0
    query_block_mb: float = 2.0
    show: int = 0
    pairs: str | None = None
    queries: str | None = None
    common: CommonArgs = field(default_factory=CommonArgs)


def parse_args(argv: list[str] | None = None) -> RelatedArgs:
    d = RelatedArgs("", "")
    p = argparse.ArgumentParser(description="Every pin's nearest other pins by cosine similarity, on Spark.")
    p.add_argument("--embeddings", required=True, help="pin_embeddings: pin_id, embedding")
    p.add_argument("--out", required=True, help="output root: related_pins, and related_index for ann")
    p.add_argument("--top-k", type=at_least(1), default=d.top_k, help="related pins per pin (default 50)")
    p.add_argument("--method", choices=METHODS, default=d.method, help="exact, or an inverted file")
    p.add_argument("--lists", type=at_least(1), default=d.lists, help="ann: lists (centroids)")
    p.add_argument("--probes", type=at_least(1), default=d.probes, help="ann: lists each query scores")
    p.add_argument("--sample", type=at_least(1), default=d.sample, help="ann: pins to train centroids on")
    p.add_argument("--seed", type=int, default=d.seed, help="ann: seed of the sample and of k-means")
    p.add_argument(
        "--query-block-mb",
        type=positive,
        default=d.query_block_mb,
        help="exact: size of a broadcast block of query vectors (float64)",
    )
    p.add_argument("--show", type=at_least(0), default=d.show, metavar="N", help="print N pins' lists")
    p.add_argument(
        "--pairs", help="held-out pairs (query_pin, pos_pin): report the table's hit@10 and hit@K over them"
    )
    p.add_argument(
        "--queries", help="a table of pin_id: only these pins get lists (every pin stays a candidate)"
    )
    add_common_args(p)
    a = p.parse_args(argv)
    if a.probes > a.lists:
        p.error(f"--probes ({a.probes}) must not exceed --lists ({a.lists})")
    if a.sample < a.lists:
        p.error(f"--sample ({a.sample}) must be at least --lists ({a.lists})")
    return job_args(RelatedArgs, p, a, out=a.out.rstrip("/"))


@dataclass
class RelatedReport(Report):
    run_id: str
    params: dict
    inputs: dict[str, int] = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    shown: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    hits: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        lines = [f"run {self.run_id}: " + ", ".join(f"{k} {v}" for k, v in self.params.items())]
        lines.append("inputs: " + ", ".join(f"{k} {v:,}" for k, v in self.inputs.items()))
        if self.index:
            i = self.index
            lines.append(
                f"index: {i['lists']:,} lists of {i['smallest_list']:,}..{i['largest_list']:,} pins, "
                f"{i['pairs_scored']:,} pairs scored ({i['exact_pairs']:,} exact), faiss {i['faiss_version']}"
            )
        for name, out in self.outputs.items():
            where = f"Delta version {out['version']} at " if "version" in out else ""
            lines.append(f"output {name}: {out['rows']:,} rows, {where}{out['path']}")
        if self.hits:
            h = self.hits
            rates = ", ".join(f"{k} {v:.4f}" for k, v in h.items() if k.startswith("hit@"))
            lines.append(f"pairs: {h['pairs']:,} distinct, {rates}")
        for pin, related in self.shown.items():
            lines.append(f"pin {pin}: " + ", ".join(f"{r} ({s:.3f})" for r, s in related))
        return lines


def load_vectors(spark: SparkSession, snap: dict) -> tuple[DataFrame, int, int]:
    """(pin_id, vec), the width and the pins of the embeddings table at its recorded version, checked
    as the evaluation checks it (NULL, ragged or non-finite vectors, duplicate ids, no rows)."""
    spark.sparkContext.setJobDescription("validate pin_embeddings")
    raw = conform(read_snapshot(spark, "pin_embeddings", snap), "pin_embeddings")
    table = check_vector_table(raw, "pin_embeddings", "embedding")
    return table.vectors, table.dim, table.rows


def load_queries(spark: SparkSession, snap: dict, vectors: DataFrame) -> tuple[DataFrame, int]:
    """The distinct pin ids of the --queries table and their count, each checked to be a pin of the
    embeddings (no NULL ids, no unknown ids, at least one)."""
    spark.sparkContext.setJobDescription("validate queries")
    ids = conform(read_snapshot(spark, "queries", snap), "queries")
    row = ids.agg(
        F.count(F.lit(1)).alias("rows"), F.count(F.when(F.col("pin_id").isNull(), 1)).alias("nulls")
    ).first()
    if row["rows"] == 0:
        raise InputError("queries", None, "has no rows")
    if row["nulls"]:
        raise InputError("queries", "pin_id", f"{row['nulls']} rows have a NULL id")
    ids = ids.distinct()
    unknown = ids.join(vectors.select("pin_id"), "pin_id", "left_anti")
    missing = unknown.count()
    if missing:
        shown = ", ".join(str(r["pin_id"]) for r in unknown.orderBy("pin_id").limit(3).collect())
        raise InputError("queries", "pin_id", f"{missing} ids are not pins of pin_embeddings (e.g. {shown})")
    return ids, ids.count()


def write_index(spark: SparkSession, lists: DataFrame, centroids: np.ndarray, meta: dict, path: str) -> None:
    """R/related_index in format_version 1 (pinsage_model.related): the lists, then the centroids and
    index.json last, so a folder whose index.json names the run holds that run's lists."""
    delete_path(spark, f"{path}/{index_format.INDEX_META}")
    write_parquet(lists, f"{path}/{index_format.LISTS}")
    with tempfile.TemporaryDirectory(prefix="pinsage-related-") as scratch:
        local = os.path.join(scratch, index_format.CENTROIDS)
        np.save(local, centroids.astype(np.float32))
        put_file(spark, local, f"{path}/{index_format.CENTROIDS}")
        local = os.path.join(scratch, index_format.INDEX_META)
        with open(local, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        put_file(spark, local, f"{path}/{index_format.INDEX_META}")


def run(spark: SparkSession, args: RelatedArgs) -> RelatedReport:
    run_id = args.common.run_id
    params: dict = {"method": args.method, "top_k": args.top_k}
    if args.method == "ann":
        params.update(lists=args.lists, probes=args.probes, sample=args.sample, seed=args.seed)
    report = RelatedReport(run_id, params)
    work = f"{args.out}/_work/{run_id}"
    with report.timed("inputs"):
        inputs = {"pin_embeddings": snapshot(spark, "pin_embeddings", args.embeddings)}
        if args.pairs:
            inputs["pairs"] = snapshot(spark, "pairs", args.pairs)
            pairs = conform(read_snapshot(spark, "pairs", inputs["pairs"]), "pairs")
        vectors, dim, pins = load_vectors(spark, inputs["pin_embeddings"])
        report.inputs["pin_embeddings"] = pins
        query_ids, queries = None, pins
        if args.queries:
            inputs["queries"] = snapshot(spark, "queries", args.queries)
            query_ids, queries = load_queries(spark, inputs["queries"], vectors)
            report.inputs["queries"] = queries
        if args.method == "ann" and pins < args.lists:
            raise InputError("pin_embeddings", None, f"has {pins} pins, fewer than --lists {args.lists}")
    metadata: dict = {"run_id": run_id, "inputs": inputs, **params}
    if args.method == "exact":
        with report.timed("exact"):
            chosen = None if query_ids is None else vectors.join(query_ids, "pin_id", "left_semi")
            related = exact_related(vectors, dim, queries, args.top_k, args.query_block_mb, work, chosen)
    else:
        with report.timed("centroids"):
            spark.sparkContext.setJobDescription("related (ann): train the centroids")
            sample = centroid_sample(vectors, args.sample, args.seed)
            centroids, faiss_version = train_centroids(sample, dim, args.lists, args.seed)
        with report.timed("ann"):
            related, inverted = ann_related(vectors, centroids, dim, args.top_k, args.probes, work, query_ids)
            path = f"{args.out}/related_index"
            index = {
                "format_version": index_format.FORMAT_VERSION,
                "run_id": run_id,
                "dim": dim,
                "lists": args.lists,
                "probes": args.probes,
                "sample": min(args.sample, pins),
                "seed": args.seed,
                "kmeans_iterations": KMEANS_ITERATIONS,
                "faiss_version": faiss_version,
                "metric": "cosine",
                "inputs": inputs,
            }
            write_index(spark, inverted.lists, centroids, index, path)
            report.index = {
                "lists": args.lists,
                "smallest_list": inverted.list_sizes[0],
                "largest_list": inverted.list_sizes[1],
                "pairs_scored": inverted.pairs_scored,
                "exact_pairs": queries * (pins - 1),
                "faiss_version": faiss_version,
            }
            report.outputs["related_index"] = {"path": path, "rows": pins}
            metadata["index"] = {"path": path, "faiss_version": faiss_version}
    with report.timed("publish"):
        spark.sparkContext.setJobDescription("publish related_pins")
        path = f"{args.out}/related_pins"
        commit = write_delta_commit(related, path, metadata)
        version, rows = int(commit["version"]), committed_rows(spark, path, commit)
        report.outputs["related_pins"] = {"path": path, "version": version, "rows": rows}
    if args.show:
        table = read_delta(spark, path, version)
        first = table.select("pin_id").distinct().orderBy("pin_id").limit(args.show)
        for r in table.join(first, "pin_id").orderBy("pin_id", "rank").collect():
            report.shown.setdefault(r["pin_id"], []).append((r["related_pin_id"], r["score"]))
    if args.pairs:
        spark.sparkContext.setJobDescription("related_pins: hits over the pairs")
        ks = sorted({min(10, args.top_k), args.top_k})
        report.hits = related_hits(read_delta(spark, path, version), pairs, ks)
    if not args.common.keep_work:
        delete_work(spark, work)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return spark_job_main("pinsage-related", args, run, writes=args.out)


if __name__ == "__main__":
    sys.exit(main())
