"""goodbooks-10k as the pipeline's input tables: books are pins, to-read lists are boards.

    spark-submit jobs/prepare_goodbooks.py --data-dir DIR --out O [--seed 0] [--holdout-per-board 2]
        [--min-board-size 5] [--split 0.8,0.1,0.1] [--device auto]

Reads books.csv, to_read.csv, book_tags.csv and tags.csv from DIR and writes Delta tables under O:
pins (a 384-dim all-MiniLM-L6-v2 embedding of "title by authors", computed on executors, plus the
scaled log degree), content (the text vector alone, for the content-only baseline), edges (the
memberships left in the graph), heldout (the removed memberships and their split), train_pairs,
validation_pairs, test_pairs (query_pin, pos_pin) and labels (pin_id, genre shelf). How pairs are
held out so nothing of a test pair reaches the graph or the training pairs: jobs/lib/goodbooks.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.lib import goodbooks as G
from jobs.lib.cli import job_main, new_run_id, spark_conf
from jobs.lib.io import InputError, path_exists, write_delta
from jobs.lib.session import get_spark

log = logging.getLogger("pinsage.prepare_goodbooks")

OUTPUTS = ("edges", "heldout", "pins", "content", "labels", "train_pairs", "validation_pairs", "test_pairs")


@dataclass(frozen=True)
class PrepareArgs:
    data_dir: str
    out: str
    seed: int = 0
    holdout_per_board: int = 2
    min_board_size: int = 5
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    device: str = "auto"
    encode_batch: int = 256
    master: str | None = None
    conf: dict[str, str] = field(default_factory=dict)
    report_json: str | None = None


def _split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VALIDATION,TEST fractions, got {text!r}") from None
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-9 or parts[2] == 0:
        raise argparse.ArgumentTypeError(f"expected three fractions summing to 1, test > 0, got {text!r}")
    return parts  # type: ignore[return-value]


def parse_args(argv: list[str] | None = None) -> PrepareArgs:
    d = PrepareArgs("", "")
    p = argparse.ArgumentParser(
        description="goodbooks-10k as pins, edges, held-out pairs and labels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data-dir", required=True, help="folder with books.csv, to_read.csv, book_tags.csv, tags.csv"
    )
    p.add_argument("--out", required=True, help="output root for the Delta tables")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every held-out choice")
    p.add_argument(
        "--holdout-per-board", type=int, default=d.holdout_per_board, help="memberships removed per list"
    )
    p.add_argument(
        "--min-board-size", type=int, default=d.min_board_size, help="lists smaller keep all members"
    )
    p.add_argument(
        "--split", type=_split, default="0.8,0.1,0.1", help="list fractions: train,validation,test"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="text encoder device")
    p.add_argument("--encode-batch", type=int, default=d.encode_batch, help="texts per encoder call")
    p.add_argument("--master", help="Spark master when run with python (default local[*])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf")
    p.add_argument("--report-json", help="also write the run report as JSON to this local file")
    a = p.parse_args(argv)
    if a.holdout_per_board < 1:
        p.error("--holdout-per-board must be at least 1")
    if a.min_board_size < a.holdout_per_board + 1:
        p.error("--min-board-size must exceed --holdout-per-board: a query must stay in the list")
    if a.encode_batch < 1:
        p.error("--encode-batch must be at least 1")
    conf = spark_conf(p, a.conf)
    return PrepareArgs(
        a.data_dir.rstrip("/"), a.out.rstrip("/"), a.seed, a.holdout_per_board, a.min_board_size, a.split,
        a.device, a.encode_batch, a.master, conf, a.report_json,
    )  # fmt: skip


@dataclass
class PrepareReport:
    run_id: str
    rows: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"run {self.run_id}: goodbooks-10k prepared"]
        lines += [f"  {name}: {count:,} rows" for name, count in self.rows.items()]
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def read_csv(spark: SparkSession, data_dir: str, name: str) -> DataFrame:
    path = f"{data_dir}/{name}"
    if not path_exists(spark, path):
        raise InputError(name, None, f"{path} does not exist")
    raw = spark.read.option("header", True).option("escape", '"').option("mode", "FAILFAST").csv(path)
    return G.typed(raw, name)


def run(spark: SparkSession, args: PrepareArgs) -> PrepareReport:
    report = PrepareReport(new_run_id())
    sc = spark.sparkContext
    clock = time.perf_counter()
    sc.setJobDescription("read and check the goodbooks CSV files")
    books = read_csv(spark, args.data_dir, "books.csv")
    to_read = read_csv(spark, args.data_dir, "to_read.csv")
    book_tags = read_csv(spark, args.data_dir, "book_tags.csv")
    tags = read_csv(spark, args.data_dir, "tags.csv")
    duplicates = books.groupBy("book_id").count().where(F.col("count") > 1).limit(3).collect()
    if duplicates:
        ids = ", ".join(str(r["book_id"]) for r in duplicates)
        raise InputError("books.csv", "book_id", f"ids are not unique (e.g. {ids})")
    unknown = to_read.join(books, "book_id", "left_anti").limit(3).collect()
    if unknown:
        ids = ", ".join(str(r["book_id"]) for r in unknown)
        raise InputError("to_read.csv", "book_id", f"names books missing from books.csv (e.g. {ids})")
    report.seconds["read"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    metadata = {"run_id": report.run_id, "source": "goodbooks-10k", "params": {
        "seed": args.seed, "holdout_per_board": args.holdout_per_board,
        "min_board_size": args.min_board_size, "split": list(args.split),
    }}  # fmt: skip

    def publish(name: str, df: DataFrame) -> DataFrame:
        sc.setJobDescription(f"write {name}")
        path = f"{args.out}/{name}"
        write_delta(df, path, metadata)
        report.outputs[name] = path
        stored = spark.read.format("delta").load(path)
        report.rows[name] = stored.count()
        log.info("wrote %s: %d rows", path, report.rows[name])
        return stored

    graph, heldout = G.hold_out(
        G.memberships(to_read), args.seed, args.holdout_per_board, args.min_board_size, args.split
    )
    graph = publish("edges", graph)
    heldout = publish("heldout", heldout)
    report.seconds["hold out"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    sc.setJobDescription("encode title by authors on executors")
    text = G.book_text(books).join(
        G.log_degree(books.select(F.col("book_id").alias("pin_id")), graph), "pin_id"
    )
    device, batch = args.device, args.encode_batch
    pins = text.mapInArrow(
        lambda it: G.encode_batches(it, device, batch), "pin_id bigint, features array<float>"
    )
    pins = publish("pins", pins)
    publish("content", pins.select("pin_id", F.slice("features", 1, G.TEXT_DIM).alias("features")))
    report.seconds["text features"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    publish("labels", G.labels(books, book_tags, tags))
    for split, df in G.pairs(graph, heldout, args.seed).items():
        publish(f"{split}_pairs", df)
    report.seconds["pairs and labels"] = round(time.perf_counter() - clock, 3)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return job_main(
        lambda: run(get_spark("pinsage-prepare-goodbooks", args.master, args.conf), args), args.report_json
    )


if __name__ == "__main__":
    sys.exit(main())
