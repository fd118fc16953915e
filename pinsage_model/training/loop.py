"""The training loop: a seeded model trained on pin pairs with the paper's section 3.3 recipe
(shared and hard negatives, curriculum, warmup then decay), validated by hit rate on whole-graph
embeddings. Single-machine PyTorch on the same model code the Spark jobs call (`PinSage`,
`PinSageConv`, `pooling`, `EmbeddingHead`), so what is trained is what gets embedded."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from pinsage_model.config import ModelConfig
from pinsage_model.model import PinSage
from pinsage_model.training.arrival import WalkParams
from pinsage_model.training.graph import TrainGraph
from pinsage_model.training.loss import batch_loss, candidate_log_count
from pinsage_model.training.progress import Progress
from pinsage_model.training.sampling import (
    PPR_RESTART,
    ArrivalTables,
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
from pinsage_model.training.subgraph import embed_targets

log = logging.getLogger("pinsage.train")

HIT_RATE_K = 10


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
    co_membership_board_power: float = 1.0  # boards drawn in proportion to their weight ** this
    # Show a co-membership pair's positive without its membership of the board it was drawn from,
    # as a held-out positive is shown at evaluation (`subgraph.computation_graph`'s `hidden`).
    hide_pair_board: bool = False
    lr: float = 1e-3
    loss: str = "margin"  # "margin" (the paper's) or "softmax"
    margin: float = 0.1
    temperature: float = 0.05  # softmax loss only
    negatives: int = 500
    in_batch_negatives: int = 0  # softmax only: the positives of each batch's first N examples
    logq_correction: bool = True  # with in-batch negatives: subtract log expected counts
    hard_negatives: int = 6
    hard_window: str | None = None  # LO:HI; None: default_window(pins)
    ppr_restart: float = PPR_RESTART
    warmup_steps: int | None = None  # None: one epoch
    lr_decay: float = 0.9
    seed: int = 0
    workers: int = 1
    # Training for new pins: the share of each batch's pins shown without memberships, and how many
    # trailing feature columns (computed from memberships) are zeroed for them.
    neighbor_dropout: float = 0.0
    structural_features: int = 0
    # The membership counts a pin shown as arriving draws from (0: none); with counts above 0, its
    # neighbors are re-walked from the memberships it keeps (`sampling.ArrivalTables`), each epoch.
    arrival_memberships: tuple[int, ...] = (0,)
    arrival_walk: WalkParams = WalkParams()
    # What an arriving pin's structural columns hold: "zero", or "same-count" (those of the graph's
    # pins with as many memberships as it arrives with: `sampling.ArrivalTables`).
    arrival_structural: str = "zero"


def lr_factor(warmup_steps: int, decay: float, steps_per_epoch: int) -> Callable[[int], float]:
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
def deterministic_kernels(device: torch.device) -> Iterator[None]:
    """Run with torch's deterministic kernels, then restore the caller's setting.

    With more than one thread, the CPU backward of indexing (an accumulating index_put_) adds the
    gradient rows of repeated indices in whatever order the threads reach them, so two runs with the
    same seed drift apart in the last bits and then visibly. The deterministic kernels fix the order.
    On CUDA, kernels without a deterministic version only warn. New tensors are not filled with NaN
    (torch's guard against reading memory never written, on by default in this mode): no kernel
    reads it, and the fills cost about a tenth of a training step."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's reproducible workspace
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


def draw_epoch_pairs(
    pairs: tuple[np.ndarray, np.ndarray],
    co_membership: CoMembership | None,
    options: TrainOptions,
    epoch: int,
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray | None]:
    """An epoch's (query, pos) pairs: the given ones plus, with `co_membership`, the epoch's draws;
    and with --hide-pair-board the list each pair was drawn from (-1 for the given pairs), else None."""
    if co_membership is None:
        return pairs, None
    # Seeded by (seed, epoch) apart from the batches' (seed, epoch) and (seed, epoch, i).
    rng = np.random.default_rng([options.seed, epoch, 0, 1])
    drawn = co_membership.draw_with_boards(options.co_membership_pairs, rng)
    epoch_pairs = (np.concatenate([pairs[0], drawn[0]]), np.concatenate([pairs[1], drawn[1]]))
    pos_board = None
    if options.hide_pair_board:
        # The given pairs' memberships are already out of the graph.
        pos_board = np.concatenate([np.full(len(pairs[0]), -1, np.int64), drawn[2]])
    return epoch_pairs, pos_board


def epoch_log_count(positives: np.ndarray, options: TrainOptions, num_pins: int) -> torch.Tensor | None:
    """The softmax loss's log expected count of each pin as a candidate in an epoch with these
    positives (in-batch negatives with the logQ correction), else None."""
    if not (options.loss == "softmax" and options.in_batch_negatives and options.logq_correction):
        return None
    counts = np.bincount(positives, minlength=num_pins)
    in_batch = min(options.in_batch_negatives, options.batch_size)
    return torch.from_numpy(candidate_log_count(counts, in_batch, options.negatives, num_pins))


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


def _train(
    graph: TrainGraph,
    pairs: tuple[np.ndarray, np.ndarray],
    options: TrainOptions,
    validation: tuple[np.ndarray, np.ndarray] | None,
    device: torch.device,
) -> tuple[PinSage, list[EpochLog]]:
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

    co_membership = (
        CoMembership.of(graph, options.co_membership_board_power) if options.co_membership_pairs else None
    )
    hard_pools: HardNegatives | None = None
    if hard_negative_count(options.epochs, options.hard_negatives) > 0:
        window = window_for(options, graph.num_pins)
        clock = time.perf_counter()
        queries = pairs[0] if co_membership is None else np.concatenate([pairs[0], co_membership.queries])
        hard_pools = hard_negative_pools(graph, queries, window, options.ppr_restart, device)
        log.info(
            "hard negatives: PPR ranks %d..%d of %d other pins, for %d distinct queries (%.1fs)",
            window.lo,
            window.hi,
            graph.num_pins - 1,
            len(hard_pools.queries),
            time.perf_counter() - clock,
        )

    steps_per_epoch = math.ceil((len(pairs[0]) + options.co_membership_pairs) / options.batch_size)
    warmup = steps_per_epoch if options.warmup_steps is None else options.warmup_steps
    optimiser = torch.optim.Adam(model.parameters(), lr=options.lr)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lr_factor(warmup, options.lr_decay, steps_per_epoch)
    )
    history = []
    for epoch in range(1, options.epochs + 1):
        clock = time.perf_counter()
        hard = hard_negative_count(epoch, options.hard_negatives)
        epoch_pairs, pos_board = draw_epoch_pairs(pairs, co_membership, options, epoch)
        log_count = epoch_log_count(epoch_pairs[1], options, graph.num_pins)
        if log_count is not None:
            log_count = log_count.to(device)
        arrival = None
        if options.neighbor_dropout > 0 and any(options.arrival_memberships):
            clock_walk = time.perf_counter()
            rng = np.random.default_rng([options.seed, epoch, 0, 2])
            structural = options.structural_features if options.arrival_structural == "same-count" else 0
            arrival = ArrivalTables.draw(
                graph, options.arrival_memberships, options.arrival_walk, rng, structural
            )
            log.info("arrival neighborhoods walked (%.1fs)", time.perf_counter() - clock_walk)
        batches = EpochBatches(
            graph,
            config.schedule(),
            epoch_pairs,
            options.batch_size,
            options.negatives,
            hard,
            hard_pools,
            options.seed,
            epoch,
            options.neighbor_dropout,
            options.structural_features,
            arrival,
            pos_board,
        )
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
        progress = Progress(f"epoch {epoch}/{options.epochs} steps", steps, log)
        for step, batch in enumerate(loader, start=1):
            batch = batch.to(device)
            z = embed_targets(model, batch.graph)
            loss = batch_loss(
                z,
                batch,
                options.loss,
                options.margin,
                options.temperature,
                options.in_batch_negatives,
                None if log_count is None else log_count[torch.from_numpy(batch.graph.targets).to(device)],
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            lr = optimiser.param_groups[0]["lr"]
            lr_schedule.step()
            total += float(loss.detach())
            progress.update(step, f"loss {total / step:.4f}")
        hits = None
        if validation is not None:
            hits = hit_rate(embed_pins(model, graph, device), *validation)
        seconds = round(time.perf_counter() - clock, 3)
        entry = EpochLog(epoch, total / steps, hits, hard, lr, steps, seconds)
        history.append(entry)
        log.info(
            "epoch %d/%d: loss %.4f, hit-rate@%d %s, %d hard negatives/query, lr %.2e, %.1fs",
            epoch,
            options.epochs,
            entry.loss,
            HIT_RATE_K,
            "-" if hits is None else f"{hits:.3f}",
            hard,
            lr,
            entry.seconds,
        )
    return model.eval(), history
