"""Train a PinSage model on related pin pairs and write a format_version 1 checkpoint.

    python -m pinsage_model.train --pins P --edges E --board-neighbors BN --pin-neighbors PN
        --pairs PAIRS --out CKPT [--boards B] [--validation-pairs VP] [--epochs 10 ...]

The inputs are the embed job's tables plus (query_pin, pos_pin) pairs, read and checked with Spark
in local mode; training itself is single-machine PyTorch on the same model code the Spark jobs call
(`PinSage`, `PinSageConv`, `pooling`, `EmbeddingHead`), so what is trained is what gets embedded.
The loss, negatives, curriculum and schedule follow the paper's section 3.3 (see README, Training).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from pyspark.sql import SparkSession
from torch.utils.data import DataLoader

from jobs.lib.cli import job_main
from jobs.lib.io import InputError
from jobs.lib.session import get_spark
from pinsage_model.checkpoint import save_checkpoint
from pinsage_model.config import POOLINGS, ModelConfig
from pinsage_model.graph import TrainGraph
from pinsage_model.inputs import TrainInputs, load_inputs
from pinsage_model.model import PinSage
from pinsage_model.sampling import (
    PPR_RESTART,
    Batch,
    CoMembership,
    EpochBatches,
    HardNegatives,
    RankWindow,
    default_window,
    hard_negative_count,
    hard_negative_pools,
    parse_window,
    worker_init,
)
from pinsage_model.subgraph import embed

log = logging.getLogger("pinsage.train")

HIT_RATE_K = 10
LOSSES = ("margin", "softmax")


@dataclass(frozen=True)
class TrainOptions:
    """Model shape and optimisation settings (the CLI's flags)."""

    num_layers: int = 2
    hidden_dim: int = 64
    embed_dim: int = 32
    pooling: str = "importance"
    epochs: int = 10
    batch_size: int = 512
    co_membership_pairs: int = 0  # per epoch, drawn from the memberships and added to the pairs
    lr: float = 1e-3
    loss: str = "margin"  # "margin" (the paper's) or "softmax"
    margin: float = 0.1
    temperature: float = 0.05  # softmax loss only
    negatives: int = 500
    hard_negatives: int = 6
    hard_window: str | None = None  # LO:HI; None: default_window(pins)
    ppr_restart: float = PPR_RESTART
    warmup_steps: int | None = None  # None: one epoch
    lr_decay: float = 0.9
    seed: int = 0
    workers: int = 1


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
    master: str | None = None
    report_json: str | None = None
    threads: int | None = None
    options: TrainOptions = field(default_factory=TrainOptions)


def _at_least(low: float, kind=int):
    def parse(text: str):
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


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
    p.add_argument("--num-layers", type=_at_least(2), default=d.num_layers, help="even, at least 2")
    p.add_argument("--hidden-dim", type=_at_least(1), default=d.hidden_dim)
    p.add_argument("--embed-dim", type=_at_least(1), default=d.embed_dim)
    p.add_argument("--pooling", choices=POOLINGS, default=d.pooling)
    p.add_argument("--epochs", type=_at_least(1), default=d.epochs)
    p.add_argument("--batch-size", type=_at_least(1), default=d.batch_size, help="queries per step")
    p.add_argument(
        "--co-membership-pairs", type=_at_least(0), default=d.co_membership_pairs, metavar="N",
        help="each epoch, also train on N fresh pairs of pins that share a board (a pin -> board -> "
        "pin step over the memberships, by weight); 0: PAIRS only",
    )  # fmt: skip
    p.add_argument("--lr", type=_positive, default=d.lr, help="peak learning rate (Adam)")
    p.add_argument(
        "--loss", choices=LOSSES, default=d.loss,
        help="margin: the paper's max-margin hinge; softmax: cross-entropy of the positive among the "
        "same negatives, which keeps ordering the closest ones (see README, Training)",
    )  # fmt: skip
    p.add_argument("--margin", type=_at_least(0.0, float), default=d.margin, help="the hinge's margin")
    p.add_argument(
        "--temperature", type=_positive, default=d.temperature, help="the softmax loss's temperature"
    )
    p.add_argument("--negatives", type=_at_least(1), default=d.negatives, help="shared per minibatch")
    p.add_argument(
        "--hard-negatives", type=_at_least(0), default=d.hard_negatives,
        help="most hard negatives per query; epoch n uses n-1 of them",
    )  # fmt: skip
    p.add_argument(
        "--hard-window", metavar="LO:HI",
        help="PPR ranks to draw hard negatives from, as ranks (2000:5000) or fractions of the pins "
        "(0.02:0.05); default ranks 2000:5000, or 2%%-5%% of the pins below 100,000 pins",
    )  # fmt: skip
    p.add_argument(
        "--ppr-restart",
        type=_fraction,
        default=d.ppr_restart,
        help="PPR restart probability per pin -> board -> pin step",
    )
    p.add_argument("--warmup-steps", type=_at_least(0), help="linear warmup steps (default: one epoch)")
    p.add_argument("--lr-decay", type=_fraction, default=d.lr_decay, help="lr factor per epoch after warmup")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--workers", type=_at_least(0), default=d.workers, help="DataLoader batch producers")
    p.add_argument(
        "--threads", type=_at_least(1),
        help="torch threads for the training step (default: torch's, one per core); the batches are "
        "small, so on a machine shared with other work 1 is often fastest",
    )  # fmt: skip
    p.add_argument("--master", help="Spark master for reading the inputs (default local[*])")
    p.add_argument("--report-json", help="also write the training report as JSON to this file")
    a = p.parse_args(argv)
    if a.num_layers % 2:
        p.error(f"--num-layers must be even, got {a.num_layers}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    options = TrainOptions(
        num_layers=a.num_layers, hidden_dim=a.hidden_dim, embed_dim=a.embed_dim, pooling=a.pooling,
        epochs=a.epochs, batch_size=a.batch_size, co_membership_pairs=a.co_membership_pairs, lr=a.lr,
        loss=a.loss, margin=a.margin, temperature=a.temperature, negatives=a.negatives,
        hard_negatives=a.hard_negatives, hard_window=a.hard_window, ppr_restart=a.ppr_restart,
        warmup_steps=a.warmup_steps, lr_decay=a.lr_decay, seed=a.seed, workers=a.workers,
    )  # fmt: skip
    return TrainArgs(
        pins=a.pins, edges=a.edges, board_neighbors=a.board_neighbors, pin_neighbors=a.pin_neighbors,
        pairs=a.pairs, out=a.out, boards=a.boards, validation_pairs=a.validation_pairs, device=a.device,
        master=a.master, report_json=a.report_json, threads=a.threads, options=options,
    )  # fmt: skip


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---- objective, schedule, evaluation -----------------------------------------------------------


def max_margin_loss(z: torch.Tensor, batch: Batch, margin: float) -> torch.Tensor:
    """Mean over every (query, negative) pair of max(0, z_q . z_n - z_q . z_pos + margin).

    z: [T, d] embeddings of the batch's computation-graph targets. Each query meets the shared
    negatives [n] and its own hard negatives [h]; pairs masked out (a negative that is the query or
    its positive) do not count."""
    zq = z[batch.query]  # [b, d]
    positive = (zq * z[batch.pos]).sum(1, keepdim=True)  # [b, 1]
    shared = zq @ z[batch.negatives].T  # [b, n]
    hard = torch.einsum("bd,bhd->bh", zq, z[batch.hard])  # [b, h]
    hinge = torch.relu(torch.cat([shared, hard], 1) - positive + margin)
    mask = torch.cat([batch.negative_mask, batch.hard_mask], 1).to(hinge.dtype)
    return (hinge * mask).sum() / mask.sum().clamp(min=1.0)


def softmax_loss(z: torch.Tensor, batch: Batch, temperature: float) -> torch.Tensor:
    """Mean over queries of the cross-entropy of picking the positive out of itself, the shared
    negatives and the query's hard negatives, with logits z_q . z / temperature.

    Unlike the hinge, whose gradient stops once a negative is `margin` below the positive, every
    negative keeps a share of the gradient in proportion to exp(score / temperature): the closest
    ones dominate, which is what orders the top of the ranking."""
    zq = z[batch.query]
    positive = (zq * z[batch.pos]).sum(1, keepdim=True)
    shared = zq @ z[batch.negatives].T
    hard = torch.einsum("bd,bhd->bh", zq, z[batch.hard])
    logits = torch.cat([positive, shared, hard], 1) / temperature
    keep = torch.cat([torch.ones_like(positive, dtype=torch.bool), batch.negative_mask, batch.hard_mask], 1)
    logits = logits.masked_fill(~keep, -math.inf)
    return (torch.logsumexp(logits, 1) - logits[:, 0]).mean()


def batch_loss(z: torch.Tensor, batch: Batch, options: TrainOptions) -> torch.Tensor:
    if options.loss == "softmax":
        return softmax_loss(z, batch, options.temperature)
    return max_margin_loss(z, batch, options.margin)


def lr_factor(warmup_steps: int, decay: float, steps_per_epoch: int):
    """Step t's multiple of the peak rate: (t+1)/warmup during warmup, then decay per epoch,
    applied smoothly per step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay ** ((step - warmup_steps) / steps_per_epoch)

    return factor


@torch.no_grad()
def embed_pins(model: PinSage, graph: TrainGraph, device: torch.device | str = "cpu") -> torch.Tensor:
    """Every pin's embedding [pins, embed_dim], layer by layer over the whole graph (`PinSage.forward`,
    the same computation as the Spark chain): what validation ranks and what the checkpoint embeds."""
    was_training = model.training
    model.eval()
    z = model(*graph.whole_graph(device))[0]
    model.train(was_training)
    return z


@torch.no_grad()
def hit_rate(
    z: torch.Tensor, query: np.ndarray, pos: np.ndarray, k: int = HIT_RATE_K, chunk: int = 1024
) -> float:
    """Share of pairs whose positive ranks among the top k of all pins by z_q . z_p, the query
    itself left out. Ties count against the positive, so collapsed embeddings score 0, not 1."""
    hits = 0
    for start in range(0, len(query), chunk):
        q = torch.from_numpy(query[start : start + chunk]).to(z.device)
        p = torch.from_numpy(pos[start : start + chunk]).to(z.device)
        scores = z[q] @ z.T  # [c, pins]
        rows = torch.arange(len(q), device=z.device)
        target = scores[rows, p].unsqueeze(1)
        scores[rows, q] = -math.inf
        # The positive itself is among the scores >= its own: subtract it.
        rank = (scores >= target).sum(1) - 1
        hits += int((rank < k).sum())
    return hits / max(len(query), 1)


# ---- the loop ----------------------------------------------------------------------------------


@dataclass
class EpochLog:
    epoch: int
    loss: float
    hit_rate: float | None
    hard_negatives: int
    lr: float
    steps: int
    seconds: float


def window_for(options: TrainOptions, num_pins: int) -> RankWindow:
    return parse_window(options.hard_window, num_pins) if options.hard_window else default_window(num_pins)


@contextlib.contextmanager
def deterministic_kernels(device: torch.device):
    """Run with torch's deterministic kernels, then restore the caller's setting.

    With more than one thread, the CPU backward of indexing (an accumulating index_put_) adds the
    gradient rows of repeated indices in whatever order the threads reach them, so two runs with the
    same seed drift apart in the last bits and then visibly. The deterministic kernels fix the order.
    On CUDA, kernels without a deterministic version only warn."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's reproducible workspace
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def train(
    graph: TrainGraph,
    pairs: tuple[np.ndarray, np.ndarray],
    options: TrainOptions,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[PinSage, list[EpochLog]]:
    """Train from a seeded initialisation; returns the model and one log entry per epoch. The same
    seed, inputs, device and thread count give the same model bit for bit."""
    device = torch.device(device)
    with deterministic_kernels(device):
        return _train(graph, pairs, options, validation, device)


def _train(graph, pairs, options: TrainOptions, validation, device: torch.device):
    config = ModelConfig(
        num_layers=options.num_layers,
        pin_feature_dim=graph.pin_features.shape[1],
        board_feature_dim=graph.board_features.shape[1],
        hidden_dim=options.hidden_dim,
        embed_dim=options.embed_dim,
        pooling=options.pooling,
    )
    torch.manual_seed(options.seed)
    model = PinSage(config).to(device)

    co_membership = CoMembership.of(graph) if options.co_membership_pairs else None
    hard_pools: HardNegatives | None = None
    if hard_negative_count(options.epochs, options.hard_negatives) > 0:
        window = window_for(options, graph.num_pins)
        clock = time.perf_counter()
        queries = pairs[0] if co_membership is None else np.concatenate([pairs[0], co_membership.queries])
        hard_pools = hard_negative_pools(graph, queries, window, options.ppr_restart, device)
        log.info(
            "hard negatives: PPR ranks %d..%d of %d other pins, for %d distinct queries (%.1fs)",
            window.lo, window.hi, graph.num_pins - 1, len(hard_pools.queries), time.perf_counter() - clock,
        )  # fmt: skip

    steps_per_epoch = math.ceil((len(pairs[0]) + options.co_membership_pairs) / options.batch_size)
    warmup = steps_per_epoch if options.warmup_steps is None else options.warmup_steps
    optimiser = torch.optim.Adam(model.parameters(), lr=options.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lr_factor(warmup, options.lr_decay, steps_per_epoch)
    )
    history = []
    for epoch in range(1, options.epochs + 1):
        clock = time.perf_counter()
        hard = hard_negative_count(epoch, options.hard_negatives)
        epoch_pairs = pairs
        if co_membership is not None:
            # Seeded by (seed, epoch) apart from the batches' (seed, epoch) and (seed, epoch, i).
            rng = np.random.default_rng([options.seed, epoch, 0, 1])
            drawn = co_membership.draw(options.co_membership_pairs, rng)
            epoch_pairs = (np.concatenate([pairs[0], drawn[0]]), np.concatenate([pairs[1], drawn[1]]))
        batches = EpochBatches(
            graph, config.num_layers, epoch_pairs, options.batch_size, options.negatives, hard, hard_pools,
            options.seed, epoch,
        )  # fmt: skip
        steps = len(batches)
        loader = DataLoader(
            batches,
            batch_size=None,
            num_workers=options.workers,
            worker_init_fn=worker_init,
            pin_memory=device.type == "cuda",
            prefetch_factor=2 if options.workers else None,
            generator=torch.Generator().manual_seed(options.seed),
        )
        model.train()
        total, lr = 0.0, optimiser.param_groups[0]["lr"]
        report_every = max(1, steps // 10)
        for step, batch in enumerate(loader, start=1):
            batch = batch.to(device)
            loss = batch_loss(embed(model, batch.graph), batch, options)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            lr = optimiser.param_groups[0]["lr"]
            schedule.step()
            total += float(loss.detach())
            if step % report_every == 0 or step == steps:
                log.info(
                    "epoch %d/%d step %d/%d (%3.0f%%) loss %.4f",
                    epoch, options.epochs, step, steps, 100 * step / steps, total / step,
                )  # fmt: skip
        hits = None
        if validation is not None:
            hits = hit_rate(embed_pins(model, graph, device), *validation)
        entry = EpochLog(
            epoch, total / steps, hits, hard, lr, steps,
            round(time.perf_counter() - clock, 3),
        )  # fmt: skip
        history.append(entry)
        log.info(
            "epoch %d/%d: loss %.4f, hit-rate@%d %s, %d hard negatives/query, lr %.2e, %.1fs",
            epoch, options.epochs, entry.loss, HIT_RATE_K, "-" if hits is None else f"{hits:.3f}", hard, lr,
            entry.seconds,
        )  # fmt: skip
    return model.eval(), history


# ---- CLI ---------------------------------------------------------------------------------------


@dataclass
class TrainReport:
    checkpoint: str
    sha256: str
    device: str
    config: dict
    options: dict
    inputs: dict
    epochs: list[dict]
    seconds: dict

    def render(self) -> str:
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
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def read_inputs(args: TrainArgs) -> TrainInputs:
    """The CLI's inputs, read and checked with Spark (local mode unless --master says otherwise)."""
    started_here = SparkSession.getActiveSession() is None
    spark = get_spark("pinsage-train", args.master)
    try:
        inputs = load_inputs(
            spark, args.pins, args.edges, args.board_neighbors, args.pin_neighbors, args.pairs,
            args.boards, args.validation_pairs,
        )  # fmt: skip
    finally:
        if started_here:  # the arrays are in numpy now; a session the caller owns stays up
            spark.stop()
    options = args.options
    if hard_negative_count(options.epochs, options.hard_negatives):
        try:
            window_for(options, inputs.graph.num_pins)
        except ValueError as exc:
            raise InputError("pins", None, f"{inputs.graph.num_pins} pins: {exc}") from None
    return inputs


def fit(args: TrainArgs, inputs: TrainInputs) -> TrainReport:
    """Train on read inputs and write the checkpoint to args.out."""
    clock = time.perf_counter()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    graph = inputs.graph
    model, history = train(graph, inputs.pairs, args.options, inputs.validation, device)
    seconds = {"training": time.perf_counter() - clock}
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
        asdict(args.options),
        counts,
        [asdict(e) for e in history],
        seconds,
    )


def run(args: TrainArgs) -> TrainReport:
    clock = time.perf_counter()
    inputs = read_inputs(args)
    seconds = time.perf_counter() - clock
    report = fit(args, inputs)
    report.seconds = {"inputs": seconds, **report.seconds}
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return job_main(lambda: run(args), args.report_json)


if __name__ == "__main__":
    sys.exit(main())
