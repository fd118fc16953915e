"""Failures: a Python worker killed mid-projection is retried to the same output; a run that dies in
layer 2 leaves the published tables as they were and --resume picks up its layer 1; what a run
records about itself in its output tables.

The faulty runs are real `python jobs/embed.py` processes whose executors get the fault through
their environment (jobs.lib.inference.inject_fault)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from jobs.embed import parse_args, run
from jobs.lib.inference import FAULT_ENV
from jobs.lib.io import last_commit
from pinsage_model.checkpoint import read_checkpoint
from tests.graphs import embed_argv, small_graph, write_checkpoint, write_graph

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The same partitioning as the session fixture, so a subprocess run is bit-identical to an in-session one.
SAME_AS_FIXTURE = [
    "--conf",
    "spark.sql.shuffle.partitions=4",
    "--conf",
    "spark.default.parallelism=2",
    "--conf",
    "spark.ui.enabled=false",
    "--conf",
    "spark.ui.showConsoleProgress=false",
]


def embed_process(argv: list[str], fault: str, master: str) -> subprocess.CompletedProcess:
    env = {**os.environ, FAULT_ENV: fault}
    cmd = [sys.executable, "jobs/embed.py", *argv, "--master", master, *SAME_AS_FIXTURE]
    # Its own session: a `kill` fault SIGKILLs the run's process group, never the test runner.
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, start_new_session=True
    )


def table(spark, path: str) -> dict[int, list[float]]:
    return {r[0]: list(r[1]) for r in spark.read.format("delta").load(path).collect()}


def outputs(spark, out: str) -> dict[str, dict[int, list[float]]]:
    return {name: table(spark, f"{out}/{name}") for name in ("pin_embeddings", "board_embeddings")}


def write_inputs(root) -> tuple[dict[str, str], str]:
    """The graph's tables under `root`/in and its checkpoint `root`/m.pt: the same every time."""
    paths = write_graph(small_graph(seed=5), str(root / "in"), with_boards=False)
    return paths, write_checkpoint(str(root / "m.pt"), seed=3)


@pytest.fixture
def graph(tmp_path):
    return write_inputs(tmp_path)


@pytest.fixture(scope="module")
def reference(spark, tmp_path_factory) -> str:
    """The output root of one undisturbed run over `graph`'s inputs, made once for the module."""
    root = tmp_path_factory.mktemp("reference")
    paths, ckpt = write_inputs(root)
    run(spark, parse_args(embed_argv(paths, ckpt, f"{root}/out")), read_checkpoint(ckpt))
    return f"{root}/out"


def test_a_python_worker_killed_in_a_projection_stage_is_retried_to_the_same_output(
    spark, tmp_path, graph, reference
):
    paths, ckpt = graph
    markers = tmp_path / "markers"
    markers.mkdir()
    out = str(tmp_path / "faulty")
    # local[2,4]: two cores, a task may fail up to 4 times, as on a cluster.
    done = embed_process(embed_argv(paths, ckpt, out), f"project:1:crash:{markers}", "local[2,4]")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (markers / "project-1").exists(), "the fault was never injected"
    assert "Python worker exited unexpectedly" in done.stderr or "crashed" in done.stderr.lower()
    assert outputs(spark, out) == outputs(spark, reference)


def test_a_run_dying_in_layer_2_leaves_the_outputs_intact_and_resume_reuses_layer_1(
    spark, tmp_path, graph, reference
):
    paths, ckpt = graph
    out = str(tmp_path / "out")
    older = write_checkpoint(str(tmp_path / "older.pt"), seed=8)
    run(spark, parse_args(embed_argv(paths, older, out)), read_checkpoint(older))
    before = outputs(spark, out)
    versions = {name: last_commit(spark, f"{out}/{name}")["version"] for name in before}

    failed = embed_process(embed_argv(paths, ckpt, out), "pool:2:fail", "local[2]")
    assert failed.returncode != 0
    assert "injected failure in pool of layer 2" in failed.stderr
    assert outputs(spark, out) == before
    assert {name: last_commit(spark, f"{out}/{name}")["version"] for name in before} == versions

    report = run(spark, parse_args(embed_argv(paths, ckpt, out) + ["--resume"]), read_checkpoint(ckpt))
    assert [layer.projections for layer in report.layers] == ["resumed", "broadcast, with the neighbor rows"]
    assert outputs(spark, out) == outputs(spark, reference)
    assert not os.path.exists(f"{out}/_work"), "a finished run removes its work tables"


def test_resume_recomputes_layers_when_an_input_changed(spark, tmp_path, graph):
    paths, ckpt = graph
    out = str(tmp_path / "out")
    failed = embed_process(embed_argv(paths, ckpt, out), "pool:2:fail", "local[2]")
    assert failed.returncode != 0 and os.listdir(f"{out}/_work")

    changed = small_graph(seed=5)
    changed.pins = {p: [x + 1.0 for x in v] for p, v in changed.pins.items()}
    paths = write_graph(changed, str(tmp_path / "in"), with_boards=False)  # same paths, new files
    report = run(spark, parse_args(embed_argv(paths, ckpt, out) + ["--resume"]), read_checkpoint(ckpt))
    assert "resumed" not in [layer.projections for layer in report.layers]
    fresh = str(tmp_path / "fresh")
    run(spark, parse_args(embed_argv(paths, ckpt, fresh)), read_checkpoint(ckpt))
    assert outputs(spark, out) == outputs(spark, fresh)


def test_outputs_record_the_run_the_checkpoint_and_the_input_versions(spark, tmp_path, graph):
    paths, ckpt = graph
    delta_pins = str(tmp_path / "pins_delta")
    pins = spark.read.parquet(paths["pins"])
    pins.write.format("delta").save(delta_pins)
    spark.read.format("delta").load(delta_pins).write.format("delta").mode("overwrite").save(
        delta_pins
    )  # version 1, the same rows
    paths = {**paths, "pins": delta_pins}
    out = str(tmp_path / "out")
    report = run(spark, parse_args(embed_argv(paths, ckpt, out)), read_checkpoint(ckpt))

    sha = hashlib.sha256(pathlib.Path(ckpt).read_bytes()).hexdigest()
    for name in ("pin_embeddings", "board_embeddings"):
        meta = last_commit(spark, f"{out}/{name}")["metadata"]
        assert meta["run_id"] == report.run_id
        assert meta["checkpoint_sha256"] == sha
        # Paths as Hadoop resolves them, so the record holds from any working directory.
        assert meta["inputs"]["pins"] == {"path": f"file:{delta_pins}", "format": "delta", "version": 1}
        assert meta["inputs"]["edges"]["path"] == f"file:{paths['edges']}"
        assert meta["software"] == {
            "pinsage_spark": "0.1.0",
            "git_commit": meta["software"]["git_commit"],
            "spark": spark.version,
            "delta": "4.4.0",
        }
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", meta["software"]["git_commit"])
        edges = meta["inputs"]["edges"]
        assert edges["format"] == "parquet" and edges["files"] == 1
        assert edges["bytes"] == os.path.getsize(f"{paths['edges']}/part-00000.parquet")
        assert set(meta["inputs"]) == {"pins", "edges", "board_neighbors", "pin_neighbors"}


# Where the crash harness kills a run (PINSAGE_INJECT_FAULT=<step>:<k>:kill, the run's whole process
# group SIGKILLed): between the input checks, in the middle of layer 1's writes (an executor of the
# pooling stage), and between the two published tables. A run failing in layer 2's pooling is
# test_a_run_dying_in_layer_2_leaves_the_outputs_intact_and_resume_reuses_layer_1.
KILL_POINTS = [("validate", 0), ("pool", 1), ("publish", 1)]


def delta_rows(path: str) -> tuple[int, str, dict[int, tuple[float, ...]]]:
    """A table as an independent Delta reader (delta-rs) sees it: version, the writing run's id, rows."""
    from deltalake import DeltaTable

    table = DeltaTable(path)
    run_id = json.loads(table.history(1)[0]["userMetadata"])["run_id"]
    rows = table.to_pyarrow_table().to_pylist()
    return (
        table.version(),
        run_id,
        {r[k]: tuple(r["embedding"]) for r in rows for k in r if k.endswith("_id")},
    )


def test_a_run_killed_at_any_step_leaves_consistent_tables_and_a_resumed_rerun_the_undisturbed_result(
    spark, tmp_path, graph, reference
):
    paths, ckpt = graph
    names = ("board_embeddings", "pin_embeddings")  # in publishing order
    out = str(tmp_path / "out")
    older = write_checkpoint(str(tmp_path / "older.pt"), seed=8)
    run(spark, parse_args(embed_argv(paths, older, out)), read_checkpoint(older))
    before = {name: delta_rows(f"{out}/{name}") for name in names}
    undisturbed = {name: delta_rows(f"{reference}/{name}")[2] for name in names}

    # Every run after the first takes over the lease the killed one left (timeout 1 s < Spark's start).
    argv = embed_argv(paths, ckpt, out) + ["--resume", "--lease-timeout", "1"]
    for step, k in KILL_POINTS:
        killed = embed_process(argv, f"{step}:{k}:kill", "local[2]")
        assert killed.returncode == -9, killed.stderr[-3000:]
        assert os.listdir(f"{out}/_lease"), "a killed run leaves its lease behind"
        now = {name: delta_rows(f"{out}/{name}") for name in names}
        if step == "publish":  # the boards are this run's, the pins still the older run's
            assert now["board_embeddings"][0] == before["board_embeddings"][0] + 1
            assert now["board_embeddings"][2] == undisturbed["board_embeddings"]
            assert now["pin_embeddings"] == before["pin_embeddings"]
        else:
            assert now == before, f"killed at {step} {k}"

    rerun = embed_process(argv, "", "local[2]")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "taking over the lease" in rerun.stderr
    after = {name: delta_rows(f"{out}/{name}") for name in names}
    assert {name: rows for name, (_, _, rows) in after.items()} == undisturbed  # bit-identical
    assert after["board_embeddings"][1] == after["pin_embeddings"][1]  # one run's tables
    assert not os.path.exists(f"{out}/_work") and not os.path.exists(f"{out}/_lease")
