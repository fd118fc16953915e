"""The Spark chain computes exactly what the model defines: checked against the naive per-node
recursion of Algorithm 2 (tests/naive.py) on graphs with lonely pins and boards and dangling rows."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.embed import parse_args, run
from jobs.lib import transforms
from jobs.lib.chain import WITH_NEIGHBORS
from pinsage_model.checkpoint import read_checkpoint
from tests.graphs import LONELY_BOARD, LONELY_PIN, embed_argv, small_graph, write_checkpoint, write_graph
from tests.naive import NaivePinSage

SHUFFLED, BROADCAST = "0", "512"  # --broadcast-projections-mb: projections joined and shuffled, or broadcast
# How each layer moves its projections (LayerReport.projections): with the bound at BROADCAST the
# neighbor rows of targets with vectors of their own are broadcast too, unless the test makes them
# too big to (PROJECTIONS_ONLY).
PROJECTIONS_ONLY, LOCAL = "broadcast", "broadcast" + WITH_NEIGHBORS
CASES = [
    # (num_layers, pooling, board_feature_dim, how the projections move)
    (2, "importance", 0, "shuffled"),
    (2, "mean", 3, LOCAL),
    (2, "max", 0, "shuffled"),
    (4, "importance", 3, PROJECTIONS_ONLY),
    (4, "mean", 0, LOCAL),
    (4, "max", 3, "shuffled"),
]


def embed(
    spark, tmp_path, graph, checkpoint: str, with_boards: bool, broadcast_mb: str = BROADCAST, extra=()
):
    paths = write_graph(graph, str(tmp_path / "in"), with_boards)
    argv = embed_argv(paths, checkpoint, str(tmp_path / "out")) + ["--broadcast-projections-mb", broadcast_mb]
    args = parse_args(argv + list(extra))
    report = run(spark, args, read_checkpoint(checkpoint))
    pins = {
        r.pin_id: np.array(r.embedding)
        for r in spark.read.format("delta").load(args.out + "/pin_embeddings").collect()
    }
    boards = {
        r.board_id: np.array(r.embedding)
        for r in spark.read.format("delta").load(args.out + "/board_embeddings").collect()
    }
    return report, pins, boards


@pytest.mark.parametrize(("num_layers", "pooling", "board_dim", "moved"), CASES)
def test_pipeline_equals_naive_recursion(spark, tmp_path, monkeypatch, num_layers, pooling, board_dim, moved):
    broadcast_mb = SHUFFLED if moved == "shuffled" else BROADCAST
    if moved == PROJECTIONS_ONLY:  # neighbor rows too big to broadcast beside the projections
        monkeypatch.setattr(transforms, "NEIGHBOR_ROW_BYTES", 2**40)
    graph = small_graph(seed=num_layers, board_dim=board_dim)
    ckpt = write_checkpoint(
        str(tmp_path / "model.pt"),
        seed=7,
        num_layers=num_layers,
        pooling=pooling,
        board_feature_dim=board_dim,
    )
    report, pins, boards = embed(
        spark, tmp_path, graph, ckpt, with_boards=board_dim > 0, broadcast_mb=broadcast_mb
    )
    # Boards without features carry no vector of their own: layer 1 shuffles their rows instead.
    expected = [
        "broadcast" if moved == LOCAL and k == 1 and not board_dim else moved
        for k in range(1, num_layers + 1)
    ]
    assert [layer.projections for layer in report.layers] == expected
    # hidden 5, embed 4: importance and mean pooling send the projections through W_pool (4 wide),
    # max pooling cannot (chain.through_w), so both ways are held to the naive recursion.
    assert {layer.message_dim for layer in report.layers} == {5 if pooling == "max" else 4}
    naive = NaivePinSage(ckpt, graph.pins, graph.boards, graph.board_rows, graph.pin_rows)

    assert sorted(pins) == sorted(graph.pins), "exactly one row per pin of the pins table"
    worst = max(np.abs(pins[p] - naive.pin_embedding(p)).max() for p in graph.pins)
    assert worst < 1e-5, f"pin embeddings differ from the naive recursion by {worst}"
    assert sorted(boards) == sorted(graph.boards)
    reported = {name: out["rows"] for name, out in report.outputs.items()}
    board_tables = [f"board_layers/layer_{k}" for k in range(1, num_layers - 1, 2)] + ["board_embeddings"]
    assert reported == {"pin_embeddings": len(pins), **dict.fromkeys(board_tables, len(boards))}
    worst_board = max(np.abs(boards[b] - naive.board_embedding(b)).max() for b in graph.boards)
    assert worst_board < 1e-5, f"board embeddings differ by {worst_board}"

    # Each node is projected once per layer, and each target written once.
    num_pins, num_boards = len(graph.pins), len(graph.boards)
    once = [
        (k, num_pins, num_boards) if k % 2 else (k, num_boards, num_pins) for k in range(1, num_layers + 1)
    ]
    assert [(layer.k, layer.sources_projected, layer.targets_written) for layer in report.layers] == once

    # The edge cases are really there and really computed.
    assert LONELY_PIN in pins and LONELY_BOARD in boards
    assert report.dropped_rows["board_neighbors"] == 1
    assert report.dropped_rows["pin_neighbors"] == (2 if board_dim else 1)


@pytest.mark.parametrize("normalize_output", [False])
def test_unnormalised_head_equals_naive(spark, tmp_path, normalize_output):
    graph = small_graph(seed=3)
    ckpt = write_checkpoint(str(tmp_path / "model.pt"), seed=2, normalize_output=normalize_output)
    _, pins, _ = embed(spark, tmp_path, graph, ckpt, with_boards=False)
    naive = NaivePinSage(ckpt, graph.pins, graph.boards, graph.board_rows, graph.pin_rows)
    assert max(np.abs(pins[p] - naive.pin_embedding(p)).max() for p in graph.pins) < 1e-5
    assert any(abs(np.linalg.norm(v) - 1) > 1e-3 for v in pins.values())


def test_main_runs_with_the_pinned_checkpoint_sha256(spark, tmp_path):
    from jobs.embed import main
    from pinsage_model.checkpoint import read_checkpoint as read

    graph = small_graph(seed=9)
    ckpt = write_checkpoint(str(tmp_path / "model.pt"))
    paths = write_graph(graph, str(tmp_path / "in"), with_boards=False)
    argv = embed_argv(paths, ckpt, str(tmp_path / "out")) + ["--checkpoint-sha256", read(ckpt).sha256]
    assert main(argv) == 0
    assert spark.read.format("delta").load(str(tmp_path / "out/pin_embeddings")).count() == len(graph.pins)


def test_reduced_precision_projections_stay_within_their_rounding_of_the_naive_recursion(spark, tmp_path):
    """bfloat16 and float16 projections change the embeddings by the rounding of each projected value
    (a relative 2^-8 or 2^-11) carried through the layers: far less than the embeddings' spread, and
    the same whether the projections are shuffled or broadcast."""
    graph = small_graph(seed=5, board_dim=3)
    ckpt = write_checkpoint(
        str(tmp_path / "model.pt"), seed=7, board_feature_dim=3, hidden_dim=16, embed_dim=8
    )
    naive = NaivePinSage(ckpt, graph.pins, graph.boards, graph.board_rows, graph.pin_rows)
    expected = {p: naive.pin_embedding(p) for p in graph.pins}
    worst = {}
    for precision, broadcast_mb in [("bfloat16", SHUFFLED), ("bfloat16", BROADCAST), ("float16", SHUFFLED)]:
        flags = ["--projection-precision", precision]
        report, pins, _ = embed(
            spark, tmp_path / f"{precision}{broadcast_mb}", graph, ckpt, True, broadcast_mb, flags
        )
        moved = (
            f"broadcast as {precision}{WITH_NEIGHBORS}"
            if broadcast_mb == BROADCAST
            else f"shuffled as {precision}"
        )
        assert [layer.projections for layer in report.layers] == [moved] * 2
        diffs = np.array([np.abs(pins[p] - expected[p]).max() for p in graph.pins])
        worst[precision, broadcast_mb] = pins, diffs.max()
    bf16 = worst["bfloat16", SHUFFLED][1]
    assert 1e-5 < bf16 < 2e-2, bf16  # really rounded, and by about bfloat16's 8 significant bits
    assert worst["float16", SHUFFLED][1] < bf16 / 4  # three more bits
    shuffled, broadcast = worst["bfloat16", SHUFFLED][0], worst["bfloat16", BROADCAST][0]
    assert max(np.abs(shuffled[p] - broadcast[p]).max() for p in graph.pins) < 1e-6


# Parts on every layer, both target types, board features; max and mean pooling fold as
# tests/test_pooling.py shows (the chain's parts path does not depend on the pooling otherwise).
PART_CASE = (2, "importance", 3)  # (num_layers, pooling, board_feature_dim)


@pytest.mark.parametrize(("num_layers", "pooling", "board_dim"), [PART_CASE])
def test_projections_broadcast_in_parts_equal_naive_recursion(
    spark, tmp_path, monkeypatch, num_layers, pooling, board_dim
):
    """Projections over the broadcast bound, broadcast in three hash parts one after another: each
    part's partial states per target, folded in part order, give what the naive recursion gives,
    each node projected once per layer, and the same bits on a rerun."""
    import jobs.lib.chain as chain

    sizes = []

    def three_parts(source_rows, target_rows, neighbor_rows, hidden_dim, bound_mb, executors):
        sizes.append((source_rows, target_rows, neighbor_rows))
        assert executors == 1, "local mode: one executor"
        return 3, source_rows * hidden_dim * 4 / 2**20

    monkeypatch.setattr(chain, "projection_parts", three_parts)
    graph = small_graph(seed=num_layers + 10, board_dim=board_dim)
    ckpt = write_checkpoint(
        str(tmp_path / "model.pt"),
        seed=5,
        num_layers=num_layers,
        pooling=pooling,
        board_feature_dim=board_dim,
    )
    report, pins, boards = embed(spark, tmp_path / "a", graph, ckpt, with_boards=board_dim > 0)
    assert {layer.projections for layer in report.layers} == {"broadcast in 3 parts"}
    # The plan saw each layer's counts: sources, targets with rows (approximate), neighbor rows.
    num_pins, num_boards = len(graph.pins), len(graph.boards)
    seen = [(num_pins, graph.board_rows), (num_boards, graph.pin_rows)]
    for (sources, targets, rows), (num_sources, table) in zip(sizes, seen, strict=False):
        assert (sources, rows) == (num_sources, len(table))
        assert abs(targets - len({dst for dst, _, _ in table})) <= 2  # HyperLogLog's estimate

    naive = NaivePinSage(ckpt, graph.pins, graph.boards, graph.board_rows, graph.pin_rows)
    assert sorted(pins) == sorted(graph.pins) and sorted(boards) == sorted(graph.boards)
    worst = max(np.abs(pins[p] - naive.pin_embedding(p)).max() for p in graph.pins)
    assert worst < 1e-5, f"pin embeddings differ from the naive recursion by {worst}"
    worst_board = max(np.abs(boards[b] - naive.board_embedding(b)).max() for b in graph.boards)
    assert worst_board < 1e-5, f"board embeddings differ by {worst_board}"
    once = [
        (k, num_pins, num_boards) if k % 2 else (k, num_boards, num_pins) for k in range(1, num_layers + 1)
    ]
    assert [(layer.k, layer.sources_projected, layer.targets_written) for layer in report.layers] == once
    assert report.dropped_rows["board_neighbors"] == 1
    assert report.dropped_rows["pin_neighbors"] == (2 if board_dim else 1)

    _, again, again_boards = embed(spark, tmp_path / "b", graph, ckpt, with_boards=board_dim > 0)
    assert all(np.array_equal(pins[p], again[p]) for p in graph.pins)
    assert all(np.array_equal(boards[b], again_boards[b]) for b in graph.boards)
