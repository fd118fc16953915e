"""The trainer: its batches compute what the whole-graph model computes, its hard negatives come
from the configured personalised-PageRank window (checked against an independent numpy PageRank),
the curriculum adds them epoch by epoch, the loss falls, reruns are bit-identical, bad input fails
cleanly, and what it embeds is what the Spark chain embeds from the checkpoint it writes."""

from __future__ import annotations

import io
import os
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.embed import parse_args as embed_args
from jobs.embed import run as embed_run
from pinsage_model.checkpoint import build_model, checkpoint_bytes, read_checkpoint
from pinsage_model.config import ModelConfig
from pinsage_model.graph import build_graph
from pinsage_model.model import PinSage
from pinsage_model.pooling import pool
from pinsage_model.sampling import (
    CoMembership,
    EpochBatches,
    HardNegatives,
    RankWindow,
    default_window,
    hard_negative_count,
    hard_negative_pools,
    make_batch,
    parse_window,
    personalised_pagerank,
    transition_matrices,
)
from pinsage_model.subgraph import computation_graph, embed
from pinsage_model.train import (
    TrainOptions,
    deterministic_kernels,
    embed_pins,
    fit,
    hit_rate,
    lr_factor,
    main,
    max_margin_loss,
    parse_args,
    read_inputs,
    softmax_loss,
    train,
)
from tests.graphs import embed_argv, small_graph, write_graph, write_parquet


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The batches here are tiny: one thread avoids intra-op threads spinning on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- a small clustered catalogue ---------------------------------------------------------------


def clustered(
    seed: int = 0, pins: int = 90, boards: int = 18, topics: int = 6, dim: int = 8, board_dim: int = 0
):
    """Pins in topics (features: topic centroid + noise); each board collects pins of one topic.
    Pin ids are spread out and given in shuffled order, so indexing is exercised. Returns the
    column arrays of every table and the co-membership pairs (a pin and another pin of one board)."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, topics, pins)
    features = (rng.normal(size=(topics, dim))[topic] + 0.7 * rng.normal(size=(pins, dim))).astype(np.float32)
    ids = rng.permutation(pins).astype(np.int64) * 7 + 3
    e_pin, e_board = [], []
    for b in range(boards):
        members = np.unique(rng.choice(np.flatnonzero(topic == b % topics), 6))
        e_pin += list(members)
        e_board += [b] * len(members)
    e_pin, e_board = np.array(e_pin), np.array(e_board)
    weight = rng.uniform(0.5, 2.0, len(e_pin)).astype(np.float32)
    board_ids = np.arange(boards, dtype=np.int64) + 1000
    query, pos = [], []
    for b in range(boards):
        members = e_pin[e_board == b]
        for i in members:
            for j in members:
                if i != j:
                    query.append(ids[i])
                    pos.append(ids[j])
    return {
        "pin_ids": ids,
        "features": features,
        "board_ids": board_ids,
        "board_features": rng.normal(size=(boards, board_dim)).astype(np.float32),
        "edges": (ids[e_pin], board_ids[e_board], weight),
        "board_rows": (board_ids[e_board], ids[e_pin], weight),
        "pin_rows": (ids[e_pin], board_ids[e_board], weight[::-1].copy()),
        "pairs": (np.array(query), np.array(pos)),
    }


def in_memory(data):
    graph, _ = build_graph(
        data["pin_ids"], data["features"], data["board_ids"], data["board_features"],
        data["edges"], data["board_rows"], data["pin_rows"],
    )  # fmt: skip
    return graph, (graph.pin_index(data["pairs"][0]), graph.pin_index(data["pairs"][1]))


QUICK = dict(hidden_dim=16, embed_dim=8, batch_size=64, negatives=40, lr=0.01, workers=0)


# ---- minibatches equal the whole graph --------------------------------------------------------


@pytest.mark.parametrize(
    ("num_layers", "pooling", "board_dim"), [(2, "importance", 0), (4, "max", 3), (4, "mean", 0)]
)
def test_subgraph_batch_forward_equals_whole_graph_forward(num_layers, pooling, board_dim):
    graph, _ = in_memory(clustered(seed=1, board_dim=board_dim))
    torch.manual_seed(3)
    model = PinSage(ModelConfig(num_layers, 8, board_dim, 16, 8, pooling))
    whole = model(*graph.whole_graph())[0]
    targets = np.unique(np.random.default_rng(0).choice(graph.num_pins, 12))
    cg = computation_graph(graph, targets, num_layers)
    assert cg.pin_features.shape[0] < graph.num_pins, "the batch should not be the whole graph"
    batch = embed(model, cg)
    assert batch.shape == (len(targets), 8)
    assert torch.allclose(batch, whole[targets], atol=1e-6, rtol=0)


def test_batch_rows_point_at_the_examples_pins():
    graph, _ = in_memory(clustered(seed=2))
    query, pos = np.array([4, 9]), np.array([9, 30])
    negatives, hard = np.array([9, 50, 61]), np.array([[71], [30]])
    batch = make_batch(graph, 2, query, pos, negatives, hard)
    targets = batch.graph.targets
    assert targets[batch.query].tolist() == [4, 9] and targets[batch.pos].tolist() == [9, 30]
    assert targets[batch.negatives].tolist() == [9, 50, 61] and targets[batch.hard].tolist() == [[71], [30]]
    # A negative that is the query's own pin or its positive is masked out of the loss.
    assert batch.negative_mask.tolist() == [[False, True, True], [False, True, True]]
    assert batch.hard_mask.tolist() == [[True], [False]]


# ---- loss, schedule, hit rate -------------------------------------------------------------------


def test_max_margin_loss_is_the_mean_hinge_over_unmasked_pairs():
    graph, _ = in_memory(clustered(seed=2))
    batch = make_batch(graph, 2, np.array([1, 2]), np.array([3, 4]), np.array([5, 3]), np.array([[6], [7]]))
    z = torch.randn(len(batch.graph.targets), 5, generator=torch.Generator().manual_seed(0))
    zn = z.numpy()
    terms = []
    for i in range(2):
        q, p = zn[int(batch.query[i])], zn[int(batch.pos[i])]
        negs = [
            (n, m) for n, m in zip(batch.negatives.tolist(), batch.negative_mask[i].tolist(), strict=True)
        ]
        negs += [(n, m) for n, m in zip(batch.hard[i].tolist(), batch.hard_mask[i].tolist(), strict=True)]
        terms += [max(0.0, q @ zn[n] - q @ p + 0.3) for n, keep in negs if keep]
    assert len(terms) == 5  # pin 3 is query 0's positive
    assert float(max_margin_loss(z, batch, 0.3)) == pytest.approx(np.mean(terms), rel=1e-6)


def test_softmax_loss_is_the_cross_entropy_of_the_positive_among_unmasked_negatives():
    graph, _ = in_memory(clustered(seed=2))
    batch = make_batch(graph, 2, np.array([1, 2]), np.array([3, 4]), np.array([5, 3]), np.array([[6], [7]]))
    z = torch.randn(len(batch.graph.targets), 5, generator=torch.Generator().manual_seed(0))
    zn = z.numpy().astype(np.float64)
    terms = []
    for i in range(2):
        q, p = zn[int(batch.query[i])], zn[int(batch.pos[i])]
        kept = [
            n for n, m in zip(batch.negatives.tolist(), batch.negative_mask[i].tolist(), strict=True) if m
        ]
        kept += [n for n, m in zip(batch.hard[i].tolist(), batch.hard_mask[i].tolist(), strict=True) if m]
        logits = np.array([q @ p] + [q @ zn[n] for n in kept]) / 0.2
        terms.append(np.log(np.exp(logits).sum()) - logits[0])
    assert float(softmax_loss(z, batch, 0.2)) == pytest.approx(np.mean(terms), rel=1e-5)


def test_learning_rate_warms_up_linearly_then_decays_per_epoch():
    factor = lr_factor(warmup_steps=4, decay=0.5, steps_per_epoch=10)
    assert [factor(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0 and factor(14) == pytest.approx(0.5) and factor(24) == pytest.approx(0.25)


def test_hit_rate_counts_positives_in_the_top_k_and_ties_against_them():
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    assert hit_rate(z, np.array([0, 0]), np.array([1, 3]), k=1) == 0.5
    assert hit_rate(z, np.array([0]), np.array([3]), k=3) == 1.0
    assert hit_rate(torch.ones(4, 2), np.array([0]), np.array([1]), k=2) == 0.0


# ---- hard negatives and the curriculum ----------------------------------------------------------


def exact_ppr(graph, query: int, restart: float) -> np.ndarray:
    """PageRank personalised to `query` as a linear system in float64 numpy, from the memberships:
    the pin -> board -> pin walk with restart, a pin without boards returning to the query."""
    P = np.zeros((graph.num_pins, graph.num_boards))
    for p, b, w in zip(graph.edge_pin, graph.edge_board, graph.edge_weight, strict=True):
        P[p, b] = w
    pin_to_board = P / np.maximum(P.sum(1, keepdims=True), 1e-300)
    board_to_pin = P.T / P.T.sum(1, keepdims=True)
    M = pin_to_board @ board_to_pin
    M[P.sum(1) == 0, query] = 1.0
    e = np.zeros(graph.num_pins)
    e[query] = 1.0
    # pi = restart e + (1 - restart) pi M
    return np.linalg.solve((np.eye(graph.num_pins) - (1 - restart) * M).T, restart * e)


def test_pagerank_matches_the_linear_system():
    graph, _ = in_memory(clustered(seed=4))
    queries = np.array([0, 17, 55])
    got = personalised_pagerank(transition_matrices(graph), torch.from_numpy(queries), 0.2).numpy()
    for col, q in enumerate(queries):
        assert np.abs(got[:, col] - exact_ppr(graph, q, 0.2)).max() < 1e-6


@pytest.mark.parametrize("window", ["5:12", "0.1:0.2"])
def test_hard_negatives_come_from_the_configured_rank_window(window):
    data = clustered(seed=5, pins=120, boards=30)
    graph, pairs = in_memory(data)
    ranks = parse_window(window, graph.num_pins)
    assert (ranks.lo, ranks.hi) == ((5, 12) if window == "5:12" else (12, 24))
    pools = hard_negative_pools(graph, pairs[0], ranks, restart=0.15)
    assert pools.pool.shape == (len(np.unique(pairs[0])), ranks.width)
    for q, window_pins in zip(pools.queries[:25], pools.pool[:25], strict=True):
        score = exact_ppr(graph, q, 0.15)
        others = np.delete(score, q)
        tol = 1e-6  # float32 iterates
        assert len(set(window_pins.tolist())) == ranks.width and q not in window_pins
        for v in window_pins:
            # v's possible 1-based ranks among the other pins, whichever way ties are broken
            best = 1 + int((others > score[v] + tol).sum())
            worst = int((others >= score[v] - tol).sum())
            assert best <= ranks.hi and worst >= ranks.lo, (q, v, best, worst, ranks)

    # A batch's hard negatives are drawn from its own queries' windows.
    batches = EpochBatches(graph, 2, pairs, 32, 10, hard=3, hard_pools=pools, seed=0, epoch=4)
    batch = batches[1]
    targets = batch.graph.targets
    query_pins, hard_pins = targets[batch.query], targets[batch.hard]
    assert hard_pins.shape == (32, 3)
    for q, drawn in zip(query_pins, hard_pins, strict=True):
        row = pools.pool[np.searchsorted(pools.queries, q)]
        assert set(drawn.tolist()) <= set(row.tolist())


def test_window_defaults_scale_the_papers_ranks_to_the_catalogue():
    assert default_window(2_000_000_000) == RankWindow(2000, 5000)
    assert default_window(100_001) == RankWindow(2000, 5000)
    assert default_window(10_001) == RankWindow(200, 500)
    assert default_window(30) == RankWindow(1, 1)
    with pytest.raises(ValueError, match="outside 1..29"):
        parse_window("10:40", 30)
    with pytest.raises(ValueError, match="LO:HI"):
        parse_window("10", 30)


def test_curriculum_adds_one_hard_negative_per_epoch_up_to_the_cap():
    assert [hard_negative_count(e, 3) for e in range(1, 7)] == [0, 1, 2, 3, 3, 3]
    assert [hard_negative_count(e, 0) for e in range(1, 4)] == [0, 0, 0]
    graph, pairs = in_memory(clustered(seed=6))
    pools = HardNegatives(np.unique(pairs[0]), np.zeros((len(np.unique(pairs[0])), 4), dtype=np.int64))
    for epoch in range(1, 6):
        count = hard_negative_count(epoch, 3)
        batches = EpochBatches(graph, 2, pairs, 16, 8, count, pools, seed=0, epoch=epoch)
        assert batches[0].hard.shape == (16, count)
    _, history = train(
        graph, pairs, TrainOptions(**{**QUICK, "epochs": 5, "hard_negatives": 3, "batch_size": 256})
    )
    assert [e.hard_negatives for e in history] == [0, 1, 2, 3, 3]


# ---- co-membership pairs ------------------------------------------------------------------------


def co_membership_distribution(edges) -> dict[tuple[int, int], float]:
    """P(query, pos) of one pin -> board -> pin step by weight, self-pairs removed and the rest
    renormalised, summed in plain Python over (pin, board, weight) rows."""
    total = sum(w for _, _, w in edges)
    board_total: dict[int, float] = {}
    for _, b, w in edges:
        board_total[b] = board_total.get(b, 0.0) + w
    prob: dict[tuple[int, int], float] = {}
    for q, b, wq in edges:
        for p, b2, wp in edges:
            if b2 == b and p != q:
                prob[(q, p)] = prob.get((q, p), 0.0) + (wq / total) * (wp / board_total[b])
    kept = sum(prob.values())
    return {k: v / kept for k, v in prob.items()}


def test_co_membership_pairs_follow_the_weighted_pin_board_pin_step():
    data = clustered(seed=11)
    graph, _ = in_memory(data)
    edges = list(
        zip(graph.edge_pin.tolist(), graph.edge_board.tolist(), graph.edge_weight.tolist(), strict=True)
    )
    expected = co_membership_distribution(edges)
    sampler = CoMembership.of(graph)
    query, pos = sampler.draw(200_000, np.random.default_rng(3))
    assert 0.7 * 200_000 < len(query) < 200_000, "only self-pairs are dropped"
    assert np.all(query != pos)
    counts: dict[tuple[int, int], int] = {}
    for pair in zip(query.tolist(), pos.tolist(), strict=True):
        counts[pair] = counts.get(pair, 0) + 1
    assert set(counts) <= set(expected), "every pair shares a board"
    total_variation = 0.5 * sum(abs(counts.get(k, 0) / len(query) - v) for k, v in expected.items())
    assert total_variation < 0.02, total_variation
    again = sampler.draw(200_000, np.random.default_rng(3))
    assert np.array_equal(again[0], query) and np.array_equal(again[1], pos)
    assert set(sampler.queries.tolist()) == set(graph.edge_pin.tolist())


def test_co_membership_pairs_teach_the_boards_when_given_pairs_are_few():
    data = clustered(seed=12)
    graph, pairs = in_memory(data)
    few = (pairs[0][:8], pairs[1][:8])
    options = TrainOptions(
        **{**QUICK, "epochs": 4, "hard_negatives": 2, "hard_window": "2:6", "warmup_steps": 2}
    )
    _, alone = train(graph, few, options, validation=pairs)
    model, helped = train(graph, few, replace(options, co_membership_pairs=600), validation=pairs)
    assert helped[-1].hit_rate > alone[-1].hit_rate + 0.1, (alone[-1].hit_rate, helped[-1].hit_rate)
    # Each epoch trains on the given pairs plus fresh draws (self-pairs dropped), in full batches.
    for entry in helped:
        assert np.ceil((8 + 400) / 64) <= entry.steps <= np.ceil((8 + 600) / 64)
    again, _ = train(graph, few, replace(options, co_membership_pairs=600), validation=pairs)
    assert checkpoint_bytes(again) == checkpoint_bytes(model)


# ---- training --------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["margin", "softmax"])
def test_loss_decreases_and_hit_rate_rises_over_epochs(loss):
    data = clustered(seed=7)
    graph, pairs = in_memory(data)
    held_out = np.arange(len(pairs[0])) % 5 == 0
    fit = (pairs[0][~held_out], pairs[1][~held_out])
    validation = (pairs[0][held_out], pairs[1][held_out])
    options = TrainOptions(
        **{**QUICK, "epochs": 4, "hard_negatives": 0, "warmup_steps": 2, "loss": loss, "temperature": 0.2}
    )
    _, history = train(graph, fit, options, validation)
    losses = [e.loss for e in history]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    # The hinge reaches 0 on separable pairs; the cross-entropy keeps the clusters' own pins as rivals.
    assert losses[-1] < {"margin": 0.5, "softmax": 0.8}[loss] * losses[0], losses
    assert history[-1].hit_rate > history[0].hit_rate, [e.hit_rate for e in history]


def test_training_kernels_add_repeated_index_gradients_in_a_fixed_order():
    """With two threads the CPU backward of x[idx] adds the rows of repeated indices in thread order
    (on this machine two such backwards differ in the last bits every time); `train` runs under
    `deterministic_kernels`, which fixes the order, and restores the caller's setting after."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 64, generator=gen, requires_grad=True)
    idx = torch.randint(0, 2000, (300_000,), generator=gen)
    w = torch.randn(300_000, 64, generator=gen)

    def grad() -> torch.Tensor:
        x.grad = None
        (x[idx] * w).sum().backward()
        return x.grad.clone()

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with deterministic_kernels(torch.device("cpu")):
            assert torch.are_deterministic_algorithms_enabled()
            grads = [grad() for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    assert not torch.are_deterministic_algorithms_enabled()


def test_training_is_deterministic_with_a_seed_whatever_the_workers():
    graph, pairs = in_memory(clustered(seed=8))
    options = TrainOptions(**{**QUICK, "epochs": 2, "hard_negatives": 2, "hard_window": "2:6", "seed": 5})

    def checkpoint(**changes) -> bytes:
        return checkpoint_bytes(train(graph, pairs, replace(options, **changes))[0])

    first = checkpoint()
    assert checkpoint() == first, "a rerun must write a bit-identical checkpoint"
    assert checkpoint(workers=2) == first, "batches built by worker processes must be the same batches"
    assert checkpoint(seed=6) != first


# ---- inputs through Spark, the CLI, and the Spark chain ----------------------------------------


def co_member_pairs(graph) -> dict[str, np.ndarray]:
    by_board = {}
    for p, b in graph.edges:
        by_board.setdefault(b, []).append(p)
    pairs = [(a, b) for members in by_board.values() for a in members for b in members if a != b]
    return {"query_pin": np.array([a for a, _ in pairs]), "pos_pin": np.array([b for _, b in pairs])}


def test_trainer_embeddings_equal_the_spark_pipeline_for_the_saved_checkpoint(spark, tmp_path):
    """The CLI's reading and training steps (what main runs) write a checkpoint; the embed job embeds
    with it; the trainer's own embedding path (what it validates with) gives the same vectors on
    the same tables: board features, a pin and a board without neighbours, and dangling rows
    included."""
    num_layers, pooling, board_dim = 2, "importance", 3
    graph = small_graph(seed=num_layers, board_dim=board_dim)
    paths = write_graph(graph, str(tmp_path / "in"), with_boards=board_dim > 0)
    pairs = write_parquet(str(tmp_path / "pairs"), co_member_pairs(graph))
    ckpt = str(tmp_path / "model.pt")
    argv = [
        "--pins", paths["pins"], "--edges", paths["edges"], "--board-neighbors", paths["board_neighbors"],
        "--pin-neighbors", paths["pin_neighbors"], "--pairs", pairs, "--validation-pairs", pairs,
        "--out", ckpt, "--num-layers", str(num_layers), "--pooling", pooling, "--hidden-dim", "8",
        "--embed-dim", "4", "--epochs", "2", "--batch-size", "16", "--negatives", "10",
        "--hard-negatives", "1", "--workers", "0", "--lr", "0.05", "--co-membership-pairs", "40",
        "--loss", "softmax", "--temperature", "0.2",
    ] + (["--boards", paths["boards"]] if board_dim else [])  # fmt: skip
    train_args = parse_args(argv)
    inputs = read_inputs(train_args)
    report = fit(train_args, inputs)
    assert [e["epoch"] for e in report.epochs] == [1, 2] and f"wrote {ckpt}" in report.render()
    assert report.inputs["co-membership draws per epoch"] == 40
    assert (report.options["loss"], report.options["temperature"]) == ("softmax", 0.2)
    checkpoint = read_checkpoint(ckpt)
    assert checkpoint.sha256 == report.sha256
    assert checkpoint.config.board_feature_dim == board_dim and checkpoint.config.pin_feature_dim == 6
    initial = PinSage(checkpoint.config)
    assert any(not torch.equal(v, initial.state_dict()[k]) for k, v in checkpoint.state_dict.items()), (
        "training changed nothing"
    )

    args = embed_args(embed_argv(paths, ckpt, str(tmp_path / "out")))
    embed_run(spark, args, checkpoint)
    spark_z = {
        r.pin_id: np.array(r.embedding)
        for r in spark.read.format("delta").load(args.out + "/pin_embeddings").collect()
    }

    trainer_z = embed_pins(build_model(checkpoint), inputs.graph).numpy()
    assert sorted(spark_z) == inputs.graph.pin_ids.tolist()
    worst = max(np.abs(trainer_z[i] - spark_z[p]).max() for i, p in enumerate(inputs.graph.pin_ids))
    assert worst < 1e-5, f"trainer and Spark embeddings differ by {worst}"


def test_bad_pairs_fail_with_the_table_column_and_problem(spark, tmp_path, capsys):
    graph = small_graph(seed=1)
    paths = write_graph(graph, str(tmp_path / "in"), with_boards=False)
    base = [
        "--pins", paths["pins"], "--edges", paths["edges"], "--board-neighbors", paths["board_neighbors"],
        "--pin-neighbors", paths["pin_neighbors"], "--workers", "0", "--epochs", "1",
    ]  # fmt: skip
    cases = [
        ({"query_pin": pa.array([1, 2], pa.int64()), "pos_pin": pa.array([3, 999], pa.int64())},
         "table 'pairs', column 'pos_pin': 1 rows name a pin that is not in pins (e.g. 999)"),
        ({"query_pin": pa.array(["1"], pa.string()), "pos_pin": pa.array([3], pa.int64())},
         "table 'pairs', column 'query_pin': has type string, expected bigint or int"),
        ({"query_pin": pa.array([1], pa.int64())}, "table 'pairs', column 'pos_pin': missing column"),
    ]  # fmt: skip
    for i, (columns, expected) in enumerate(cases):
        pairs = write_parquet(str(tmp_path / f"pairs{i}"), columns)
        out = str(tmp_path / f"model{i}.pt")
        assert main(base + ["--pairs", pairs, "--out", out]) == 2
        err = capsys.readouterr().err
        assert f"error: {expected}" in err, err
        assert not os.path.exists(out)

    good = write_parquet(str(tmp_path / "good"), co_member_pairs(graph))
    bad_validation = write_parquet(
        str(tmp_path / "bad_validation"),
        {"query_pin": pa.array([1, None], pa.int64()), "pos_pin": pa.array([3, 4], pa.int64())},
    )
    argv = base + ["--pairs", good, "--validation-pairs", bad_validation, "--out", str(tmp_path / "m.pt")]
    assert main(argv) == 2
    assert (
        "error: table 'validation_pairs', column 'query_pin': 1 rows have a NULL id"
        in capsys.readouterr().err
    )


def test_checkpoint_is_format_version_1_that_torch_loads_weights_only(tmp_path):
    graph, pairs = in_memory(clustered(seed=9))
    model, _ = train(graph, pairs, TrainOptions(**{**QUICK, "epochs": 1}))
    raw = torch.load(io.BytesIO(checkpoint_bytes(model)), weights_only=True)
    assert raw["format_version"] == 1 and raw["config"]["pin_feature_dim"] == 8


@pytest.mark.parametrize("mode", ["importance", "mean", "max"])
def test_training_pooling_equals_the_reference_pooling_and_its_gradient(mode):
    from pinsage_model.pooling import pool_projected

    gen = torch.Generator().manual_seed(3)
    sources, targets, rows = 9, 5, 30
    projected = torch.rand((sources, 4), generator=gen, dtype=torch.float32, requires_grad=True)
    src = torch.randint(0, sources, (rows,), generator=gen)
    dst = torch.randint(0, targets - 1, (rows,), generator=gen)  # the last target has no rows
    weight = torch.rand(rows, generator=gen) + 0.1
    upstream = torch.rand((targets, 4), generator=gen)

    # Reference: the plain weighted mean (or the maximum) per target, in float64, row by row.
    expected = torch.zeros((targets, 4), dtype=torch.float64)
    for u in range(targets):
        mine = (dst == u).nonzero().squeeze(1)
        rows_of_u = projected.detach()[src[mine]].double()
        w = weight[mine].double() if mode == "importance" else torch.ones(len(mine), dtype=torch.float64)
        if len(mine):
            expected[u] = (
                rows_of_u.max(0).values if mode == "max" else (w[:, None] * rows_of_u).sum(0) / w.sum()
            )
    fast = pool_projected(projected, src, dst, weight, targets, mode)
    torch.testing.assert_close(fast.double(), expected, rtol=0, atol=1e-6)
    assert torch.equal(fast[targets - 1], torch.zeros(4))
    (fast * upstream).sum().backward()
    fast_grad, projected.grad = projected.grad.clone(), None
    (pool(projected[src], dst, weight, targets, mode) * upstream).sum().backward()
    torch.testing.assert_close(fast_grad, projected.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["importance", "mean", "max"])
def test_chunked_whole_graph_pooling_is_bit_for_bit_the_one_shot_pooling(mode):
    from pinsage_model.pooling import pool_gathered

    gen = torch.Generator().manual_seed(5)
    sources, targets, rows = 11, 6, 97
    projected = torch.rand((sources, 3), generator=gen)
    src = torch.randint(0, sources, (rows,), generator=gen)
    dst = torch.randint(0, targets - 1, (rows,), generator=gen)  # the last target has no rows
    weight = torch.rand(rows, generator=gen, dtype=torch.float64) + 0.1
    whole = pool(projected[src], dst, weight, targets, mode)
    for chunk in (1, 7, 96, 97, 1000):
        got = pool_gathered(projected, src, dst, weight, targets, mode, chunk_rows=chunk)
        assert torch.equal(got, whole), f"chunks of {chunk} rows"
    assert torch.equal(whole[targets - 1], torch.zeros(3))
    none = pool_gathered(projected, src[:0], dst[:0], weight[:0], targets, mode)
    assert torch.equal(none, torch.zeros((targets, 3)))
