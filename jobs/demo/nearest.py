"""Print the nearest pins of a few query pins by cosine similarity of their embeddings.

    python jobs/demo/nearest.py --embeddings O/pin_embeddings [--pins P] [--queries 5 --top-k 5 --seed 0]

Scores every (query, pin) pair on the executors and keeps the top k per query with a window;
only the answer reaches the driver. When the pins table has a `topic` column (the generated demo
graph does), it is shown beside each id.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.lib.cli import CommonArgs, add_common_args, at_least, common_args, spark_job_main
from jobs.lib.io import read_table
from jobs.lib.report import Report

QUIET = {"spark.ui.showConsoleProgress": "false"}


@dataclass(frozen=True)
class NearestArgs:
    embeddings: str
    pins: str | None = None
    queries: int = 5
    top_k: int = 5
    seed: int = 0
    common: CommonArgs = field(default_factory=CommonArgs)


def parse_args(argv: list[str] | None = None) -> NearestArgs:
    d = NearestArgs("")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embeddings", required=True, help="pin_embeddings table: pin_id, embedding")
    p.add_argument("--pins", help="pins table; its `topic` column is shown when present")
    p.add_argument("--queries", type=at_least(1), default=d.queries, help="query pins, a seeded sample")
    p.add_argument("--top-k", type=at_least(1), default=d.top_k, help="nearest pins shown per query")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the query sample")
    add_common_args(p, work_tables=False)
    a = p.parse_args(argv)
    common = common_args(p, a)
    common = CommonArgs(common.master, {**QUIET, **common.conf}, common.report_json)
    return NearestArgs(a.embeddings, a.pins, a.queries, a.top_k, a.seed, common)


def _dot(a: Column, b: Column) -> Column:
    return F.aggregate(F.zip_with(a, b, lambda x, y: x * y), F.lit(0.0).cast("double"), lambda s, v: s + v)


def cosine(a: str, b: str) -> Column:
    """The cosine similarity of two array columns, summed in double precision."""
    x, y = F.col(a), F.col(b)
    return _dot(x, y) / (F.sqrt(_dot(x, x)) * F.sqrt(_dot(y, y)))


def nearest(embeddings: DataFrame, queries: DataFrame, top_k: int) -> DataFrame:
    """(query_id, pin_id, rank, score) for the top_k most similar other pins of each query."""
    q = queries.select(F.col("pin_id").alias("query_id"), F.col("embedding").alias("q"))
    scored = embeddings.crossJoin(F.broadcast(q)).where(F.col("pin_id") != F.col("query_id"))
    scored = scored.select("query_id", "pin_id", cosine("q", "embedding").alias("score"))
    order = Window.partitionBy("query_id").orderBy(F.desc("score"), "pin_id")
    return scored.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top_k)


def query_sample(embeddings: DataFrame, queries: int, seed: int) -> DataFrame:
    """`queries` pins drawn by a seeded hash of their ids, whatever the partitioning."""
    return embeddings.orderBy(F.xxhash64("pin_id", F.lit(seed)), "pin_id").limit(queries)


def with_topics(result: DataFrame, pins: DataFrame | None) -> DataFrame:
    """`result` with the topic of the pin and of its query, as " (topic t)" labels; empty labels
    without a pins table or when it has no `topic` column."""
    if pins is None or "topic" not in pins.columns:
        return result.select("*", F.lit("").alias("query_label"), F.lit("").alias("pin_label"))

    def label(c: str) -> Column:
        return F.concat(F.lit(" (topic "), F.col(c).cast("string"), F.lit(")"))

    topics = pins.select("pin_id", "topic")
    query_topics = topics.select(F.col("pin_id").alias("query_id"), F.col("topic").alias("query_topic"))
    joined = result.join(topics, "pin_id").join(query_topics, "query_id")
    return joined.select(
        *result.columns, label("query_topic").alias("query_label"), label("topic").alias("pin_label")
    )


@dataclass
class NearestReport(Report):
    """The answer as printed: one heading per query, then its nearest pins."""

    answer: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return self.answer


def run(spark: SparkSession, args: NearestArgs) -> NearestReport:
    report = NearestReport()
    with report.timed("rank"):
        embeddings = read_table(spark, "pin_embeddings", args.embeddings)
        result = nearest(embeddings, query_sample(embeddings, args.queries, args.seed), args.top_k)
        pins = read_table(spark, "pins", args.pins) if args.pins else None
        rows = with_topics(result, pins).orderBy("query_id", "rank").collect()
    current = None
    for r in rows:
        if r["query_id"] != current:
            current = r["query_id"]
            report.answer.append(f"pin {current}{r['query_label']}: nearest by cosine similarity")
        report.answer.append(f"  {r['rank']}. pin {r['pin_id']}{r['pin_label']}  {r['score']:.3f}")
    return report


def main(argv: list[str] | None = None) -> int:
    return spark_job_main("pinsage-nearest", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
