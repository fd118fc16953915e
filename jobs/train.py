"""Train a PinSage model on related pin pairs and write a format_version 1 checkpoint.

    python jobs/train.py --pins P --edges E --board-neighbors BN --pin-neighbors PN
        --pairs PAIRS --out CKPT [--boards B] [--validation-pairs VP] [--epochs 10 ...]

The inputs are the embed job's tables plus (query_pin, pos_pin) pairs, read and checked with Spark
in local mode (`jobs.lib.train_inputs`); training itself is single-machine PyTorch
(`pinsage_model.training`) on the same model code the Spark jobs call, so what is trained is what
gets embedded. The loss, negatives, curriculum and schedule follow the paper's section 3.3.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from pyspark.sql import SparkSession

from jobs.lib.cli import (
    CommonArgs,
    add_common_args,
    at_least,
    below_one,
    fraction,
    job_args,
    job_main,
    positive,
)
from jobs.lib.io import InputError, is_delta, last_commit
from jobs.lib.report import Report, Stopwatch
from jobs.lib.session import get_spark, stop_spark
from jobs.lib.train_inputs import TrainInputs, load_inputs
from pinsage_model.checkpoint import save_checkpoint
from pinsage_model.config import POOLINGS
from pinsage_model.devices import DEVICES, DeviceError, resolve_device
from pinsage_model.training.arrival import WalkParams
from pinsage_model.training.loop import TrainOptions, train, window_for
from pinsage_model.training.loss import LOSSES
from pinsage_model.training.sampling import hard_negative_count


@dataclass(frozen=True)
class TrainArgs:
    pins: str
    edges: str
    board_neighbors: str
    pin_neighbors: str
    pairs: str
    out: str
    boards: str | None = None
    validation_pairs: str | None = None
    device: str = "auto"
    threads: int | None = None
    options: TrainOptions = field(default_factory=TrainOptions)
    common: CommonArgs = field(default_factory=CommonArgs)


def membership_counts(text: str) -> tuple[int, ...]:
    """An argparse type: distinct membership counts, such as 0,1,3."""
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts such as 0,1,3, got {text!r}") from None
    if min(counts) < 0 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"expected distinct counts of 0 or more, got {text!r}")
    return counts


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    d = TrainOptions()
    p = argparse.ArgumentParser(
        description="Train PinSage on related pin pairs; write a checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--pins", required=True, help="pins table: pin_id, features")
    p.add_argument("--edges", required=True, help="memberships: pin_id, board_id[, weight]")
    p.add_argument("--boards", help="optional boards table: board_id[, features]")
    p.add_argument("--board-neighbors", required=True, help="board_id, pin_id, weight")
    p.add_argument("--pin-neighbors", required=True, help="pin_id, board_id, weight")
    p.add_argument("--pairs", required=True, help="training pairs: query_pin, pos_pin")
    p.add_argument("--validation-pairs", help="pairs for the per-epoch hit-rate@10")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--num-layers", type=at_least(2), default=d.num_layers, help="even, at least 2")
    p.add_argument("--hidden-dim", type=at_least(1), default=d.hidden_dim)
    p.add_argument("--embed-dim", type=at_least(1), default=d.embed_dim)
    p.add_argument("--pooling", choices=POOLINGS, default=d.pooling)
    p.add_argument("--epochs", type=at_least(1), default=d.epochs)
    p.add_argument("--batch-size", type=at_least(1), default=d.batch_size, help="queries per step")
    p.add_argument(
        "--co-membership-pairs",
        type=at_least(0),
        default=d.co_membership_pairs,
        metavar="N",
        help="each epoch, also train on N fresh pairs of pins that share a board (a pin -> board -> "
        "pin step over the memberships, by weight); 0: PAIRS only",
    )
    p.add_argument(
        "--co-membership-board-power",
        type=at_least(0.0, float),
        default=d.co_membership_board_power,
        metavar="A",
        help="draw a co-membership pair's board in proportion to its total membership weight ** A "
        "(1: the plain pin -> board -> pin step, large boards most; 0: every board equally)",
    )
    p.add_argument(
        "--hide-pair-board",
        action=argparse.BooleanOptionalAction,
        default=d.hide_pair_board,
        help="show a co-membership pair's positive without its membership of the board the pair was "
        "drawn from (its row of that board and the board's row of it), as a held-out positive is "
        "shown at evaluation",
    )
    p.add_argument("--lr", type=positive, default=d.lr, help="peak learning rate (Adam)")
    p.add_argument(
        "--loss",
        choices=LOSSES,
        default=d.loss,
        help="margin: the paper's max-margin hinge; softmax: cross-entropy of the positive among the "
        "same negatives, which keeps ordering the closest ones (see docs, training)",
    )
    p.add_argument("--margin", type=at_least(0.0, float), default=d.margin, help="the hinge's margin")
    p.add_argument(
        "--temperature", type=positive, default=d.temperature, help="the softmax loss's temperature"
    )
    p.add_argument("--negatives", type=at_least(1), default=d.negatives, help="shared per minibatch")
    p.add_argument(
        "--in-batch-negatives",
        type=at_least(0),
        default=d.in_batch_negatives,
        metavar="N",
        help="softmax loss: also rank each positive against the positives of the batch's first N "
        "examples (popular pins, the hardest competition at the top); 0: none",
    )
    p.add_argument(
        "--logq-correction",
        action=argparse.BooleanOptionalAction,
        default=d.logq_correction,
        help="with in-batch negatives: subtract each candidate's log expected count from its logit "
        "(sampling-bias correction), so popular pins are not pushed down for being popular",
    )
    p.add_argument(
        "--hard-negatives",
        type=at_least(0),
        default=d.hard_negatives,
        help="most hard negatives per query; epoch n uses n-1 of them",
    )
    p.add_argument(
        "--hard-window",
        metavar="LO:HI",
        help="PPR ranks to draw hard negatives from, as ranks (2000:5000) or fractions of the pins "
        "(0.02:0.05); default ranks 2000:5000, or 2%%-5%% of the pins below 100,000 pins",
    )
    p.add_argument(
        "--ppr-restart",
        type=fraction,
        default=d.ppr_restart,
        help="PPR restart probability per pin -> board -> pin step",
    )
    p.add_argument("--warmup-steps", type=at_least(0), help="linear warmup steps (default: one epoch)")
    p.add_argument("--lr-decay", type=fraction, default=d.lr_decay, help="lr factor per epoch after warmup")
    p.add_argument(
        "--neighbor-dropout",
        type=below_one,
        default=d.neighbor_dropout,
        metavar="P",
        help="train for new pins: each pin of a batch is shown, with probability P, as a pin arriving "
        "without memberships (no neighbors at any pin layer, its --structural-features zeroed), as "
        "jobs/embed_new.py embeds one",
    )
    p.add_argument(
        "--structural-features",
        type=at_least(0),
        default=d.structural_features,
        metavar="N",
        help="the last N feature columns of a pin are computed from its memberships (a log degree): "
        "0 for a pin shown without memberships",
    )
    p.add_argument(
        "--arrival-memberships",
        type=membership_counts,
        default=",".join(map(str, d.arrival_memberships)),
        metavar="R,...",
        help="with --neighbor-dropout: a pin shown as arriving keeps R of its memberships, R drawn "
        "uniformly from these counts (0: none), and its neighbors are the top boards of walks from "
        "what it keeps, walked as the --pin-neighbors table records (jobs/embed_new.py walks a new "
        "pin's the same way)",
    )
    p.add_argument(
        "--arrival-structural",
        choices=("zero", "same-count"),
        default=d.arrival_structural,
        help="the --structural-features of a pin shown as arriving with R memberships: zero, or "
        "same-count: the median of those of the pins with exactly R memberships in --edges (the "
        "columns are computed from memberships, so such pins carry what a pin arriving with R would)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--workers", type=at_least(0), default=d.workers, help="DataLoader batch producers")
    p.add_argument(
        "--threads",
        type=at_least(1),
        help="torch threads for the training step (default: torch's, one per core); the batches are "
        "small, so on a machine shared with other work 1 is often fastest",
    )
    add_common_args(p, work_tables=False)
    a = p.parse_args(argv)
    if a.in_batch_negatives and a.loss != "softmax":
        p.error("--in-batch-negatives needs --loss softmax")
    if a.num_layers % 2:
        p.error(f"--num-layers must be even, got {a.num_layers}")
    try:
        resolve_device(a.device)
    except DeviceError as exc:
        p.error(f"--device {a.device}: {exc}")
    walk = {"arrival_walk"}  # from the pin_neighbors table's record, when the inputs are read
    options = TrainOptions(**{f.name: getattr(a, f.name) for f in fields(TrainOptions) if f.name not in walk})
    return job_args(TrainArgs, p, a, options=options)


@dataclass
class TrainReport(Report):
    checkpoint: str
    sha256: str
    device: str
    config: dict
    options: dict
    inputs: dict
    epochs: list[dict]

    def lines(self) -> list[str]:
        c = self.config
        lines = [
            f"trained PinSage: {c['num_layers']} layers, {c['pooling']} pooling, hidden {c['hidden_dim']}, "
            f"embed {c['embed_dim']}, {self.options['loss']} loss, device {self.device}",
            "inputs: " + ", ".join(f"{k} {v:,}" for k, v in self.inputs.items()),
            f"{'epoch':<7}{'loss':>9}{'hit@10':>9}{'hard/q':>8}{'lr':>11}{'steps':>7}{'seconds':>9}",
        ]
        for e in self.epochs:
            hits = "-" if e["hit_rate"] is None else f"{e['hit_rate']:.3f}"
            lines.append(
                f"{e['epoch']:<7}{e['loss']:>9.4f}{hits:>9}{e['hard_negatives']:>8}{e['lr']:>11.2e}"
                f"{e['steps']:>7}{e['seconds']:>9.1f}"
            )
        lines.append(f"wrote {self.checkpoint} (sha256 {self.sha256})")
        return lines


def recorded_walk(spark: SparkSession, pin_neighbors: str) -> WalkParams:
    """The walk that built the pin_neighbors table (its last commit's record, as jobs/embed_new.py
    reads it), for walking arriving pins' neighborhoods the same way; the neighborhood job's
    defaults when the table does not record one."""
    recorded = (
        last_commit(spark, pin_neighbors)["metadata"].get("walk") if is_delta(spark, pin_neighbors) else None
    )
    names = {f.name for f in fields(WalkParams)}
    return WalkParams(**{k: v for k, v in (recorded or {}).items() if k in names})


def read_inputs(args: TrainArgs) -> TrainInputs:
    """The CLI's inputs, read and checked with Spark (local mode unless --master says otherwise)."""
    started_here = SparkSession.getActiveSession() is None
    spark = get_spark("pinsage-train", args.common.master, args.common.conf)
    try:
        inputs = load_inputs(
            spark,
            args.pins,
            args.edges,
            args.board_neighbors,
            args.pin_neighbors,
            args.pairs,
            args.boards,
            args.validation_pairs,
        )
        options = args.options
        if options.neighbor_dropout and any(options.arrival_memberships):
            inputs = replace(inputs, walk=recorded_walk(spark, args.pin_neighbors))
    finally:
        if started_here:  # the arrays are in numpy now; a session the caller owns stays up
            stop_spark(spark)  # training runs for hours: free the JVM's memory
    options = args.options
    width = inputs.graph.pin_features.shape[1]
    if options.structural_features > width:
        raise InputError(
            "pins",
            "features",
            f"has {width} columns, fewer than --structural-features {options.structural_features}",
        )
    if hard_negative_count(options.epochs, options.hard_negatives):
        try:
            window_for(options, inputs.graph.num_pins)
        except ValueError as exc:
            raise InputError("pins", None, f"{inputs.graph.num_pins} pins: {exc}") from None
    return inputs


def fit(args: TrainArgs, inputs: TrainInputs) -> TrainReport:
    """Train on read inputs and write the checkpoint to args.out."""
    clock = Stopwatch()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    graph = inputs.graph
    options = args.options if inputs.walk is None else replace(args.options, arrival_walk=inputs.walk)
    model, history = train(graph, inputs.pairs, options, inputs.validation, device)
    seconds = {"training": clock.seconds()}
    sha = save_checkpoint(model, args.out)
    counts = {"pins": graph.num_pins, "boards": graph.num_boards, "pairs": len(inputs.pairs[0])}
    if args.options.co_membership_pairs:
        counts["co-membership draws per epoch"] = args.options.co_membership_pairs
    if inputs.validation is not None:
        counts["validation pairs"] = len(inputs.validation[0])
    return TrainReport(
        args.out,
        sha,
        str(device),
        model.config.to_dict(),
        asdict(options),
        counts,
        [asdict(e) for e in history],
        seconds=seconds,
    )


def run(args: TrainArgs) -> TrainReport:
    clock = Stopwatch()
    inputs = read_inputs(args)
    seconds = clock.seconds()
    report = fit(args, inputs)
    report.seconds = {"inputs": seconds, **report.seconds}
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return job_main(lambda: run(args), args.common.report_json)


if __name__ == "__main__":
    sys.exit(main())
