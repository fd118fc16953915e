"""Evaluate pin embeddings offline, as in the PinSage paper (section 4.2, Figure 4).

    spark-submit jobs/evaluate.py --embeddings T --pairs PAIRS --out O [--k 10,100,500]
        [--candidates N] [--seed 0] [--pins P] [--edges E] [--extra-edges X] [--labels L]
        [--methods embedding,content,graph,popularity,itemknn,rp3beta,ease]
        [--validation-pairs V [--validation-methods M,...]] [--report-json R]

For every distinct (query_pin, pos_pin) pair, the exact rank of the positive among the candidates
(every pin of T, or a seeded sample of N of them, plus the positive; never the query) by cosine
similarity of the embeddings, computed on the executors one broadcast block of queries at a time.
With --pins the same ranking runs on the raw features (content-only baseline); with --edges the
candidates are ranked by random-walk visit counts from the query (graph-only, Pixie-style) and, for
scale, by their number of boards alone, the same order for every query (popularity). With --methods
the co-occurrence baselines of the memberships run too: item-kNN, RP3beta and EASE, each over a grid
of its hyperparameters (jobs/lib/evaluation/cooccurrence.py). With --validation-pairs the grids are
chosen in the same run: the validation pairs are ranked first (every grid point), each grid method's
point with the best validation hit@10 is chosen, and the pairs of --pairs see the chosen points only.
Reports hit-rate@k, MRR and scaled MRR per method; writes O/pair_ranks (Delta; with
--validation-pairs also O/validation_pair_ranks), the histogram of random-pair cosine similarities
O/similarity_histogram.png and, with --labels, a 2-D PCA map O/pca_map.png.
Rank and tie definitions: jobs/lib/evaluation/__init__.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.lib.cli import (
    CommonArgs,
    add_common_args,
    add_walk_args,
    at_least,
    job_args,
    positive,
    spark_job_main,
)
from jobs.lib.evaluation import cooccurrence as co
from jobs.lib.evaluation import health
from jobs.lib.evaluation.checks import check_covered, check_pairs, check_vector_table, conform_labels
from jobs.lib.evaluation.metrics import format_p, metric_names, metrics, paired_hits, sign_test_p
from jobs.lib.evaluation.ranking import (
    blocks_for,
    candidate_pool,
    distinct_pairs,
    pair_ranks,
    popularity_ranks,
    rank_by_similarity,
    rank_by_walks,
)
from jobs.lib.io import (
    InputError,
    delete_work,
    put_file,
    read_delta,
    read_table,
    write_and_reload,
    write_delta,
)
from jobs.lib.provenance import software
from jobs.lib.report import Report
from jobs.lib.validate import check_links, check_nodes, conform
from jobs.lib.vectors import to_matrix
from jobs.lib.walks import WalkParams, memberships

HISTOGRAM_BINS = 100
METHODS = ("embedding", "content", "graph", "popularity", "itemknn", "rp3beta", "ease")
# The methods ranked from the memberships (--edges and --extra-edges).
MEMBERSHIP_METHODS = ("graph", "popularity", "itemknn", "rp3beta", "ease")
# Methods run over a grid of hyperparameters: every grid point is reported as NAME[param=value,...].
GRID_METHODS = ("itemknn", "rp3beta", "ease")
DEFAULT_WALKS_PER_NODE = 500
DEFAULT_EASE_MAX_ITEMS = 50_000
_GB = 1e9


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
    methods: tuple[str, ...] | None = None
    extra_edges: str | None = None
    validation_pairs: str | None = None
    validation_methods: tuple[str, ...] | None = None
    itemknn_shrink: tuple[float, ...] = (0.0,)
    itemknn_neighbors: tuple[int, ...] = (0,)
    rp3_alpha: tuple[float, ...] = (1.0,)
    rp3_beta: tuple[float, ...] = (0.5,)
    ease_lambda: tuple[float, ...] = (500.0,)
    ease_max_items: int = DEFAULT_EASE_MAX_ITEMS
    max_board_pins: int = 0
    walks: WalkParams = field(default_factory=lambda: WalkParams(walks_per_node=DEFAULT_WALKS_PER_NODE))
    walks_per_batch: int = 100
    similarity_pairs: int = 10_000
    map_sample: int = 2_000
    query_block_mb: float = 32.0
    common: CommonArgs = field(default_factory=CommonArgs)


def _cut_offs(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated integers >= 1, sorted, each once."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return tuple(values)


def _grid(kind: type, low: float, above: bool = False):
    """An argparse type: comma-separated numbers of `kind`, each >= `low` (> with `above`), in the
    order given, each once."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(dict.fromkeys(kind(v) for v in text.split(",") if v.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s, got {text!r}"
            ) from None
        ok = all(np.isfinite(v) and (v > low if above else v >= low) for v in values)
        if not values or not ok:
            raise argparse.ArgumentTypeError(
                f"expected numbers {'>' if above else '>='} {low:g}, got {text!r}"
            )
        return values

    return parse


def _methods(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated names of METHODS, in the order given, each once."""
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [n for n in names if n not in METHODS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method {', '.join(unknown) or '(none)'}; expected some of {','.join(METHODS)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> EvaluateArgs:
    d = EvaluateArgs("", "", "")
    p = argparse.ArgumentParser(description="Offline evaluation of pin embeddings on Spark.")
    p.add_argument("--embeddings", required=True, help="pin_embeddings: pin_id, embedding")
    p.add_argument("--pairs", required=True, help="held-out pairs: query_pin, pos_pin")
    p.add_argument("--out", required=True, help="output root: pair_ranks (Delta) and the PNG plots")
    p.add_argument(
        "--k",
        type=_cut_offs,
        default=d.ks,
        metavar="K,K,...",
        help="cut-offs of the hit rate (default 10,100,500)",
    )
    p.add_argument(
        "--candidates",
        type=at_least(1),
        metavar="N",
        help="rank among a seeded sample of N pins plus the positive (default: all)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every sample and walk")
    p.add_argument("--pins", help="pins table (pin_id, features): content-only baseline")
    p.add_argument(
        "--edges", help="memberships (pin_id, board_id[, weight]): graph-only and popularity baselines"
    )
    p.add_argument(
        "--extra-edges",
        help="memberships (pin_id, board_id[, weight]) the membership methods see besides --edges",
    )
    p.add_argument("--labels", help="labels (pin_id, label): colours the PCA map")
    p.add_argument(
        "--methods",
        type=_methods,
        metavar="M,M,...",
        help=f"methods to run, of {','.join(METHODS)} (default: embedding, content with --pins, "
        "graph and popularity with --edges)",
    )
    p.add_argument(
        "--validation-pairs",
        help="pairs (query_pin, pos_pin) that choose each grid method's point in this run: ranked "
        "first by every grid point, then --pairs by the point with the best validation hit@10",
    )
    p.add_argument(
        "--validation-methods",
        type=_methods,
        metavar="M,M,...",
        help="of the methods that run, those that rank the validation pairs too (default: all; the "
        "grid methods always do)",
    )
    p.add_argument(
        "--itemknn-shrink",
        type=_grid(float, 0),
        default=d.itemknn_shrink,
        metavar="S,S,...",
        help="itemknn: shrinkage added to the cosine's denominator (grid; default 0)",
    )
    p.add_argument(
        "--itemknn-neighbors",
        type=_grid(int, 0),
        default=d.itemknn_neighbors,
        metavar="N,N,...",
        help="itemknn: only each query's N most similar pins keep their score, 0: all (grid; default 0)",
    )
    p.add_argument(
        "--rp3-alpha",
        type=_grid(float, 0),
        default=d.rp3_alpha,
        metavar="A,A,...",
        help="rp3beta: exponent of each step's probability (grid; default 1)",
    )
    p.add_argument(
        "--rp3-beta",
        type=_grid(float, 0),
        default=d.rp3_beta,
        metavar="B,B,...",
        help="rp3beta: exponent of the candidate's boards dividing its score (grid; default 0.5)",
    )
    p.add_argument(
        "--ease-lambda",
        type=_grid(float, 0, above=True),
        default=d.ease_lambda,
        metavar="L,L,...",
        help="ease: L2 regularisation (grid; default 500)",
    )
    p.add_argument(
        "--ease-max-items",
        type=at_least(1),
        default=d.ease_max_items,
        metavar="N",
        help="ease: refuse when more pins than this have memberships (a dense N x N float64 matrix, "
        f"two at the peak, on the driver; default {DEFAULT_EASE_MAX_ITEMS:,})",
    )
    p.add_argument(
        "--max-board-pins",
        type=at_least(0),
        default=d.max_board_pins,
        metavar="N",
        help="itemknn, rp3beta, ease: leave out boards with more pins than this (0: none; default 0)",
    )
    add_walk_args(
        p, d.walks.walks_per_node, seed=False, walks_per_batch=d.walks_per_batch, starts="each query pin"
    )
    p.add_argument(
        "--similarity-pairs",
        type=at_least(0),
        default=d.similarity_pairs,
        help="random pairs for the similarity histogram (0: skip)",
    )
    p.add_argument(
        "--map-sample", type=at_least(2), default=d.map_sample, help="labelled pins on the PCA map"
    )
    p.add_argument(
        "--query-block-mb",
        type=positive,
        default=d.query_block_mb,
        help="size of a broadcast block of query vectors (float64)",
    )
    add_common_args(p)
    a = p.parse_args(argv)
    if a.extra_edges and not a.edges:
        p.error("argument --extra-edges: needs --edges")
    if a.validation_methods and not a.validation_pairs:
        p.error("argument --validation-methods: needs --validation-pairs")
    walks = WalkParams(a.walks_per_node, a.walk_length, a.restart_prob, 1, a.seed)
    return job_args(EvaluateArgs, p, a, out=a.out.rstrip("/"), ks=a.k, walks=walks)


@dataclass
class EvaluationReport(Report):
    run_id: str
    params: dict
    inputs: dict[str, int] = field(default_factory=dict)
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    # With --validation-pairs: per method run on them (every grid point), its metrics there.
    validation: dict[str, dict[str, float]] = field(default_factory=dict)
    similarity: dict[str, dict] = field(default_factory=dict)
    # Per baseline method, per "hit@k": pairs only the embedding hits, only the baseline hits, and
    # the exact sign test's two-sided p-value.
    paired: dict[str, dict[str, dict]] = field(default_factory=dict)
    # Per grid point run (itemknn[...], rp3beta[...], ease[...]): its method and hyperparameters.
    grid: dict[str, dict] = field(default_factory=dict)
    # Per grid method run: the grid point with the highest hit@10 (hit@ the smallest --k without
    # 10) on the validation pairs (on --pairs without them); among equals the highest MRR, then the
    # first in grid order.
    best: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"run {self.run_id}: " + ", ".join(f"{k} {v}" for k, v in self.params.items())]
        lines.append("inputs: " + ", ".join(f"{k} {v:,}" for k, v in self.inputs.items()))
        if self.validation:
            lines.append("validation pairs:")
            lines += self.table(self.validation)
            lines.append("pairs:")
        lines += self.table(self.methods)
        on = " on the validation pairs" if self.validation else ""
        lines += [
            f"best {base} by {best_metric(self.params['k'])}{on}: {name}" for base, name in self.best.items()
        ]
        for method, by_k in self.paired.items():
            for name, c in by_k.items():
                lines.append(
                    f"embedding vs {method} at {name}: {c['embedding_only']:,} pairs only embedding, "
                    f"{c['baseline_only']:,} only {method}; sign test p = {format_p(c['p_value'])}"
                )
        for method, s in self.similarity.items():
            shown = {k: "n/a" if s.get(k) is None else f"{s[k]:.3f}" for k in ("mean", "std", "kurtosis")}
            lines.append(
                f"random-pair cosine ({method}): {s['pairs']:,} pairs, mean {shown['mean']}, "
                f"std {shown['std']}, excess kurtosis {shown['kurtosis']}"
            )
        lines += [f"output {name}: {path}" for name, path in self.outputs.items()]
        lines += [f"note: {n}" for n in self.notes]
        return lines

    def table(self, methods: dict[str, dict[str, float]]) -> list[str]:
        names = metric_names(self.params["k"])
        heads = [n.replace("scaled_mrr", "scaled MRR").replace("mrr", "MRR") for n in names]
        w = max([11, *(len(m) + 2 for m in methods)])
        lines = [f"{'method':<{w}}{'pairs':>9}{'candidates':>12}" + "".join(f"{h:>12}" for h in heads)]
        for method, m in methods.items():
            lines.append(
                f"{method:<{w}}{m['pairs']:>9,}{m['mean_candidates']:>12,.1f}"
                + "".join(f"{m[n]:>12.4f}" for n in names)
            )
        return lines


def best_metric(ks: list[int] | tuple[int, ...]) -> str:
    """The hit rate that picks the best grid point: hit@10, or hit@ the smallest cut-off without 10."""
    return "hit@10" if 10 in ks else f"hit@{min(ks)}"


@dataclass
class Inputs:
    """Validated inputs, lazy. Vector tables are (pin_id, vec); `pool` is (pin_id)."""

    embeddings: DataFrame
    dim: int
    pairs: DataFrame  # distinct (query_pin, pos_pin)
    pool: DataFrame
    validation: DataFrame | None = None  # distinct (query_pin, pos_pin) of --validation-pairs
    pins: DataFrame | None = None
    pins_dim: int = 0
    edges: DataFrame | None = None  # memberships of --edges and --extra-edges (walks.memberships)
    members: DataFrame | None = None  # binary (pin_id, board_id) of the co-occurrence methods
    labels: DataFrame | None = None
    methods: tuple[str, ...] = ()  # the methods to run, in METHODS order


@dataclass(frozen=True)
class Skip:
    """A requested method that will not run: its missing or refusing input, and why."""

    method: str
    table: str
    column: str | None
    problem: str

    def note(self) -> str:
        where = f"table '{self.table}'" + (f", column '{self.column}'" if self.column else "")
        return f"method {self.method} skipped: {where}: {self.problem}"


def plan_methods(
    args: EvaluateArgs, pins: bool, edges: bool, ease_items: int | None
) -> tuple[tuple[str, ...], list[Skip]]:
    """(methods to run in METHODS order, the requested methods skipped). Without --methods: the
    embedding, content with --pins, graph and popularity with --edges. A requested method whose
    input is missing, or ease with more than --ease-max-items items (`ease_items` pins with
    memberships), is skipped; when that leaves nothing to run, the input is bad (InputError)."""
    if args.methods is None:
        wanted = ["embedding", *(["content"] if pins else []), *(["graph", "popularity"] if edges else [])]
    else:
        wanted = list(args.methods)
    skipped = []
    for m in wanted:
        if m == "content" and not pins:
            skipped.append(Skip(m, "pins", None, "not given (--pins)"))
        elif m in MEMBERSHIP_METHODS and not edges:
            skipped.append(Skip(m, "edges", None, "not given (--edges)"))
        elif m == "ease" and ease_items is not None and ease_items > args.ease_max_items:
            gb = co.ease_bytes(ease_items) / _GB
            skipped.append(
                Skip(
                    m,
                    "edges",
                    "pin_id",
                    f"{ease_items:,} pins have memberships, more than --ease-max-items "
                    f"{args.ease_max_items:,} (ease holds a dense {ease_items:,} x {ease_items:,} float64 "
                    f"matrix of {gb:,.1f} GB, two at its peak, on the driver)",
                )
            )
    run = tuple(m for m in METHODS if m in wanted and m not in {s.method for s in skipped})
    if not run:
        first = skipped[0]
        problems = "; ".join(s.note() for s in skipped)
        raise InputError(first.table, first.column, f"no method of --methods can run: {problems}")
    return run, skipped


@contextlib.contextmanager
def as_table(name: str, schema: str) -> Iterator[None]:
    """Checks of table `name` read as `schema` ("pairs", "edges") name `name` when they fail."""
    try:
        yield
    except InputError as exc:
        if exc.table != schema:
            raise
        raise InputError(name, exc.column, exc.problem) from None


def load_inputs(spark: SparkSession, args: EvaluateArgs, report: EvaluationReport) -> Inputs:
    """Read and check every input; everything that can reject the input runs here, before any write.
    Columns and types of every table come first (no Spark job), so a wrong table fails at once."""
    spark.sparkContext.setJobDescription("validate inputs")
    raw = conform(read_table(spark, "pin_embeddings", args.embeddings), "pin_embeddings")
    pairs = conform(read_table(spark, "pairs", args.pairs), "pairs")
    validation = None
    if args.validation_pairs:
        with as_table("validation_pairs", "pairs"):
            validation = conform(read_table(spark, "validation_pairs", args.validation_pairs), "pairs")
    pins = conform(read_table(spark, "pins", args.pins), "pins") if args.pins else None
    edges = conform(read_table(spark, "edges", args.edges), "edges") if args.edges else None
    extra = None
    if args.extra_edges:
        with as_table("extra_edges", "edges"):
            extra = conform(read_table(spark, "extra_edges", args.extra_edges), "edges")
    labels = conform_labels(read_table(spark, "labels", args.labels)) if args.labels else None

    embeddings = check_vector_table(raw, "pin_embeddings", "embedding")
    report.inputs["pin_embeddings"] = embeddings.rows
    stats = check_pairs(pairs, embeddings.vectors, "pin_embeddings")
    report.inputs["pairs"], report.inputs["distinct pairs"] = stats.rows, stats.distinct
    # Every method reads the distinct pairs several times; they are small, so keep them.
    pairs = distinct_pairs(pairs).persist(StorageLevel.MEMORY_AND_DISK)
    pool = candidate_pool(embeddings.vectors, args.candidates, args.seed)
    inputs = Inputs(embeddings.vectors, embeddings.dim, pairs, pool)
    every_pair = pairs
    if validation is not None:
        with as_table("validation_pairs", "pairs"):
            stats = check_pairs(validation, embeddings.vectors, "pin_embeddings")
        report.inputs["validation pairs"] = stats.rows
        report.inputs["validation distinct pairs"] = stats.distinct
        inputs.validation = distinct_pairs(validation).persist(StorageLevel.MEMORY_AND_DISK)
        if args.validation_methods is None or "content" in args.validation_methods:
            every_pair = pairs.union(inputs.validation)
    if pins is not None:
        content = check_vector_table(pins, "pins", "features")
        report.inputs["pins"] = content.rows
        inputs.pins, inputs.pins_dim = content.vectors, content.dim
        pair_pins = every_pair.select(F.col("query_pin").alias("pin_id")).union(every_pair.select("pos_pin"))
        covered = pool.union(pair_pins).distinct()
        check_covered(covered, inputs.pins, "pins", "candidate or pair pins of pin_embeddings")
    if edges is not None:
        report.inputs["edges"] = check_links(edges, "edges", ("pin_id", "board_id")).rows
        if extra is not None:
            report.inputs["extra edges"] = check_links(extra, "extra_edges", ("pin_id", "board_id")).rows
            edges = edges.unionByName(extra)
        inputs.edges = memberships(edges)
        inputs.members = co.binary_memberships(inputs.edges, args.max_board_pins)
    if labels is not None:
        report.inputs["labels"] = check_nodes(labels, "labels", "pin_id", None, "")
        inputs.labels = labels.select("pin_id", F.coalesce("label", F.lit("(none)")).alias("label"))
    ease_items = None
    if inputs.members is not None and args.methods is not None and "ease" in args.methods:
        spark.sparkContext.setJobDescription("ease: count the pins with memberships")
        ease_items = inputs.members.select("pin_id").distinct().count()
        report.inputs["ease items"] = ease_items
    inputs.methods, skipped = plan_methods(args, pins is not None, edges is not None, ease_items)
    for skip in skipped:
        report.notes.append(skip.note())
        print(f"warning: {skip.note()}", file=sys.stderr)
    return inputs


def similarity_health(
    spark: SparkSession,
    vectors: dict[str, DataFrame],
    args: EvaluateArgs,
    report: EvaluationReport,
    scratch: str,
) -> None:
    """Figure 4: cosine similarity of seeded random pairs per vector table: statistics in the report,
    histograms in one PNG."""
    panels = {}
    pairs = health.random_pairs(vectors["embedding"].select("pin_id"), args.similarity_pairs, args.seed)
    for method, table in vectors.items():
        spark.sparkContext.setJobDescription(f"{method}: cosine similarity of random pairs")
        cosines = health.pair_cosines(pairs, table).persist(StorageLevel.MEMORY_AND_DISK)
        stats = health.similarity_stats(cosines).first().asDict()
        report.similarity[method] = stats
        counts = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        for row in health.similarity_histogram(cosines, HISTOGRAM_BINS).collect():
            counts[row["bin"]] = row["count"]
        cosines.unpersist()
        panels[method] = (counts, stats)
    if not report.similarity["embedding"]["pairs"]:
        report.notes.append("similarity histogram skipped: fewer than two pins")
        return
    local = os.path.join(scratch, "similarity_histogram.png")
    health.plot_histograms(panels, local)
    put_file(spark, local, f"{args.out}/similarity_histogram.png")
    report.outputs["similarity_histogram"] = f"{args.out}/similarity_histogram.png"


def pca_map(
    spark: SparkSession, inputs: Inputs, args: EvaluateArgs, report: EvaluationReport, scratch: str
) -> None:
    """A 2-D PCA map of a seeded sample of labelled pins' embeddings, coloured by label."""
    spark.sparkContext.setJobDescription("sample labelled embeddings for the PCA map")
    sample = health.labelled_sample(inputs.embeddings, inputs.labels, args.map_sample, args.seed).toArrow()
    if sample.num_rows < 2:
        report.notes.append(f"PCA map skipped: {sample.num_rows} labelled pins have an embedding")
        return
    coords, ratio = health.pca_2d(to_matrix(sample.column("vec").combine_chunks(), inputs.dim))
    local = os.path.join(scratch, "pca_map.png")
    health.plot_map(coords, sample.column("label").to_pylist(), ratio, local)
    put_file(spark, local, f"{args.out}/pca_map.png")
    report.outputs["pca_map"] = f"{args.out}/pca_map.png"


def publish(
    spark: SparkSession,
    ranks: list[DataFrame],
    path: str,
    report: EvaluationReport,
    ks: tuple[int, ...],
    paired: bool = True,
) -> tuple[dict[str, dict], dict[str, dict], str]:
    """Write every method's ranks as the Delta table `path` in one commit; return, computed from the
    table as written, the metrics per method and (with `paired`) the paired comparisons with the
    embedding, in the order of `report.methods` (the order the methods ran), and where the table
    was written."""
    union = ranks[0]
    for df in ranks[1:]:
        union = union.unionByName(df)
    metadata = {
        "run_id": report.run_id,
        **{k: str(v) for k, v in report.params.items()},
        "software": software(spark),
    }
    version = write_delta(union, path, metadata)
    published = read_delta(spark, path)
    order = {m: i for i, m in enumerate(report.methods)}
    rows = sorted(metrics(published, ks).collect(), key=lambda r: order[r["method"]])
    found = {r["method"]: {k: v for k, v in r.asDict().items() if k != "method"} for r in rows}
    comparisons: dict[str, dict] = {}
    hits = paired_hits(published, ks).collect() if paired else []
    for r in sorted(hits, key=lambda r: (order[r["method"]], r["k"])):
        wins, losses = r["reference_only"], r["method_only"]
        comparisons.setdefault(r["method"], {})[f"hit@{r['k']}"] = {
            "embedding_only": wins,
            "baseline_only": losses,
            "p_value": sign_test_p(wins, losses),
        }
    return found, comparisons, f"{path} (Delta version {version})"


def best_points(grid: dict[str, dict], methods: dict[str, dict], ks: tuple[int, ...]) -> dict[str, str]:
    """Per grid method with points in `methods` (metrics by name), the point with the highest
    best_metric; among equals the one with the highest MRR, then the first in grid order."""
    by, best = best_metric(ks), {}
    for base in GRID_METHODS:
        points = [n for n, g in grid.items() if g["method"] == base and n in methods]
        if points:
            best[base] = max(points, key=lambda n: (methods[n][by], methods[n]["mrr"]))
    return best


def grid_points(args: EvaluateArgs, method: str) -> list:
    """The grid of `method` (itemknn, rp3beta or ease), in the order of its flags' values."""
    if method == "itemknn":
        return [co.ItemKnn(s, n) for s in args.itemknn_shrink for n in args.itemknn_neighbors]
    if method == "rp3beta":
        return [co.RP3Beta(a, b) for a in args.rp3_alpha for b in args.rp3_beta]
    return [co.Ease(lam) for lam in args.ease_lambda]


def run_params(args: EvaluateArgs) -> dict:
    params: dict = {"k": list(args.ks), "candidates": args.candidates or "all", "seed": args.seed}
    if args.edges:
        walks = args.walks
        params.update(
            walks_per_node=walks.walks_per_node,
            walk_length=walks.walk_length,
            restart_prob=walks.restart_prob,
        )
    if args.methods is not None:
        params["methods"] = ",".join(args.methods)
        wanted = set(args.methods)
        if "itemknn" in wanted:
            params.update(
                itemknn_shrink=list(args.itemknn_shrink), itemknn_neighbors=list(args.itemknn_neighbors)
            )
        if "rp3beta" in wanted:
            params.update(rp3_alpha=list(args.rp3_alpha), rp3_beta=list(args.rp3_beta))
        if "ease" in wanted:
            params.update(ease_lambda=list(args.ease_lambda), ease_max_items=args.ease_max_items)
        if wanted & set(GRID_METHODS):
            params["max_board_pins"] = args.max_board_pins
    if args.validation_pairs:
        params["validation_methods"] = ",".join(args.validation_methods or ("all",))
    return params


@dataclass
class Phase:
    """One set of pairs ranked and published: the validation pairs (by every grid point) or the
    pairs of --pairs (with validation pairs, by each grid method's chosen point only)."""

    name: str  # "validation" or "pairs"
    pairs: DataFrame
    n_pairs: int
    methods: tuple[str, ...]
    points: dict[str, list]  # per grid method run, its points
    table: str  # the Delta table of its ranks

    def stage(self, name: str) -> str:
        """The report's timing stage of `name` in this phase."""
        return name if self.name == "pairs" else f"{self.name} {name}"


@dataclass
class Shared:
    """What the phases of one run compute once: each similarity method's candidates, the
    co-occurrence self-join over every phase's query pins, and ease's counts of the --pairs pairs,
    computed with each inverse of the validation phase (only the chosen point's are published)."""

    candidates: dict[str, DataFrame] = field(default_factory=dict)
    scores: DataFrame | None = None
    ease: dict[str, pa.Table] = field(default_factory=dict)


def cooccurrence_ranks(
    inputs: Inputs,
    args: EvaluateArgs,
    report: EvaluationReport,
    phase: Phase,
    shared: Shared,
    pool_size: int,
    work: str,
) -> list[DataFrame]:
    """itemknn and rp3beta ranks of the phase's grid points, on Spark: the self-join written once
    (over every phase's query pins and every alpha), then one pass over its rows of the phase's
    query pins scores every point of both methods; the ranks are written, so the pass's time is
    its own."""
    sc = inputs.pairs.sparkSession.sparkContext
    methods = [m for m in ("itemknn", "rp3beta") if m in phase.methods]
    alphas = list(args.rp3_alpha) if "rp3beta" in inputs.methods else []
    with report.timed(phase.stage("cooccurrence")):
        if shared.scores is None:
            sc.setJobDescription("co-occurrence: self-join through the boards")
            queries = inputs.pairs if inputs.validation is None else inputs.pairs.union(inputs.validation)
            scores = co.cooccurrence(queries, inputs.members, inputs.pool, alphas)
            shared.scores = write_and_reload(scores, f"{work}/cooccurrence")
        sc.setJobDescription(f"{phase.name}: co-occurrence flags of the pairs")
        flags = co.pair_flags(phase.pairs, inputs.members, inputs.pool)
        flags = write_and_reload(flags, f"{work}/{phase.name}/pair_flags")
    name = " and ".join(methods)
    with report.timed(phase.stage(name)):
        sc.setJobDescription(f"{phase.name}: {name}: score and count")
        mine = F.broadcast(phase.pairs.select("query_pin").distinct())
        scores = shared.scores.join(mine, "query_pin", "left_semi")
        points = [pt for m in methods for pt in phase.points[m]]
        counts = co.rank_cooccurrence(scores, flags, points, alphas, pool_size)
        joined = flags.join(counts, ["query_pin", "pos_pin"])
        candidates = F.lit(pool_size) - F.col("q_in") - F.col("p_in") + 1
        ranks = pair_ranks(F.col("method"), F.col("higher"), F.col("ties"), candidates, joined)
        return [write_and_reload(ranks, f"{work}/{phase.name}/cooccurrence_ranks")]


def driver_pairs(pairs: DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(query, pos) of the distinct pairs, collected."""
    table = pairs.toArrow()
    return (
        table.column("query_pin").to_numpy().astype(np.int64),
        table.column("pos_pin").to_numpy().astype(np.int64),
    )


def ease_ranks(
    inputs: Inputs, args: EvaluateArgs, report: EvaluationReport, phase: Phase, shared: Shared
) -> DataFrame:
    """ease ranks of the phase's grid points, on the driver: the memberships, the pool and the pairs
    collected, one dense inverse per lambda. In the validation phase each inverse also counts the
    --pairs pairs (kept in `shared`), so the pairs phase reuses the chosen lambda's counts."""
    spark = inputs.pairs.sparkSession
    points = phase.points["ease"]
    with report.timed(phase.stage("ease")):
        if phase.name == "pairs" and all(pt.name in shared.ease for pt in points):
            tables = [shared.ease[pt.name] for pt in points]
        else:
            spark.sparkContext.setJobDescription(f"{phase.name}: ease: collect memberships, pool and pairs")
            items = co.EaseItems.from_arrow(inputs.members.toArrow())
            pool = np.unique(inputs.pool.toArrow().column("pin_id").to_numpy().astype(np.int64))
            sets = {phase.name: driver_pairs(phase.pairs)}
            if phase.name == "validation":
                sets["pairs"] = driver_pairs(inputs.pairs)
            by_set = co.ease_ranks(items, points, pool, sets, lambda n: report.timed(phase.stage(n)))
            tables = by_set[phase.name]
            shared.ease.update(zip((pt.name for pt in points), by_set.get("pairs", []), strict=False))
        df = spark.createDataFrame(pa.concat_tables(tables))
        return pair_ranks(F.col("method"), F.col("higher"), F.col("ties"), F.col("candidates"), df)


def rank_phase(
    inputs: Inputs,
    args: EvaluateArgs,
    report: EvaluationReport,
    phase: Phase,
    shared: Shared,
    pool_size: int,
    work: str,
) -> list[DataFrame]:
    """Every method's ranks of the phase's pairs, in METHODS order."""
    sc = inputs.pairs.sparkSession.sparkContext
    vectors = {"embedding": (inputs.embeddings, inputs.dim), "content": (inputs.pins, inputs.pins_dim)}
    ranks = []
    for method in ("embedding", "content"):
        if method not in phase.methods:
            continue
        table, dim = vectors[method]
        with report.timed(phase.stage(method)):
            if method not in shared.candidates:
                candidates = table
                if method != "embedding" or args.candidates is not None:
                    candidates = table.join(inputs.pool, "pin_id", "left_semi")
                    # Every query block of every phase scans the candidates once: with several
                    # blocks, join them once.
                    counts = [report.inputs["distinct pairs"], report.inputs.get("validation distinct pairs")]
                    scans = sum(blocks_for(n, dim, args.query_block_mb)[1] for n in counts if n)
                    if scans > 1:
                        candidates = write_and_reload(candidates, f"{work}/{method}/candidates")
                shared.candidates[method] = candidates
            ranks.append(
                rank_by_similarity(
                    method,
                    table,
                    dim,
                    shared.candidates[method],
                    phase.pairs,
                    phase.n_pairs,
                    args.query_block_mb,
                )
            )
    if "graph" in phase.methods:
        with report.timed(phase.stage("graph")):
            ranks.append(
                rank_by_walks(
                    phase.pairs,
                    inputs.edges,
                    inputs.pool,
                    args.walks,
                    args.walks_per_batch,
                    f"{work}/{phase.name}/graph",
                )
            )
    if "popularity" in phase.methods:
        sc.setJobDescription(f"{phase.name}: popularity: rank by boards per pin")
        ranks.append(popularity_ranks(phase.pairs, inputs.edges, inputs.pool))
    if "itemknn" in phase.methods or "rp3beta" in phase.methods:
        ranks += cooccurrence_ranks(inputs, args, report, phase, shared, pool_size, work)
    if "ease" in phase.methods:
        ranks.append(ease_ranks(inputs, args, report, phase, shared))
    return ranks


def run(spark: SparkSession, args: EvaluateArgs) -> EvaluationReport:
    run_id = args.common.run_id
    report = EvaluationReport(run_id, run_params(args))
    work = f"{args.out}/_work/{run_id}"
    sc = spark.sparkContext
    with report.timed("inputs"):
        inputs = load_inputs(spark, args, report)
        if args.candidates is not None:
            sc.setJobDescription("sample the candidate pool")
            inputs.pool = write_and_reload(inputs.pool, f"{work}/pool")
    # The pool is every pin, or the first N of them in the seeded order: no need to count it.
    rows = report.inputs["pin_embeddings"]
    pool_size = rows if args.candidates is None else min(args.candidates, rows)
    report.inputs["candidate pool"] = pool_size
    grid = {m: grid_points(args, m) for m in GRID_METHODS if m in inputs.methods}
    for method, points in grid.items():
        for pt in points:
            report.grid[pt.name] = {"method": method, **pt.params()}
    shared = Shared()
    if inputs.validation is not None:
        wanted = args.validation_methods or inputs.methods
        methods = tuple(m for m in inputs.methods if m in wanted or m in GRID_METHODS)
        phase = Phase(
            "validation",
            inputs.validation,
            report.inputs["validation distinct pairs"],
            methods,
            grid,
            f"{args.out}/validation_pair_ranks",
        )
        ranks = rank_phase(inputs, args, report, phase, shared, pool_size, work)
        report.methods = phase_methods(phase)
        with report.timed("validation publish"):
            sc.setJobDescription("publish validation_pair_ranks")
            report.validation, _, output = publish(spark, ranks, phase.table, report, args.ks, paired=False)
            report.outputs["validation_pair_ranks"] = output
        report.best = best_points(report.grid, report.validation, args.ks)
        # The pairs of --pairs are ranked by the chosen points only.
        grid = {m: [pt for pt in points if pt.name == report.best[m]] for m, points in grid.items()}
    phase = Phase(
        "pairs", inputs.pairs, report.inputs["distinct pairs"], inputs.methods, grid, f"{args.out}/pair_ranks"
    )
    ranks = rank_phase(inputs, args, report, phase, shared, pool_size, work)
    report.methods = phase_methods(phase)
    with report.timed("publish"):
        sc.setJobDescription("publish pair_ranks")
        report.methods, report.paired, report.outputs["pair_ranks"] = publish(
            spark, ranks, phase.table, report, args.ks
        )
    if inputs.validation is None:
        report.best = best_points(report.grid, report.methods, args.ks)

    vectors = {"embedding": inputs.embeddings}
    if inputs.pins is not None and "content" in inputs.methods:
        vectors["content"] = inputs.pins
    with report.timed("health"), tempfile.TemporaryDirectory(prefix="pinsage-evaluate-") as scratch:
        if args.similarity_pairs > 0:
            similarity_health(spark, vectors, args, report, scratch)
        if inputs.labels is not None:
            pca_map(spark, inputs, args, report, scratch)
    inputs.pairs.unpersist()
    if inputs.validation is not None:
        inputs.validation.unpersist()
    if not args.common.keep_work:
        delete_work(spark, work)
    return report


def phase_methods(phase: Phase) -> dict[str, dict]:
    """The phase's methods in the order they run, each grid method as its points; publish fills in
    their metrics."""
    names: list[str] = []
    for m in phase.methods:
        names += [pt.name for pt in phase.points[m]] if m in GRID_METHODS else [m]
    return {n: {} for n in names}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return spark_job_main("pinsage-evaluate", args, run, writes=args.out)


if __name__ == "__main__":
    sys.exit(main())
