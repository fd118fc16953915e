"""Evaluate pin embeddings offline, as in the PinSage paper (section 4.2, Figure 4).

    spark-submit jobs/evaluate.py --embeddings T --pairs PAIRS --out O [--k 10,100,500]
        [--candidates N] [--seed 0] [--pins P] [--edges E] [--labels L] [--report-json R]

For every distinct (query_pin, pos_pin) pair, the exact rank of the positive among the candidates
(every pin of T, or a seeded sample of N of them, plus the positive; never the query) by cosine
similarity of the embeddings, computed on the executors one broadcast block of queries at a time.
With --pins the same ranking runs on the raw features (content-only baseline); with --edges the
candidates are ranked by random-walk visit counts from the query (graph-only, Pixie-style) and, for
scale, by their number of boards alone, the same order for every query (popularity). Reports
hit-rate@k, MRR and scaled MRR per method; writes O/pair_ranks (Delta), the histogram of random-pair
cosine similarities O/similarity_histogram.png and, with --labels, a 2-D PCA map O/pca_map.png.
Rank and tie definitions: jobs/lib/evaluation.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.lib import evaluation as E
from jobs.lib import walks as W
from jobs.lib.cli import job_main, new_run_id, spark_conf
from jobs.lib.io import InputError, delete_work, read_table, write_delta
from jobs.lib.session import get_spark
from jobs.lib.validate import check_links, check_nodes, conform
from jobs.lib.vectors import to_matrix

log = logging.getLogger("pinsage.evaluate")

HISTOGRAM_BINS = 100


@dataclass(frozen=True)
class EvaluateArgs:
    embeddings: str
    pairs: str
    out: str
    ks: tuple[int, ...] = (10, 100, 500)
    candidates: int | None = None
    seed: int = 0
    pins: str | None = None
    edges: str | None = None
    labels: str | None = None
    walks: W.WalkParams = field(default_factory=lambda: W.WalkParams(walks_per_node=500))
    walks_per_batch: int = 100
    similarity_pairs: int = 10_000
    map_sample: int = 2_000
    query_block_mb: float = 32.0
    master: str | None = None
    conf: dict[str, str] = field(default_factory=dict)
    keep_work: bool = False
    report_json: str | None = None


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return tuple(values)


def parse_args(argv: list[str] | None = None) -> EvaluateArgs:
    d = EvaluateArgs("", "", "")
    p = argparse.ArgumentParser(description="Offline evaluation of pin embeddings on Spark.")
    p.add_argument("--embeddings", required=True, help="pin_embeddings: pin_id, embedding")
    p.add_argument("--pairs", required=True, help="held-out pairs: query_pin, pos_pin")
    p.add_argument("--out", required=True, help="output root: pair_ranks (Delta) and the PNG plots")
    p.add_argument("--k", type=_positive_ints, default=d.ks, metavar="K,K,...",
                   help="cut-offs of the hit rate (default 10,100,500)")  # fmt: skip
    p.add_argument("--candidates", type=int, metavar="N",
                   help="rank among a seeded sample of N pins plus the positive (default: all)")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every sample and walk")
    p.add_argument("--pins", help="pins table (pin_id, features): content-only baseline")
    p.add_argument(
        "--edges", help="memberships (pin_id, board_id[, weight]): graph-only and popularity baselines"
    )
    p.add_argument("--labels", help="labels (pin_id, label): colours the PCA map")
    p.add_argument("--walks-per-query", type=int, default=d.walks.walks_per_node)
    p.add_argument("--walk-length", type=int, default=d.walks.walk_length)
    p.add_argument("--restart-prob", type=float, default=d.walks.restart_prob)
    p.add_argument("--walks-per-batch", type=int, default=d.walks_per_batch,
                   help="walk indices simulated per Spark job")  # fmt: skip
    p.add_argument("--similarity-pairs", type=int, default=d.similarity_pairs,
                   help="random pairs for the similarity histogram (0: skip)")  # fmt: skip
    p.add_argument("--map-sample", type=int, default=d.map_sample, help="labelled pins on the PCA map")
    p.add_argument("--query-block-mb", type=float, default=d.query_block_mb,
                   help="size of a broadcast block of query vectors (float64)")  # fmt: skip
    p.add_argument("--master", help="Spark master when run with python (default local[*])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf")
    p.add_argument("--keep-work", action="store_true", help="keep intermediate tables in OUT/_work")
    p.add_argument("--report-json", help="also write the report as JSON to this local file")
    a = p.parse_args(argv)
    try:
        walks = W.WalkParams(a.walks_per_query, a.walk_length, a.restart_prob, 1, a.seed)
    except ValueError as exc:
        p.error(str(exc).replace("walks_per_node", "walks_per_query"))
    for flag, value, low in (
        ("--candidates", a.candidates, 1), ("--walks-per-batch", a.walks_per_batch, 1),
        ("--similarity-pairs", a.similarity_pairs, 0), ("--map-sample", a.map_sample, 2),
    ):  # fmt: skip
        if value is not None and value < low:
            p.error(f"{flag} must be at least {low}, got {value}")
    if not a.query_block_mb > 0:
        p.error(f"--query-block-mb must be positive, got {a.query_block_mb}")
    conf = spark_conf(p, a.conf)
    return EvaluateArgs(
        embeddings=a.embeddings, pairs=a.pairs, out=a.out.rstrip("/"), ks=a.k, candidates=a.candidates,
        seed=a.seed, pins=a.pins, edges=a.edges, labels=a.labels, walks=walks,
        walks_per_batch=a.walks_per_batch, similarity_pairs=a.similarity_pairs, map_sample=a.map_sample,
        query_block_mb=a.query_block_mb, master=a.master, conf=conf, keep_work=a.keep_work,
        report_json=a.report_json,
    )  # fmt: skip


@dataclass
class EvaluationReport:
    run_id: str
    params: dict
    inputs: dict[str, int] = field(default_factory=dict)
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    similarity: dict[str, dict] = field(default_factory=dict)
    # Per baseline method, per "hit@k": pairs only the embedding hits, only the baseline hits, and
    # the exact sign test's two-sided p-value.
    paired: dict[str, dict[str, dict]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"run {self.run_id}: " + ", ".join(f"{k} {v}" for k, v in self.params.items())]
        lines.append("inputs: " + ", ".join(f"{k} {v:,}" for k, v in self.inputs.items()))
        names = E.metric_names(self.params["k"])
        heads = [n.replace("scaled_mrr", "scaled MRR").replace("mrr", "MRR") for n in names]
        lines.append(f"{'method':<11}{'pairs':>9}{'candidates':>12}" + "".join(f"{h:>12}" for h in heads))
        for method, m in self.methods.items():
            lines.append(
                f"{method:<11}{m['pairs']:>9,}{m['mean_candidates']:>12,.1f}"
                + "".join(f"{m[n]:>12.4f}" for n in names)
            )
        for method, by_k in self.paired.items():
            for name, c in by_k.items():
                lines.append(
                    f"embedding vs {method} at {name}: {c['embedding_only']:,} pairs only embedding, "
                    f"{c['baseline_only']:,} only {method}; sign test p = {E.format_p(c['p_value'])}"
                )
        for method, s in self.similarity.items():
            shown = {k: "n/a" if s.get(k) is None else f"{s[k]:.3f}" for k in ("mean", "std", "kurtosis")}
            lines.append(
                f"random-pair cosine ({method}): {s['pairs']:,} pairs, mean {shown['mean']}, "
                f"std {shown['std']}, excess kurtosis {shown['kurtosis']}"
            )
        lines += [f"output {name}: {path}" for name, path in self.outputs.items()]
        lines += [f"note: {n}" for n in self.notes]
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


@dataclass
class Inputs:
    """Validated inputs, lazy. Vector tables are (pin_id, vec); `pool` is (pin_id)."""

    embeddings: DataFrame
    dim: int
    pairs: DataFrame  # distinct (query_pin, pos_pin)
    pool: DataFrame
    pins: DataFrame | None = None
    pins_dim: int = 0
    edges: DataFrame | None = None
    labels: DataFrame | None = None


def vector_table(df: DataFrame, table: str, column: str, report: EvaluationReport) -> tuple[DataFrame, int]:
    """Check a (pin_id, <column>) vector table as the embed job checks its pins; (pin_id, vec), width."""
    dim = E.vector_width(df, column)
    renamed = df.select("pin_id", F.col(column).alias("features"))
    try:
        report.inputs[table] = check_nodes(renamed, table, "pin_id", dim, "the length of its first row")
    except InputError as exc:
        raise InputError(table, column if exc.column == "features" else exc.column, exc.problem) from None
    if dim == 0:
        raise InputError(table, column, "vectors have length 0")
    return df.select("pin_id", F.col(column).alias("vec")), dim


def load_inputs(spark: SparkSession, args: EvaluateArgs, report: EvaluationReport) -> Inputs:
    """Read and check every input; everything that can reject the input runs here, before any write.
    Columns and types of every table come first (no Spark job), so a wrong table fails at once."""
    spark.sparkContext.setJobDescription("validate inputs")
    raw = conform(read_table(spark, "pin_embeddings", args.embeddings), "pin_embeddings")
    pairs = conform(read_table(spark, "pairs", args.pairs), "pairs")
    pins = conform(read_table(spark, "pins", args.pins), "pins") if args.pins else None
    edges = conform(read_table(spark, "edges", args.edges), "edges") if args.edges else None
    labels = E.conform_labels(read_table(spark, "labels", args.labels)) if args.labels else None

    embeddings, dim = vector_table(raw, "pin_embeddings", "embedding", report)
    stats = E.check_pairs(pairs, embeddings, "pin_embeddings")
    report.inputs["pairs"], report.inputs["distinct pairs"] = stats.rows, stats.distinct
    # Every method reads the distinct pairs several times; they are small, so keep them.
    pairs = E.distinct_pairs(pairs).persist(StorageLevel.MEMORY_AND_DISK)
    pool = E.candidate_pool(embeddings, args.candidates, args.seed)
    inputs = Inputs(embeddings, dim, pairs, pool)
    if pins is not None:
        inputs.pins, inputs.pins_dim = vector_table(pins, "pins", "features", report)
        pair_pins = pairs.select(F.col("query_pin").alias("pin_id")).union(pairs.select("pos_pin"))
        E.check_covered(pool.union(pair_pins).distinct(), inputs.pins, "pins",
                        "candidate or pair pins of pin_embeddings")  # fmt: skip
    if edges is not None:
        report.inputs["edges"] = check_links(edges, "edges", ("pin_id", "board_id")).rows
        kept = edges.where(F.col("pin_id").isNotNull() & F.col("board_id").isNotNull())
        # As in the neighbourhood job: a membership listed twice is one, with the larger weight.
        inputs.edges = kept.groupBy("pin_id", "board_id").agg(F.max("weight").alias("weight"))
    if labels is not None:
        report.inputs["labels"] = check_nodes(labels, "labels", "pin_id", None, "")
        inputs.labels = labels.select("pin_id", F.coalesce("label", F.lit("(none)")).alias("label"))
    return inputs


def materialise(spark: SparkSession, df: DataFrame, path: str) -> DataFrame:
    """Write a work table and read it back, so later passes start from it, not from its plan."""
    df.write.format("delta").mode("overwrite").save(path)
    return spark.read.format("delta").load(path)


def rank_by_similarity(
    spark: SparkSession, method: str, vectors: DataFrame, dim: int, candidates: DataFrame,
    pairs: DataFrame, n_pairs: int, block_mb: float,
) -> DataFrame:  # fmt: skip
    """PAIR_RANKS rows by cosine similarity: one Spark job per block of queries, each broadcasting
    the block's query vectors and scanning every candidate once.

    The driver holds one block of query and positive vectors at a time, and the five counts of
    every pair (40 bytes a pair); the candidates' vectors never leave the executors."""
    sc = spark.sparkContext
    per_block, blocks = E.blocks_for(n_pairs, dim, block_mb)
    # Cached, not written: the pairs' vectors are small next to the candidates, and each block
    # reads them once.
    pair_vectors = E.pair_vectors(pairs, vectors, blocks).persist(StorageLevel.MEMORY_AND_DISK)
    parts = []
    try:
        for b in range(blocks):
            sc.setJobDescription(f"{method}: rank query block {b + 1}/{blocks}")
            table = pair_vectors.where(F.col("block") == b).toArrow()
            log.info("%s: query block %d/%d: %d pairs (about %d a block)", method, b + 1, blocks,
                     table.num_rows, per_block)  # fmt: skip
            if table.num_rows == 0:
                continue
            ref = sc.broadcast(E.QueryBlock.from_arrow(table, dim))
            parts.append(E.count_above(candidates, ref, dim).toArrow())
            ref.destroy()
    finally:
        pair_vectors.unpersist()
    counts = (
        spark.createDataFrame(pa.concat_tables(parts)) if parts else spark.createDataFrame([], E.COUNTS_DDL)
    )
    return E.ranks_from_counts(pairs, counts, method)


def rank_by_walks(spark: SparkSession, inputs: Inputs, args: EvaluateArgs, work: str) -> DataFrame:
    """PAIR_RANKS rows by visit counts of random walks with restart from each query pin (the
    paper's Pixie baseline), walked with jobs/lib/walks.py as the neighbourhood job walks."""
    sc = spark.sparkContext
    params = args.walks
    sc.setJobDescription("graph: build the bucketed adjacency")
    # The deduplicated edges are read twice (degrees, then buckets); only the tables every step
    # joins are worth writing.
    adjacency = W.undirected(inputs.edges)
    stats = materialise(spark, W.node_stats(adjacency), f"{work}/graph/stats")
    table = materialise(spark, W.buckets(adjacency, stats), f"{work}/graph/buckets")
    queries = inputs.pairs.select(F.col("query_pin").alias("node")).distinct()
    sources = stats.where(F.col("node_t") == W.PIN).join(queries, "node", "left_semi")
    counts_path = f"{work}/graph/counts"
    for i, first in enumerate(range(0, params.walks_per_node, args.walks_per_batch)):
        walk_ids = range(first, min(first + args.walks_per_batch, params.walks_per_node))
        sc.setJobDescription(f"graph: walks {walk_ids.start}-{walk_ids.stop - 1} of {params.walks_per_node}")
        walkers = W.start_walkers(sources, walk_ids)
        for s in range(1, params.walk_length + 1):
            walkers = W.step(walkers, table, params, s, same_type=True)
        W.visit_counts(walkers).write.format("delta").mode("overwrite" if i == 0 else "append").save(
            counts_path
        )
    counts = (
        spark.read.format("delta")
        .load(counts_path)
        .groupBy("src_t", "src", "visited")
        .agg(F.sum("count").alias("count"))
    )
    return E.graph_ranks(inputs.pairs, E.same_type_visits(counts, W.PIN), inputs.pool)


def put_file(spark: SparkSession, local: str, dest: str) -> None:
    """Copy a driver-local file to `dest` on the job's file system (local, HDFS, S3, ...)."""
    jvm = spark.sparkContext._jvm
    target = jvm.org.apache.hadoop.fs.Path(dest)
    fs = target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(os.path.abspath(local)), target)


def similarity_health(
    spark: SparkSession, vectors: dict[str, DataFrame], args: EvaluateArgs, report: EvaluationReport,
    scratch: str,
) -> None:  # fmt: skip
    """Figure 4: cosine similarity of seeded random pairs per vector table: statistics in the report,
    histograms in one PNG."""
    panels = {}
    pairs = E.random_pairs(vectors["embedding"].select("pin_id"), args.similarity_pairs, args.seed)
    for method, table in vectors.items():
        spark.sparkContext.setJobDescription(f"{method}: cosine similarity of random pairs")
        cosines = E.pair_cosines(pairs, table).persist(StorageLevel.MEMORY_AND_DISK)
        stats = E.similarity_stats(cosines).first().asDict()
        report.similarity[method] = stats
        counts = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        for row in E.similarity_histogram(cosines, HISTOGRAM_BINS).collect():
            counts[row["bin"]] = row["count"]
        cosines.unpersist()
        panels[method] = (counts, stats)
    if not report.similarity["embedding"]["pairs"]:
        report.notes.append("similarity histogram skipped: fewer than two pins")
        return
    local = os.path.join(scratch, "similarity_histogram.png")
    E.plot_histograms(panels, local)
    put_file(spark, local, f"{args.out}/similarity_histogram.png")
    report.outputs["similarity_histogram"] = f"{args.out}/similarity_histogram.png"


def pca_map(
    spark: SparkSession, inputs: Inputs, args: EvaluateArgs, report: EvaluationReport, scratch: str
) -> None:
    """A 2-D PCA map of a seeded sample of labelled pins' embeddings, coloured by label."""
    spark.sparkContext.setJobDescription("sample labelled embeddings for the PCA map")
    sample = E.labelled_sample(inputs.embeddings, inputs.labels, args.map_sample, args.seed).toArrow()
    if sample.num_rows < 2:
        report.notes.append(f"PCA map skipped: {sample.num_rows} labelled pins have an embedding")
        return
    coords, ratio = E.pca_2d(to_matrix(sample.column("vec").combine_chunks(), inputs.dim))
    local = os.path.join(scratch, "pca_map.png")
    E.plot_map(coords, sample.column("label").to_pylist(), ratio, local)
    put_file(spark, local, f"{args.out}/pca_map.png")
    report.outputs["pca_map"] = f"{args.out}/pca_map.png"


def run(spark: SparkSession, args: EvaluateArgs) -> EvaluationReport:
    run_id = new_run_id()
    params: dict = {"k": list(args.ks), "candidates": args.candidates or "all", "seed": args.seed}
    if args.edges:
        params.update(walks_per_query=args.walks.walks_per_node, walk_length=args.walks.walk_length,
                      restart_prob=args.walks.restart_prob)  # fmt: skip
    report = EvaluationReport(run_id, params)
    work = f"{args.out}/_work/{run_id}"
    sc = spark.sparkContext
    clock = time.perf_counter()
    inputs = load_inputs(spark, args, report)
    report.seconds["inputs"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    n_pairs = report.inputs["distinct pairs"]
    if args.candidates is not None:
        sc.setJobDescription("sample the candidate pool")
        inputs.pool = materialise(spark, inputs.pool, f"{work}/pool")
    # The pool is every pin, or the first N of them in the seeded order: no need to count it.
    rows = report.inputs["pin_embeddings"]
    report.inputs["candidate pool"] = rows if args.candidates is None else min(args.candidates, rows)
    vectors = {"embedding": (inputs.embeddings, inputs.dim)}
    if inputs.pins is not None:
        vectors["content"] = (inputs.pins, inputs.pins_dim)
    ranks = []
    for method, (table, dim) in vectors.items():
        candidates = table
        if method != "embedding" or args.candidates is not None:
            candidates = table.join(inputs.pool, "pin_id", "left_semi")
            # Every query block scans the candidates once: with several blocks, join them once.
            if E.blocks_for(n_pairs, dim, args.query_block_mb)[1] > 1:
                candidates = materialise(spark, candidates, f"{work}/{method}/candidates")
        ranks.append(
            rank_by_similarity(
                spark, method, table, dim, candidates, inputs.pairs, n_pairs, args.query_block_mb
            )
        )
        report.seconds[method] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()
    if inputs.edges is not None:
        ranks.append(rank_by_walks(spark, inputs, args, work))
        report.seconds["graph"] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()
        sc.setJobDescription("popularity: rank by boards per pin")
        ranks.append(E.popularity_ranks(inputs.pairs, inputs.edges, inputs.pool))

    sc.setJobDescription("publish pair_ranks")
    union = ranks[0]
    for df in ranks[1:]:
        union = union.unionByName(df)
    path = f"{args.out}/pair_ranks"
    version = write_delta(union, path, {"run_id": run_id, **{k: str(v) for k, v in params.items()}})
    published = spark.read.format("delta").load(path)
    order = {m: i for i, m in enumerate(["embedding", "content", "graph", "popularity"])}
    rows = sorted(E.metrics(published, args.ks).collect(), key=lambda r: order[r["method"]])
    report.methods = {r["method"]: {k: v for k, v in r.asDict().items() if k != "method"} for r in rows}
    for r in sorted(E.paired_hits(published, args.ks).collect(), key=lambda r: (order[r["method"]], r["k"])):
        wins, losses = r["reference_only"], r["method_only"]
        report.paired.setdefault(r["method"], {})[f"hit@{r['k']}"] = {
            "embedding_only": wins, "baseline_only": losses, "p_value": E.sign_test_p(wins, losses),
        }  # fmt: skip
    report.outputs["pair_ranks"] = f"{path} (Delta version {version})"
    report.seconds["publish"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pinsage-evaluate-") as scratch:
        if args.similarity_pairs > 0:
            similarity_health(spark, {m: t for m, (t, _) in vectors.items()}, args, report, scratch)
        if inputs.labels is not None:
            pca_map(spark, inputs, args, report, scratch)
    report.seconds["health"] = round(time.perf_counter() - clock, 3)
    inputs.pairs.unpersist()
    if not args.keep_work:
        delete_work(spark, work)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return job_main(
        lambda: run(get_spark("pinsage-evaluate", args.master, args.conf), args), args.report_json
    )


if __name__ == "__main__":
    sys.exit(main())
