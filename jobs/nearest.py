"""Print the nearest pins of a few query pins by cosine similarity of their embeddings.

    python jobs/nearest.py --embeddings O/pin_embeddings [--pins P] [--queries 5 --k 5 --seed 0]

Scores every (query, pin) pair on the executors and keeps the top k per query with a window;
only the answer reaches the driver. When the pins table has a `topic` column (the generated demo
graph does), it is shown beside each id.
"""

from __future__ import annotations

import argparse

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.lib.io import read_table
from jobs.lib.session import get_spark


def cosine(a: str, b: str) -> F.Column:
    dot = F.aggregate(F.zip_with(a, b, lambda x, y: x * y), F.lit(0.0).cast("double"), lambda s, v: s + v)
    norm = lambda c: F.sqrt(F.aggregate(c, F.lit(0.0).cast("double"), lambda s, v: s + v * v))  # noqa: E731
    return dot / (norm(F.col(a)) * norm(F.col(b)))


def nearest(embeddings: DataFrame, queries: DataFrame, k: int) -> DataFrame:
    """(query_id, pin_id, rank, score) for the k most similar other pins of each query."""
    q = queries.select(F.col("pin_id").alias("query_id"), F.col("embedding").alias("q"))
    scored = embeddings.crossJoin(F.broadcast(q)).where(F.col("pin_id") != F.col("query_id"))
    scored = scored.select("query_id", "pin_id", cosine("q", "embedding").alias("score"))
    order = Window.partitionBy("query_id").orderBy(F.desc("score"), "pin_id")
    return scored.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embeddings", required=True)
    p.add_argument("--pins", help="pins table; its `topic` column is shown when present")
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--master")
    a = p.parse_args(argv)
    spark = get_spark("pinsage-nearest", a.master, {"spark.ui.showConsoleProgress": "false"})
    emb = read_table(spark, "pin_embeddings", a.embeddings)
    queries = emb.orderBy(F.xxhash64("pin_id", F.lit(a.seed)), "pin_id").limit(a.queries)
    result = nearest(emb, queries, a.k)
    label = lambda c: F.lit("")  # noqa: E731
    if a.pins:
        pins = read_table(spark, "pins", a.pins)
        if "topic" in pins.columns:
            topics = pins.select("pin_id", "topic")
            result = result.join(topics, "pin_id").join(
                topics.withColumnRenamed("pin_id", "query_id").withColumnRenamed("topic", "query_topic"),
                "query_id",
            )
            label = lambda c: F.concat(F.lit(" (topic "), F.col(c).cast("string"), F.lit(")"))  # noqa: E731
    rows = result.select(
        "query_id", "pin_id", "rank", "score", label("query_topic" if a.pins else "x").alias("ql"),
        label("topic" if a.pins else "x").alias("pl"),
    ).orderBy("query_id", "rank").collect()  # fmt: skip
    current = None
    for r in rows:
        if r["query_id"] != current:
            current = r["query_id"]
            print(f"pin {current}{r['ql']}: nearest by cosine similarity")
        print(f"  {r['rank']}. pin {r['pin_id']}{r['pl']}  {r['score']:.3f}")


if __name__ == "__main__":
    main()
