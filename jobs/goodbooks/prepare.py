"""goodbooks-10k as the pipeline's input tables: books are pins, to-read lists are boards.

    spark-submit jobs/goodbooks/prepare.py --data-dir DIR --out O [--seed 0] [--holdout-per-board 2]
        [--min-board-size 5] [--split 0.8,0.1,0.1] [--cold-share 0.1] [--board-features 0]
        [--device auto]

Reads books.csv, to_read.csv, book_tags.csv and tags.csv from DIR and writes Delta tables under O:
pins (a 384-dim all-MiniLM-L6-v2 embedding of "title by authors", computed on executors, plus the
scaled log degree), content (the text vector alone, for the content-only baseline), edges (the
memberships left in the graph), heldout (the removed memberships and their split),
train_edges (the training-split ones, which the co-occurrence baselines see besides edges), train_pairs,
validation_pairs, test_pairs (query_pin, pos_pin) and labels (pin_id, genre shelf). How pairs are
held out so nothing of a test pair reaches the graph or the training pairs: jobs/goodbooks/tables.py.
With --board-features K > 0, also boards (board_id, features): each list's K-dim spectral vector of
the graph's memberships (tables.spectral_board_features), for every job's --boards.

With --cold-share S > 0, a seeded share S of the books with at least 4 memberships is held out
entirely, as new books: they are in none of the tables above but content and labels. For them:
cold_memberships (board_id, pin_id, split, reveal_rank), cold_pins_r{0,1,3} (their features with
0, 1 or 3 memberships revealed), cold_edges_r{0,1,3} (those revealed memberships),
cold_extra_edges_r{0,1,3} (those plus the training-split held-out memberships: what co-occurrence
baselines may see besides edges) and cold_validation_pairs, cold_test_pairs (docs/goodbooks.md,
"New books").
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.goodbooks import tables
from jobs.lib.cli import (
    CommonArgs,
    add_common_args,
    at_least,
    below_one,
    common_args,
    new_run_id,
    spark_job_main,
)
from jobs.lib.io import InputError, path_exists, write_and_reload
from jobs.lib.report import Report

log = logging.getLogger("pinsage.goodbooks.prepare")

OUTPUTS = (
    "edges",
    "heldout",
    "train_edges",
    "pins",
    "content",
    "labels",
    "train_pairs",
    "validation_pairs",
    "test_pairs",
)
COLD_OUTPUTS = (
    "cold_memberships",
    *(f"cold_{kind}_r{r}" for r in tables.REVEALED for kind in ("pins", "edges", "extra_edges")),
    "cold_validation_pairs",
    "cold_test_pairs",
)
CSV_FILES = ("books.csv", "to_read.csv", "book_tags.csv", "tags.csv")
SPLIT_TOLERANCE = 1e-9  # how far from 1 the three split fractions may sum (decimal input)


@dataclass(frozen=True)
class PrepareArgs:
    data_dir: str
    out: str
    seed: int = 0
    holdout_per_board: int = 2
    min_board_size: int = 5
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    cold_share: float = 0.1
    log_degree: bool = True
    board_features: int = 0
    device: str = "auto"
    encode_batch: int = 32
    common: CommonArgs = field(default_factory=CommonArgs)


def _split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VALIDATION,TEST fractions, got {text!r}") from None
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > SPLIT_TOLERANCE or parts[2] == 0:
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
        "--holdout-per-board",
        type=at_least(1),
        default=d.holdout_per_board,
        help="memberships removed per list",
    )
    p.add_argument(
        "--min-board-size", type=int, default=d.min_board_size, help="lists smaller keep all members"
    )
    p.add_argument(
        "--split", type=_split, default="0.8,0.1,0.1", help="list fractions: train,validation,test"
    )
    p.add_argument(
        "--cold-share",
        type=below_one,
        default=d.cold_share,
        help="share of the books with at least 4 memberships held out entirely as new books (0: none)",
    )
    p.add_argument(
        "--log-degree",
        action=argparse.BooleanOptionalAction,
        default=d.log_degree,
        help="end each pin's features with its scaled log degree (new books: of their revealed "
        "memberships); without it, the features are the text vector alone",
    )
    p.add_argument(
        "--board-features",
        type=at_least(0),
        default=d.board_features,
        help="also write boards: each list's spectral vector of this many dimensions from the graph's "
        "memberships (0: no boards table; the lists are featureless)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="text encoder device")
    p.add_argument(
        "--encode-batch",
        type=at_least(1),
        default=d.encode_batch,
        help="texts per encoder batch (each padded to its longest text: small batches are faster on CPUs)",
    )
    add_common_args(p, work_tables=False)
    a = p.parse_args(argv)
    if a.min_board_size < a.holdout_per_board + 1:
        p.error("--min-board-size must exceed --holdout-per-board: a query must stay in the list")
    return PrepareArgs(
        a.data_dir.rstrip("/"),
        a.out.rstrip("/"),
        a.seed,
        a.holdout_per_board,
        a.min_board_size,
        a.split,
        a.cold_share,
        a.log_degree,
        a.board_features,
        a.device,
        a.encode_batch,
        common_args(p, a),
    )


@dataclass
class PrepareReport(Report):
    run_id: str
    rows: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [
            f"run {self.run_id}: goodbooks-10k prepared",
            *(f"  {name}: {count:,} rows" for name, count in self.rows.items()),
        ]


def read_csv(spark: SparkSession, data_dir: str, name: str) -> DataFrame:
    path = f"{data_dir}/{name}"
    if not path_exists(spark, path):
        raise InputError(name, None, f"{path} does not exist")
    raw = spark.read.option("header", True).option("escape", '"').option("mode", "FAILFAST").csv(path)
    return tables.typed(raw, name)


def run(spark: SparkSession, args: PrepareArgs) -> PrepareReport:
    report = PrepareReport(new_run_id())
    sc = spark.sparkContext
    metadata = {
        "run_id": report.run_id,
        "source": "goodbooks-10k",
        "params": {
            "seed": args.seed,
            "holdout_per_board": args.holdout_per_board,
            "min_board_size": args.min_board_size,
            "split": list(args.split),
            "cold_share": args.cold_share,
            "log_degree": args.log_degree,
            "board_features": args.board_features,
        },
    }

    def publish(name: str, df: DataFrame) -> DataFrame:
        sc.setJobDescription(f"write {name}")
        path = f"{args.out}/{name}"
        stored = write_and_reload(df, path, metadata)
        report.outputs[name] = path
        report.rows[name] = stored.count()
        log.info("wrote %s: %d rows", path, report.rows[name])
        return stored

    with report.timed("read"):
        sc.setJobDescription("read and check the goodbooks CSV files")
        books, to_read, book_tags, tags = (read_csv(spark, args.data_dir, name) for name in CSV_FILES)
        tables.check_references(books, to_read)

    with report.timed("hold out"):
        members = tables.memberships(to_read)
        cold = None
        if args.cold_share > 0:
            sc.setJobDescription("choose the new books")
            chosen = tables.cold_books(members, args.seed, args.cold_share)
            cold = publish(
                "cold_memberships", tables.cold_memberships(members, chosen, args.seed, args.split)
            )
            members = members.join(cold.select("pin_id").distinct(), "pin_id", "left_anti")
        graph, heldout = tables.hold_out(
            members, args.seed, args.holdout_per_board, args.min_board_size, args.split
        )
        graph = publish("edges", graph)
        heldout = publish("heldout", heldout)
        # What the co-occurrence baselines see besides edges: the memberships behind the training pairs.
        publish("train_edges", tables.training_edges(heldout))

    if args.board_features > 0:
        with report.timed("board features"):
            sc.setJobDescription("the lists' spectral vectors")
            publish("boards", tables.board_features(graph, args.board_features, args.seed))

    with report.timed("text features"):
        sc.setJobDescription("encode title by authors on executors")
        # Every book's text vector, new books' too (the content-only baseline ranks all of them).
        text = tables.book_text(books).withColumn("log_degree", F.lit(0.0).cast("float"))
        # books.csv is one partition: spread the texts over every core, in a fixed order per
        # partition, so each task encodes a fixed share (the same vectors on every run).
        parts = sc.defaultParallelism
        text = text.repartition(parts, "pin_id").sortWithinPartitions("pin_id")
        device, batch = args.device, args.encode_batch
        encoded = text.mapInArrow(
            lambda it: tables.encode_batches(it, device, batch), "pin_id bigint, features array<float>"
        )
        content = publish(
            "content", encoded.select("pin_id", F.slice("features", 1, tables.TEXT_DIM).alias("features"))
        )
        top = tables.largest_degree(graph)
        warm = books.select(F.col("book_id").alias("pin_id"))
        if cold is not None:
            warm = warm.join(cold.select("pin_id").distinct(), "pin_id", "left_anti")
        degree = tables.log_degree(warm, graph, top)
        publish("pins", tables.with_log_degree(content, degree, args.log_degree))

    with report.timed("pairs and labels"):
        publish("labels", tables.labels(books, book_tags, tags))
        for split, df in tables.pairs(graph, heldout, args.seed).items():
            publish(f"{split}_pairs", df)

    if cold is not None:
        with report.timed("new books"):
            new = cold.select("pin_id").distinct()
            for r in tables.REVEALED:
                edges = publish(f"cold_edges_r{r}", tables.revealed_edges(cold, r))
                # Scaled by the training graph's largest count, exactly as a warm book's degree.
                degree = tables.log_degree(new, edges, top)
                publish(f"cold_pins_r{r}", tables.with_log_degree(content, degree, args.log_degree))
                publish(f"cold_extra_edges_r{r}", tables.known_edges(edges, heldout))
            for split, df in tables.cold_pairs(graph, cold, args.seed).items():
                publish(f"cold_{split}_pairs", df)
    return report


def main(argv: list[str] | None = None) -> int:
    return spark_job_main("pinsage-goodbooks-prepare", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
