"""goodbooks-10k end to end: prepare -> neighbors -> train -> embed -> evaluate, then a report.

    python jobs/goodbooks/run.py --data-dir DIR --out O [--variants pinsage,margin,mean,max,no-hard]
        [--train-flags '--epochs 4'] [--walk-flags '...'] [--candidates N] [--seed 0] [--resume]
        [--cold-share 0.1] [--no-baselines] [--baseline-flags '...']

Each step is the project's own command line, run as its own process (each prints the command it
runs, so any step can be rerun by hand). PinSage (importance pooling, hard-negative curriculum) is
evaluated against the content-only, graph-only and popularity baselines; the ablations retrain with
the paper's max-margin loss, with mean or max pooling, or without hard negatives, and evaluate the
same test pairs. New books (--cold-share, on by default): after pinsage is embedded, for each count
r of revealed memberships (0, 1, 3) the run is copied to O/cold/r<r>, the held-out new books are
embedded into the copy by jobs/embed_new.py as they would arrive (their features and r memberships),
and their pairs are evaluated, validation and test in one run, against the content-only and,
unless --no-baselines, the co-occurrence baselines (their grid points chosen on the validation
pairs). Writes O/report.md with the numbers and links to the evaluation's PNGs, and O/report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from jobs.lib.cli import CommonArgs, add_common_args, at_least, below_one, common_args, job_main
from jobs.lib.evaluation.metrics import format_p
from jobs.lib.report import Report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUIET = ["--conf", "spark.ui.showConsoleProgress=false"]


# Training flags of every variant, before the variant's own and the user's --train-flags (the last
# of a repeated flag wins). Besides the training pairs, each epoch draws a million fresh pairs of
# books that share a list: the held-out pairs alone are too few to learn the top of the ranking.
# The softmax loss ranks the top better than the paper's hinge here (the "margin" variant shows by
# how much), and the positives of 2,048 examples per batch as further negatives (log-count corrected)
# lift validation hit@10 from 0.0347 to 0.0376; hiding the list a co-membership pair was drawn from
# and the width (hidden 256, embedding 128) lift it to 0.0388 (docs/goodbooks.md).
TRAIN_DEFAULTS = tuple(
    shlex.split(
        "--epochs 6 --batch-size 8192 --lr 0.005 --hidden-dim 256 --embed-dim 128 "
        "--co-membership-pairs 1000000 --hide-pair-board --loss softmax --temperature 0.1 "
        "--in-batch-negatives 2048"
    )
)

# The lists' own features: their 256-dim spectral vectors of the graph's memberships (prepare's
# --board-features). They lead featureless lists at each of the 6 epochs' validation hit@10
# (0.0412 against 0.0388 after the last; 64 dimensions: 0.0403; docs/goodbooks.md).
BOARD_FEATURES = 256

# New books: the revealed-membership counts prepared (jobs/goodbooks/tables.py REVEALED), the splits
# of their pairs, and what the evaluation compares.
REVEALED = (0, 1, 3)
COLD_SPLITS = ("validation", "test")
COLD_METHODS = ("embedding", "content", "popularity", "itemknn", "rp3beta", "ease")
# At r = 0 a new book has no membership: every co-occurrence method scores it 0, so they are not run.
COLD_METHODS_R0 = ("embedding", "content", "popularity")
# The warm test evaluation of pinsage: every method; the validation run only what is chosen there.
WARM_METHODS = ("embedding", "content", "graph", "popularity", "itemknn", "rp3beta", "ease")
WARM_VALIDATION_METHODS = ("embedding", "itemknn", "rp3beta", "ease")
# The co-occurrence baselines' grids; each point is reported as its own method, the one chosen on
# the validation pairs is the one compared on the test pairs. Wide enough that the points chosen
# on goodbooks-10k's warm and new-book validation pairs lie inside it (docs/goodbooks.md); all
# neighbors kept, since a cut ties every candidate outside it with a positive there.
BASELINE_FLAGS = tuple(
    shlex.split(
        "--itemknn-shrink 0,10,100,1000,3000 --itemknn-neighbors 0 --rp3-alpha 0.1,0.4,0.7 "
        "--rp3-beta 0,0.1,0.2 --ease-lambda 500,4000,32000,128000"
    )
)


# Every walk of the neighborhoods in one Spark job: 5.8M walkers on goodbooks-10k, and each step
# joins the whole bucketed adjacency however few walkers there are (140 s of walks in four batches,
# 80 s in one; the same neighbors).
WALKS_PER_BATCH = 100
# The graph-only baseline's walks (500 from each test query pin) in one Spark job too: a batch of a
# subset's walks holds walks_per_batch x pins / query pins walk indices (jobs/lib/walks.py).
EVALUATION_WALKS_PER_BATCH = 500


@dataclass(frozen=True)
class Variant:
    title: str
    train_flags: tuple[str, ...]


VARIANTS: dict[str, Variant] = {
    "pinsage": Variant("importance pooling, hard-negative curriculum", ("--pooling", "importance")),
    "margin": Variant(
        "importance pooling, hard-negative curriculum, the paper's max-margin loss",
        ("--pooling", "importance", "--loss", "margin", "--in-batch-negatives", "0"),  # softmax only
    ),
    "mean": Variant("mean pooling, hard-negative curriculum", ("--pooling", "mean")),
    "max": Variant("max pooling, hard-negative curriculum", ("--pooling", "max")),
    "no-hard": Variant(
        "importance pooling, no hard negatives", ("--pooling", "importance", "--hard-negatives", "0")
    ),
}


@dataclass(frozen=True)
class GoodbooksArgs:
    data_dir: str
    out: str
    variants: tuple[str, ...] = tuple(VARIANTS)
    seed: int = 0
    train_flags: tuple[str, ...] = ()
    walk_flags: tuple[str, ...] = ()
    candidates: int | None = None
    resume: bool = False
    cold_share: float = 0.1
    log_degree: bool = True
    board_features: int = BOARD_FEATURES
    cold_splits: tuple[str, ...] = COLD_SPLITS
    baselines: bool = True
    baseline_flags: tuple[str, ...] = BASELINE_FLAGS
    common: CommonArgs = field(default_factory=CommonArgs)


def parse_args(argv: list[str] | None = None) -> GoodbooksArgs:
    p = argparse.ArgumentParser(description="goodbooks-10k end to end, with baselines and ablations.")
    p.add_argument("--data-dir", required=True, help="the goodbooks-10k folder (books.csv, to_read.csv, ...)")
    p.add_argument("--out", required=True, help="output root: tables, checkpoints, evaluations, report.md")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the walks and training")
    p.add_argument(
        "--train-flags",
        default="",
        help=f"flags for jobs/train.py after the defaults ({shlex.join(TRAIN_DEFAULTS)}), which they "
        "override",
    )
    p.add_argument("--walk-flags", default="", help="extra flags for jobs/neighborhoods.py")
    p.add_argument("--candidates", type=int, help="rank among a sample of this many pins (default: all)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip each step whose report O/reports/<step>.json an earlier run left (it succeeded)",
    )
    p.add_argument(
        "--cold-share",
        type=below_one,
        default=0.1,
        help="share of the books (with at least 4 memberships) held out as new books; 0: no new books",
    )
    p.add_argument(
        "--log-degree",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end the books' features with their scaled log degree (prepare's --log-degree; training "
        "then gets --structural-features 1, the column zeroed for books shown as arriving)",
    )
    p.add_argument(
        "--board-features",
        type=at_least(0),
        default=BOARD_FEATURES,
        help="give the lists K-dim spectral vectors of the graph's memberships as features (prepare's "
        "--board-features; training and embedding then get --boards); 0: featureless lists",
    )
    p.add_argument(
        "--cold-splits",
        default=",".join(COLD_SPLITS),
        help="new-book pairs to evaluate: validation to choose settings, test once they are chosen",
    )
    p.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="evaluate new books against the co-occurrence baselines too (popularity, item-kNN, "
        "RP3beta, EASE), besides the content-only one",
    )
    p.add_argument(
        "--baseline-flags",
        default=shlex.join(BASELINE_FLAGS),
        help="the co-occurrence baselines' grids, for jobs/evaluate.py",
    )
    add_common_args(p, work_tables=False)
    a = p.parse_args(argv)
    variants = tuple(v for v in a.variants.split(",") if v)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "pinsage" not in variants:
        p.error(f"--variants: must include pinsage, each of {', '.join(VARIANTS)}; got {a.variants!r}")
    if not set(a.cold_splits.split(",")) <= set(COLD_SPLITS):
        p.error(f"--cold-splits: a comma-separated subset of {','.join(COLD_SPLITS)}, got {a.cold_splits!r}")
    return GoodbooksArgs(
        a.data_dir.rstrip("/"),
        a.out.rstrip("/"),
        variants,
        a.seed,
        tuple(shlex.split(a.train_flags)),
        tuple(shlex.split(a.walk_flags)),
        a.candidates,
        a.resume,
        a.cold_share,
        a.log_degree,
        a.board_features,
        tuple(x for x in a.cold_splits.split(",") if x),
        a.baselines,
        tuple(shlex.split(a.baseline_flags)),
        common_args(p, a),
    )


def flags(**values: str) -> list[str]:
    """Keyword arguments as a command line's flags, in order: table_path="x" -> --table-path x."""
    return [item for name, value in values.items() for item in ("--" + name.replace("_", "-"), value)]


@dataclass
class ChainReport(Report):
    """The chain's report: `seconds` per step (kept across --resume), the collected numbers."""

    out: str
    results: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"goodbooks-10k: wrote {self.out}/report.md and {self.out}/report.json"]


def run(args: GoodbooksArgs) -> ChainReport:
    py, out = sys.executable, args.out
    master = ["--master", args.common.master] if args.common.master else []
    spark = [*master, *QUIET, *(x for k, v in args.common.conf.items() for x in ("--conf", f"{k}={v}"))]
    data, nbrs = f"{out}/data", f"{out}/neighbors"
    os.makedirs(f"{out}/reports", exist_ok=True)
    os.makedirs(f"{out}/models", exist_ok=True)
    report = ChainReport(out)
    timings = f"{out}/reports/seconds.json"
    if args.resume and os.path.exists(timings):
        with open(timings) as f:
            report.seconds = json.load(f)

    def step(name: str, cmd: list[str], copy: tuple[str, str] | None = None) -> None:
        """Run one of the project's command lines, which writes O/reports/<name>.json when it
        succeeds, after replacing folder copy[1] with a copy of copy[0] when given; stop the chain
        when it fails."""
        step_report = f"{out}/reports/{name}.json"
        if args.resume and os.path.exists(step_report):
            print(f"\n== {name}: done by an earlier run ({step_report})", flush=True)
            return
        cmd = [py, *cmd, "--report-json", step_report]
        with report.timed(name):
            if copy is not None:
                print(f"\n== {name}: copy {copy[0]} to {copy[1]}", flush=True)
                copy_run(*copy)
            print(f"\n== {name}: {shlex.join(cmd)}", flush=True)
            done = subprocess.run(cmd, cwd=ROOT)
        if done.returncode != 0:
            sys.exit(f"goodbooks: step '{name}' failed with exit status {done.returncode}")
        with open(timings, "w") as f:
            json.dump(report.seconds, f, indent=2)

    seed = flags(seed=str(args.seed))
    degree = "--log-degree" if args.log_degree else "--no-log-degree"
    prepare = [
        *flags(
            data_dir=args.data_dir,
            out=data,
            cold_share=str(args.cold_share),
            board_features=str(args.board_features),
        ),
        degree,
        *seed,
        *spark,
    ]
    step("prepare", ["jobs/goodbooks/prepare.py", *prepare])
    walk_inputs = flags(edges=f"{data}/edges", pins=f"{data}/pins", out=nbrs)
    walk_batch = flags(walks_per_batch=str(WALKS_PER_BATCH))
    step("neighbors", ["jobs/neighborhoods.py", *walk_inputs, *seed, *walk_batch, *args.walk_flags, *spark])
    graph = flags(
        pins=f"{data}/pins",
        edges=f"{data}/edges",
        board_neighbors=f"{nbrs}/board_neighbors",
        pin_neighbors=f"{nbrs}/pin_neighbors",
    )
    if args.board_features > 0:
        graph += flags(boards=f"{data}/boards")
    pairs = flags(pairs=f"{data}/train_pairs", validation_pairs=f"{data}/validation_pairs")
    sample = flags(candidates=str(args.candidates)) if args.candidates else []
    baselines = flags(pins=f"{data}/content", edges=f"{data}/edges", labels=f"{data}/labels")
    # The log degree is the one feature computed from memberships: zeroed for books shown as arriving.
    structural = ["--structural-features", "1"] if args.log_degree else []
    for name in args.variants:
        ckpt, embeddings = f"{out}/models/{name}.pt", f"{out}/runs/{name}"
        train = [*graph, *pairs, "--out", ckpt, *seed, *spark, *TRAIN_DEFAULTS, *structural]
        train += VARIANTS[name].train_flags
        step(f"train-{name}", ["jobs/train.py", *train, *args.train_flags])
        step(f"embed-{name}", ["jobs/embed.py", *graph, "--checkpoint", ckpt, "--out", embeddings, *spark])
        test = flags(embeddings=f"{embeddings}/pin_embeddings", pairs=f"{data}/test_pairs")
        evaluation = [*test, "--out", f"{out}/evaluation/{name}", *seed]
        evaluation += [*(baselines if name == "pinsage" else []), *sample]
        evaluation += flags(walks_per_batch=str(EVALUATION_WALKS_PER_BATCH))
        if name == "pinsage" and args.baselines:
            # The co-occurrence baselines choose their grid points on the validation pairs in the same
            # run, which then ranks the test pairs by the chosen points beside every other method.
            evaluation += flags(validation_pairs=f"{data}/validation_pairs")
            evaluation += ["--validation-methods", ",".join(WARM_VALIDATION_METHODS)]
            evaluation += ["--methods", ",".join(WARM_METHODS), "--extra-edges", f"{data}/train_edges"]
            evaluation += args.baseline_flags
        step(f"evaluate-{name}", ["jobs/evaluate.py", *evaluation, *spark])
        if name == "pinsage":
            for method, cmd in related_steps(out, embeddings, f"{data}/test_pairs").items():
                step(f"related-{method}", [*cmd, *spark])
    if args.cold_share > 0:
        for r in REVEALED:
            # embed_new merges into its base: each r gets its own copy of the pinsage run.
            root = f"{out}/cold/r{r}"
            new = flags(new_pins=f"{data}/cold_pins_r{r}", new_edges=f"{data}/cold_edges_r{r}", base=root)
            cmd = ["jobs/embed_new.py", *new, "--checkpoint", f"{out}/models/pinsage.pt", *spark]
            step(f"cold-embed-r{r}", cmd, copy=(f"{out}/runs/pinsage", root))
            # The test pairs, with the validation pairs choosing the baselines' grid points in the
            # same run; either split alone when only one is asked for.
            split = "test" if "test" in args.cold_splits else "validation"
            cold = flags(embeddings=f"{root}/pin_embeddings", pairs=f"{data}/cold_{split}_pairs")
            if split == "test" and "validation" in args.cold_splits:
                cold += flags(validation_pairs=f"{data}/cold_validation_pairs")
            cold += flags(pins=f"{data}/content", out=f"{out}/evaluation/cold/r{r}", similarity_pairs="0")
            cold += [*seed, *sample]
            if args.baselines:
                # The co-occurrence baselines see the graph, the training-split held-out memberships
                # and the new books' r revealed ones: all a production system knows.
                cold += flags(edges=f"{data}/edges", extra_edges=f"{data}/cold_extra_edges_r{r}")
                if r == 0:
                    cold += ["--methods", ",".join(COLD_METHODS_R0)]
                else:
                    cold += ["--methods", ",".join(COLD_METHODS), *args.baseline_flags]
            step(f"cold-evaluate-r{r}", ["jobs/evaluate.py", *cold, *spark])
    report.results = collect(args, report.seconds)
    with open(f"{out}/report.json", "w") as f:
        json.dump(report.results, f, indent=2, sort_keys=True)
    with open(f"{out}/report.md", "w") as f:
        f.write(render(report.results))
    return report


# The related-pins lists of the pinsage variant, exact and through an inverted file of about
# sqrt(books) lists, scored on the test pairs (hit@10 beside the evaluation's).
RELATED_ANN = ("--lists", "100", "--probes", "10", "--sample", "10000")


def related_steps(out: str, embeddings: str, test_pairs: str) -> dict[str, list[str]]:
    """jobs/related.py's command line per method, each reporting hit@10 of its table on the test pairs."""
    common = flags(embeddings=f"{embeddings}/pin_embeddings", pairs=test_pairs, top_k="10")
    return {
        "exact": ["jobs/related.py", *common, "--out", f"{out}/related/exact"],
        "ann": ["jobs/related.py", *common, "--out", f"{out}/related/ann", "--method", "ann", *RELATED_ANN],
    }


def related_hits(out: str) -> dict[str, dict]:
    """{method: hits} from the related steps' reports (none when they did not run)."""
    hits = {}
    for method in ("exact", "ann"):
        path = f"{out}/reports/related-{method}.json"
        if os.path.exists(path):
            with open(path) as f:
                hits[method] = json.load(f)["hits"]
    return hits


def related_lines(results: dict) -> list[str]:
    """The report's lines comparing hit@10 of the related tables with the evaluation's."""
    if not results.get("related"):
        return []
    evaluation = results["variants"]["pinsage"]["metrics"]
    return [
        "",
        "## Related books (jobs/related.py on PinSage's embeddings)",
        "",
        "hit@10 of each book's 10 related books over the test pairs, beside the evaluation's exact "
        "hit@10 (which counts ties against the positive; the two agree wherever no score ties the 10th).",
        "",
        "| lists | hit@10 | test pairs |",
        "|---|---:|---:|",
        f"| evaluation, exact ranks | {evaluation['hit@10']:.4f} | {evaluation['pairs']:,} |",
        *(
            f"| related_pins, {m} | {h['hit@10']:.4f} | {h['pairs']:,} |"
            for m, h in results["related"].items()
        ),
    ]


def copy_run(source: str, dest: str) -> None:
    """Replace the local folder `dest` with a copy of the run folder `source`, its work tables left
    out: the Delta tables are copied file for file, so the copy is the same table versions."""
    if os.path.exists(dest):
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("_work"))


def collect(args: GoodbooksArgs, seconds: dict[str, float]) -> dict:
    def load(name: str) -> dict:
        with open(f"{args.out}/reports/{name}.json") as f:
            return json.load(f)

    prepare = load("prepare")
    results = {"data": prepare["rows"], "seconds": seconds, "variants": {}, "baselines": {}, "similarity": {}}
    for name in args.variants:
        evaluation, training = load(f"evaluate-{name}"), load(f"train-{name}")
        results["variants"][name] = {
            "title": VARIANTS[name].title,
            "metrics": evaluation["methods"]["embedding"],
            "similarity": evaluation["similarity"].get("embedding"),
            "epochs": training["epochs"],
            "config": training["config"],
            "loss": training.get("options", {}).get("loss", "margin"),
        }
        if name == "pinsage":
            results["baselines"] = {m: v for m, v in evaluation["methods"].items() if m != "embedding"}
            results["similarity"] = evaluation["similarity"]
            results["paired"] = evaluation.get("paired", {})
            results["params"] = evaluation["params"]
            if evaluation.get("validation"):
                split = by_split(evaluation, ("validation", "test"))
                results["warm_chosen"] = choose_baselines(split, evaluation.get("best", {}))
    results["related"] = related_hits(args.out)
    if args.cold_share > 0:
        reports = {f"r{r}": load(f"cold-evaluate-r{r}") for r in REVEALED}
        results["cold"] = {r: by_split(e, args.cold_splits) for r, e in reports.items()}
        results["cold_chosen"] = {
            r: choose_baselines(results["cold"][r], e.get("best", {})) for r, e in reports.items()
        }
    return results


def by_split(evaluation: dict, splits: Sequence[str]) -> dict:
    """An evaluation report's metrics by split: with validation pairs, "validation" (every grid
    point) and "test" (the points chosen there); else its one split's (of `splits`)."""
    if evaluation.get("validation"):
        return {"validation": evaluation["validation"], "test": evaluation["methods"]}
    return {"test" if "test" in splits else "validation": evaluation["methods"]}


def method_family(name: str) -> str:
    """The method a grid point belongs to: "ease[lambda=500]" -> "ease"."""
    return name.split("[", 1)[0]


def choose_baselines(split: dict, chosen: dict[str, str]) -> dict:
    """The baselines the test pairs are compared with, from by_split's metrics: each grid method's
    point chosen on the validation pairs (`chosen`, the evaluation's "best"), every other baseline
    as it is, and the best of them all by validation hit@10 (ties: the first)."""
    validation = split.get("validation", {})
    best: dict[str, str] = {}
    for name, m in validation.items():  # without the evaluation's choice: hit@10, then MRR
        family = method_family(name)
        if family != "embedding" and (
            family not in best
            or (m["hit@10"], m["mrr"]) > (validation[best[family]]["hit@10"], validation[best[family]]["mrr"])
        ):
            best[family] = name
    best |= {family: name for family, name in chosen.items() if name in validation}
    top = max(best.values(), key=lambda n: validation[n]["hit@10"], default=None)
    test = split.get("test", {})
    ratio = None
    if top is not None and top in test and test[top]["hit@10"] > 0:
        ratio = test["embedding"]["hit@10"] / test[top]["hit@10"]
    return {"per_method": best, "best": top, "test_hit10_ratio": ratio}


METRICS = (
    ("hit@10", "hit@10"),
    ("hit@100", "hit@100"),
    ("hit@500", "hit@500"),
    ("mrr", "MRR"),
    ("scaled_mrr", "scaled MRR"),
)


def _row(label: str, m: dict) -> str:
    return f"| {label} | " + " | ".join(f"{m[key]:.4f}" for key, _ in METRICS) + f" | {m['pairs']:,} |"


def _shown(method: str, chosen: dict | None) -> bool:
    """Whether the report shows a baseline: not a grid point that validation did not choose."""
    if not chosen or method_family(method) not in chosen["per_method"]:
        return True
    return method in chosen["per_method"].values()


def render(results: dict) -> str:
    head = (
        "| method | "
        + " | ".join(h for _, h in METRICS)
        + " | test pairs |\n|---"
        + "|---:" * (len(METRICS) + 1)
        + "|"
    )
    data = results["data"]
    lines = [
        "# goodbooks-10k: PinSage against baselines",
        "",
        f"Graph: {data['pins']:,} books (pins), {data['edges']:,} to-read memberships left in the graph; "
        f"{data['heldout']:,} memberships held out as pairs: {data['train_pairs']:,} training, "
        f"{data['validation_pairs']:,} validation, {data['test_pairs']:,} test. Each test pair ranks the "
        "held-out book among all books by cosine similarity to the query book.",
        "",
        "## PinSage and the baselines",
        "",
        head,
        _row(
            "PinSage (" + results["variants"]["pinsage"]["title"] + ")",
            results["variants"]["pinsage"]["metrics"],
        ),
    ]
    names = {
        "content": "content only (cosine of the text vectors)",
        "graph": "graph only (random-walk visit counts)",
        "popularity": "popularity only (books ranked by their number of lists)",
    }
    chosen = results.get("warm_chosen")
    picked = set(chosen["per_method"].values()) if chosen else set()
    lines += [
        _row(names.get(m, m) + (" *" if m in picked else ""), v)
        for m, v in results["baselines"].items()
        if _shown(m, chosen)
    ]
    if chosen:
        lines += [
            "",
            "\\* the grid point of each co-occurrence baseline chosen on the validation pairs (hit@10; "
            "every point's ranks are in evaluation/pinsage/validation_pair_ranks; the test pairs are "
            "ranked by the chosen points only). Best on "
            f"validation: {chosen['best']}; PinSage's test hit@10 is "
            + ("n/a" if chosen["test_hit10_ratio"] is None else f"{chosen['test_hit10_ratio']:.2f}x")
            + " its.",
        ]
    if results.get("paired"):
        lines += [
            "",
            "Paired on the same test pairs: the pairs only one method ranks within the top k, and the "
            "exact two-sided sign test (McNemar) of those counts.",
            "",
            "| against | k | only PinSage | only the baseline | p-value |",
            "|---|---:|---:|---:|---:|",
        ]
        for method, by_k in results["paired"].items():
            if not _shown(method, chosen):
                continue
            lines += [
                f"| {method} | {k.split('@')[1]} | {c['embedding_only']:,} | {c['baseline_only']:,} | "
                f"{format_p(c['p_value'])} |"
                for k, c in by_k.items()
            ]
    if len(results["variants"]) > 1:
        lines += ["", "## Ablations", "", head]
        lines += [_row(f"{name}: {v['title']}", v["metrics"]) for name, v in results["variants"].items()]
    lines += related_lines(results)
    lines += [
        "",
        "## Embedding-space health (random pairs of books)",
        "",
        "| vectors | pairs | mean cosine | std | excess kurtosis |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, s in results["similarity"].items():
        cells = ["n/a" if s.get(k) is None else f"{s[k]:.3f}" for k in ("mean", "std", "kurtosis")]
        lines.append(f"| {method} | {s['pairs']:,} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![random-pair cosine similarity](evaluation/pinsage/similarity_histogram.png)",
        "![PCA map by genre shelf](evaluation/pinsage/pca_map.png)",
        "",
        "## Training",
        "",
    ]
    for name, v in results["variants"].items():
        c = v["config"]
        lines += [
            f"**{name}** ({c['pooling']} pooling, {v['loss']} loss, hidden {c['hidden_dim']}, "
            f"embedding {c['embed_dim']}):",
            "",
            "| epoch | loss | validation hit@10 | hard negatives / query | seconds |",
            "|---:|---:|---:|---:|---:|",
        ]
        for e in v["epochs"]:
            hits = "-" if e["hit_rate"] is None else f"{e['hit_rate']:.3f}"
            lines.append(
                f"| {e['epoch']} | {e['loss']:.4f} | {hits} | {e['hard_negatives']} | {e['seconds']:.1f} |"
            )
        lines.append("")
    if results.get("cold"):
        lines += render_cold(results["cold"], results["cold_chosen"])
    lines += ["## Time", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["seconds"].items()]
    return "\n".join(lines) + "\n"


COLD_METRICS = (("hit@10", "hit@10"), ("hit@100", "hit@100"), ("hit@500", "hit@500"), ("mrr", "MRR"))


def render_cold(cold: dict, chosen: dict) -> list[str]:
    """The new-book tables: per split, every method at each revealed count r."""
    lines = [
        "## New books (cold start)",
        "",
        "Books held out of the graph and of training, embedded by jobs/embed_new.py with r of their "
        "memberships revealed; each pair ranks a new book among all books for a book of a list it "
        "was saved to. Baseline grid points marked * are the ones chosen on the validation pairs "
        "(the test pairs are ranked by those only). At r = 0 the co-occurrence baselines are not run: "
        "a book without memberships scores 0 under each of them.",
    ]
    for split in (s for s in reversed(COLD_SPLITS) if all(s in by_split for by_split in cold.values())):
        lines += [
            "",
            f"### {split.capitalize()} pairs",
            "",
            "| method | r | " + " | ".join(h for _, h in COLD_METRICS) + " | pairs |",
            "|---|---:" + "|---:" * (len(COLD_METRICS) + 1) + "|",
        ]
        for r, by_split in cold.items():
            picked = set(chosen[r]["per_method"].values())
            for name, m in by_split[split].items():
                label = "PinSage" if name == "embedding" else name + (" *" if name in picked else "")
                cells = " | ".join(f"{m[key]:.4f}" for key, _ in COLD_METRICS)
                lines.append(f"| {label} | {r[1:]} | {cells} | {m['pairs']:,} |")
    lines += [""]
    for r, c in chosen.items():
        ratio = "n/a" if c["test_hit10_ratio"] is None else f"{c['test_hit10_ratio']:.2f}x"
        lines.append(
            f"- r = {r[1:]}: best baseline on validation {c['best']}; PinSage's test hit@10 is {ratio} its."
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return job_main(lambda: run(args), args.common.report_json)


if __name__ == "__main__":
    sys.exit(main())
