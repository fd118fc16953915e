"""The training job: its Spark reading and training steps write a checkpoint whose embeddings equal
the Spark chain's, and bad pairs fail with the table, the column and the problem."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.embed import parse_args as embed_args
from jobs.embed import run as embed_run
from jobs.train import fit, main, parse_args, read_inputs
from pinsage_model.checkpoint import build_model, read_checkpoint
from pinsage_model.model import PinSage
from pinsage_model.training.loop import embed_pins
from tests.graphs import embed_argv, small_graph, table_argv, write_graph, write_parquet


def co_member_pairs(graph) -> dict[str, np.ndarray]:
    by_board = {}
    for p, b in graph.edges:
        by_board.setdefault(b, []).append(p)
    pairs = [(a, b) for members in by_board.values() for a in members for b in members if a != b]
    return {"query_pin": np.array([a for a, _ in pairs]), "pos_pin": np.array([b for _, b in pairs])}


def test_trainer_embeddings_equal_the_spark_pipeline_for_the_saved_checkpoint(spark, tmp_path):
    """The CLI's reading and training steps (what main runs) write a checkpoint; the embed job embeds
    with it; the trainer's own embedding path (what it validates with) gives the same vectors on
    the same tables: board features, a pin and a board without neighbors, and dangling rows
    included."""
    num_layers, pooling, board_dim = 2, "importance", 3
    graph = small_graph(seed=num_layers, board_dim=board_dim)
    paths = write_graph(graph, str(tmp_path / "in"), with_boards=board_dim > 0)
    pairs = write_parquet(str(tmp_path / "pairs"), co_member_pairs(graph))
    ckpt = str(tmp_path / "model.pt")
    argv = [
        *table_argv(paths),
        "--pairs",
        pairs,
        "--validation-pairs",
        pairs,
        "--out",
        ckpt,
        "--num-layers",
        str(num_layers),
        "--pooling",
        pooling,
        "--hidden-dim",
        "8",
        "--embed-dim",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--negatives",
        "10",
        "--hard-negatives",
        "1",
        "--workers",
        "0",
        "--lr",
        "0.05",
        "--co-membership-pairs",
        "40",
        "--loss",
        "softmax",
        "--temperature",
        "0.2",
        "--neighbor-dropout",
        "0.3",
        "--arrival-memberships",
        "0,1",
    ] + (["--boards", paths["boards"]] if board_dim else [])
    train_args = parse_args(argv)
    inputs = read_inputs(train_args)
    report = fit(train_args, inputs)
    assert [e["epoch"] for e in report.epochs] == [1, 2] and f"wrote {ckpt}" in report.render()
    assert report.inputs["co-membership draws per epoch"] == 40
    assert (report.options["loss"], report.options["temperature"]) == ("softmax", 0.2)
    # pin_neighbors records no walk here: arriving pins are walked with the neighborhood job's defaults.
    assert report.options["arrival_memberships"] == (0, 1)
    assert report.options["arrival_walk"] == {
        "walks_per_node": 100,
        "walk_length": 8,
        "restart_prob": 0.3,
        "top_t": 50,
    }
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
        *table_argv(paths),
        "--workers",
        "0",
        "--epochs",
        "1",
    ]
    cases = [
        (
            {"query_pin": pa.array([1, 2], pa.int64()), "pos_pin": pa.array([3, 999], pa.int64())},
            "table 'pairs', column 'pos_pin': 1 rows name a pin that is not in pins (e.g. 999)",
        ),
        (
            {"query_pin": pa.array(["1"], pa.string()), "pos_pin": pa.array([3], pa.int64())},
            "table 'pairs', column 'query_pin': has type string, expected bigint or int",
        ),
        ({"query_pin": pa.array([1], pa.int64())}, "table 'pairs', column 'pos_pin': missing column"),
    ]
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


def test_in_batch_negatives_need_the_softmax_loss(capsys):
    required = "--pins p --edges e --board-neighbors b --pin-neighbors n --pairs x --out o".split()
    options = parse_args(
        [*required, "--loss", "softmax", "--in-batch-negatives", "16", "--no-logq-correction"]
    )
    assert (options.options.in_batch_negatives, options.options.logq_correction) == (16, False)
    with pytest.raises(SystemExit) as exc:
        parse_args([*required, "--in-batch-negatives", "16"])
    assert exc.value.code == 2
    assert "--in-batch-negatives needs --loss softmax" in capsys.readouterr().err


def test_arrival_memberships_are_distinct_counts(capsys):
    required = "--pins p --edges e --board-neighbors b --pin-neighbors n --pairs x --out o".split()
    assert parse_args([*required, "--arrival-memberships", "0,1,3"]).options.arrival_memberships == (0, 1, 3)
    assert parse_args(required).options.arrival_memberships == (0,)
    for bad in ("0,1,1", "-1", "a"):
        with pytest.raises(SystemExit) as exc:
            parse_args([*required, "--arrival-memberships", bad])
        assert exc.value.code == 2
        assert "--arrival-memberships" in capsys.readouterr().err
