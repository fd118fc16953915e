"""Where a training step's time goes on goodbooks-10k, as docs/goodbooks.md "Time" reports it.

    python benchmarks/train_step.py --prepared P --neighbors N [--embed-dim 128] [--steps 5]

Reads the tables of jobs/goodbooks/prepare.py (P, with its `boards`) and jobs/neighborhoods.py (N)
with the `deltalake` package, builds the model of the chain's training defaults (2 layers, hidden
256, importance pooling) and the first epoch's batches (the training pairs and a million
co-membership draws, batches of 8,192, 500 shared negatives, 2,048 in-batch negatives, the pairs'
lists hidden), and times, per step: building the batch (`EpochBatches`), the forward pass
(`embed_targets`), the loss and its backward pass, and the optimiser's step, with torch's
deterministic kernels as the trainer runs them. The first step is
left out of the means; the first batch's sizes are printed.
"""

from __future__ import annotations

import argparse
import time

import torch
from cold_start import column, graph_rows, matrix, table

from pinsage_model.config import ModelConfig
from pinsage_model.model import PinSage
from pinsage_model.training.graph import build_graph
from pinsage_model.training.loop import TrainOptions, deterministic_kernels, draw_epoch_pairs, epoch_log_count
from pinsage_model.training.loss import batch_loss
from pinsage_model.training.sampling import CoMembership, EpochBatches
from pinsage_model.training.subgraph import embed_targets

BATCH, NEGATIVES, IN_BATCH, DRAWS, TEMPERATURE = 8192, 500, 2048, 1_000_000, 0.1
PHASES = ("build the batch", "forward", "loss", "backward", "optimiser step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", required=True)
    p.add_argument("--neighbors", required=True)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    P, N = a.prepared, a.neighbors
    pins, boards = table(f"{P}/pins"), table(f"{P}/boards")
    edges, bn, pn = table(f"{P}/edges"), table(f"{N}/board_neighbors"), table(f"{N}/pin_neighbors")
    pin_features, board_features = matrix(pins), matrix(boards)
    graph, _ = build_graph(
        column(pins, "pin_id"),
        pin_features,
        column(boards, "board_id"),
        board_features,
        *graph_rows(edges, bn, pn),
    )
    config = ModelConfig(
        num_layers=2,
        pin_feature_dim=pin_features.shape[1],
        board_feature_dim=board_features.shape[1],
        hidden_dim=256,
        embed_dim=a.embed_dim,
        pooling="importance",
    )
    torch.manual_seed(0)
    model = PinSage(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.005)

    given = table(f"{P}/train_pairs")
    pairs = (graph.pin_index(column(given, "query_pin")), graph.pin_index(column(given, "pos_pin")))
    options = TrainOptions(
        batch_size=BATCH,
        co_membership_pairs=DRAWS,
        hide_pair_board=True,
        loss="softmax",
        negatives=NEGATIVES,
        in_batch_negatives=IN_BATCH,
    )
    epoch_pairs, pos_board = draw_epoch_pairs(pairs, CoMembership.of(graph, 1.0), options, 1)
    log_count = epoch_log_count(epoch_pairs[1], options, graph.num_pins)
    batches = EpochBatches(
        graph, config.schedule(), epoch_pairs, BATCH, NEGATIVES, 0, None, 0, 1, pos_board=pos_board
    )

    seconds: dict[str, float] = {}
    with deterministic_kernels(torch.device("cpu")):  # as the trainer runs its steps
        steps(a.steps, batches, model, optimiser, log_count, seconds)
    for name, total in seconds.items():
        print(f"{name}: {total / a.steps:.3f} s a step (mean of {a.steps})")


def steps(n, batches, model, optimiser, log_count, seconds: dict[str, float]) -> None:
    """Run n + 1 steps, adding each phase's seconds to `seconds` from the second step on."""
    for i in range(n + 1):
        laps = [time.perf_counter()]
        batch = batches[i]
        laps.append(time.perf_counter())
        z = embed_targets(model, batch.graph)
        laps.append(time.perf_counter())
        targets = log_count[torch.from_numpy(batch.graph.targets)]
        loss = batch_loss(z, batch, "softmax", 0.1, TEMPERATURE, IN_BATCH, targets)
        laps.append(time.perf_counter())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        laps.append(time.perf_counter())
        optimiser.step()
        laps.append(time.perf_counter())
        if i == 0:  # the first step warms up: its sizes are printed, its times left out
            g = batch.graph
            print(
                f"first batch: {len(g.targets):,} target pins; {g.pin_features.shape[0]:,} pins and "
                f"{g.board_features.shape[0]:,} lists read; rows per layer "
                + ", ".join(f"{len(b.src):,} into {b.num_targets:,}" for b in g.blocks)
            )
            continue
        for name, start, end in zip(PHASES, laps, laps[1:], strict=False):
            seconds[name] = seconds.get(name, 0.0) + end - start


if __name__ == "__main__":
    main()
