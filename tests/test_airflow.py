"""The nightly DAG under a real Airflow: a temporary SQLite metadata DB, the DagBag of airflow_dags/,
runs with `dag.test()`. The wiring tests hand the tasks to a stand-in `spark-submit` that records
its command line; the end-to-end test submits the real jobs to Spark local mode."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import sys
from datetime import datetime, timedelta, timezone
from shlex import split
from unittest import mock

import numpy as np
import pyspark
import pytest

from jobs.lib.session import _resolved_jars, delta_package
from tests.graphs import small_graph, write_checkpoint, write_graph

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("airflow") is None, reason='needs the "airflow" extra: pip install ".[airflow]"'
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
DAGS = ROOT / "airflow_dags"
SPARK_BIN = pathlib.Path(pyspark.__file__).parent / "bin"
DATE = datetime(2026, 3, 1, tzinfo=timezone.utc)
CONN_ID = "pinsage_test_spark"
GRAPH = {
    "settings": {"neighbors", "embed", "evaluate", "related", "publish"},
    "neighbors": {"embed"},
    "embed": {"evaluate", "related"},
    "evaluate": {"publish"},
    "related": {"publish"},
    "publish": set(),
}


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    """Airflow configured through the environment before its first import, on a fresh SQLite DB."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "PATH": f"{SPARK_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    # Importing Airflow sets up the root logger (INFO, a stream handler); later tests in this
    # process get it back as they expect it.
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    with mock.patch.dict(os.environ, env):
        from airflow.utils import db

        db.initdb()
        yield home
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture(scope="module")
def nightly(airflow_home):
    """The DAG as the scheduler's DagBag loads it, and the DAG file as a module (for plan_run)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    spec = importlib.util.spec_from_file_location("pinsage_nightly_module", DAGS / "pinsage_nightly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return bag, module


def run_dag(conf: dict, retry_delay: timedelta = timedelta(0), mark_success: str | None = None):
    """One dag.test() run of the logical date DATE; a retry is due at once instead of in minutes.

    The DAG is parsed afresh for every run, as a worker does: dag.test() runs the tasks in this
    process and leaves each operator holding the arguments it rendered."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS)).get_dag("pinsage_nightly")
    for t in dag.tasks:
        t.retry_delay = retry_delay
    run = dag.test(logical_date=DATE, run_conf=conf, mark_success_pattern=mark_success)
    return run, {ti.task_id: ti for ti in run.get_task_instances()}


def test_the_dag_folder_imports_without_errors_and_holds_one_dag(nightly):
    bag, _ = nightly
    assert bag.import_errors == {}
    assert bag.dag_ids == ["pinsage_nightly"]
    dag = bag.get_dag("pinsage_nightly")
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.doc_md and "runs/{date}" in dag.doc_md
    assert "new task history" in dag.doc_md
    assert dag.default_args["retries"] == 2
    assert all(t.retries == 2 for t in dag.tasks)


def test_the_task_graph_is_the_documented_one(nightly):
    dag = nightly[0].get_dag("pinsage_nightly")
    assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == GRAPH
    assert dag.get_task("publish").trigger_rule == "none_failed"
    assert {t.task_id for t in dag.tasks if t.task_type == "PinSageSubmit"} == GRAPH.keys() - {"settings"}


def test_the_delta_package_matches_the_installed_spark_and_delta(nightly):
    assert nightly[1].DELTA_PACKAGE == delta_package()


SETTINGS = {
    "pins": "s3://b/pins",
    "edges": "s3://b/edges",
    "checkpoint": "/models/pinsage.pt",
    "output_root": "s3://b/pinsage/",
    "jobs_dir": "/opt/pinsage/jobs",
}


def test_the_plan_writes_under_the_run_date_and_publishes_to_current(nightly):
    plan = nightly[1].plan_run(SETTINGS, "2026-03-01")
    run = "s3://b/pinsage/runs/2026-03-01"
    assert plan["neighbors_args"] == split(f"--edges s3://b/edges --pins s3://b/pins --out {run}/neighbors")
    assert plan["embed_args"] == split(
        f"--pins s3://b/pins --edges s3://b/edges --board-neighbors {run}/neighbors/board_neighbors "
        f"--pin-neighbors {run}/neighbors/pin_neighbors --checkpoint /models/pinsage.pt --out {run} --resume"
    )
    assert plan["evaluate_args"] == []
    assert plan["related_args"] == split(f"--embeddings {run}/pin_embeddings --out {run}")
    assert plan["publish_args"] == ["--source", run, "--target", "s3://b/pinsage/current"]
    assert plan["embed_application"] == "/opt/pinsage/jobs/embed.py"


def test_optional_settings_add_their_flags(nightly):
    sha = "0f" * 32
    plan = nightly[1].plan_run(
        {
            **SETTINGS,
            "boards": "s3://b/boards",
            "checkpoint_sha256": sha,
            "pairs": "s3://b/pairs",
            "walks": {"walks_per_node": 30, "top_t": 10},
            "spark_conf": {"spark.executor.cores": 4},
        },
        "2026-03-01",
    )
    run = "s3://b/pinsage/runs/2026-03-01"
    assert plan["neighbors_args"] == split(
        f"--edges s3://b/edges --pins s3://b/pins --boards s3://b/boards --walks-per-node 30 --top-t 10 "
        f"--out {run}/neighbors"
    )
    assert plan["embed_args"][4:6] == ["--boards", "s3://b/boards"]
    assert plan["embed_args"][-5:] == ["--checkpoint-sha256", sha, "--out", run, "--resume"]
    assert plan["evaluate_args"] == split(
        f"--embeddings {run}/pin_embeddings --pairs s3://b/pairs --out {run}/evaluation"
    )
    assert plan["conf"] == {"spark.executor.cores": "4"}


def test_every_planned_command_line_is_accepted_by_its_job(nightly):
    import jobs.embed
    import jobs.evaluate
    import jobs.neighborhoods
    import jobs.publish
    import jobs.related

    plan = nightly[1].plan_run(
        {
            **SETTINGS,
            "boards": "s3://b/boards",
            "checkpoint_sha256": "0f" * 32,
            "pairs": "s3://b/pairs",
            "walks": {
                "walks_per_node": 30,
                "walk_length": 4,
                "restart_prob": 0.5,
                "top_t": 10,
                "seed": 7,
                "walks_per_batch": 15,
            },
            "related": {"method": "ann", "top_k": 20, "lists": 64, "probes": 4, "sample": 1000, "seed": 3},
        },
        "2026-03-01",
    )
    run = "s3://b/pinsage/runs/2026-03-01"
    walk = jobs.neighborhoods.parse_args(plan["neighbors_args"])
    assert (walk.out, walk.boards, walk.walks_per_batch) == (f"{run}/neighbors", "s3://b/boards", 15)
    assert (walk.params.walks_per_node, walk.params.walk_length, walk.params.restart_prob) == (30, 4, 0.5)
    assert (walk.params.top_t, walk.params.seed) == (10, 7)
    embed = jobs.embed.parse_args(plan["embed_args"])
    assert (embed.out, embed.boards, embed.checkpoint_sha256) == (run, "s3://b/boards", "0f" * 32)
    assert jobs.evaluate.parse_args(plan["evaluate_args"]).pairs == "s3://b/pairs"
    assert jobs.publish.parse_args(plan["publish_args"]).target == "s3://b/pinsage/current"
    related = jobs.related.parse_args(plan["related_args"])
    assert (related.out, related.method, related.top_k, related.lists, related.probes) == (
        run,
        "ann",
        20,
        64,
        4,
    )
    assert (related.sample, related.seed, related.embeddings) == (1000, 3, f"{run}/pin_embeddings")
    for task_id, module in (
        ("neighbors", jobs.neighborhoods),
        ("embed", jobs.embed),
        ("evaluate", jobs.evaluate),
        ("related", jobs.related),
        ("publish", jobs.publish),
    ):
        assert plan[f"{task_id}_application"] == f"/opt/pinsage/jobs/{os.path.basename(module.__file__)}"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pins": None}, "setting 'pins' is not set: pass the param or set Variable pinsage_pins"),
        ({"checkpoint_sha256": "abc"}, "setting 'checkpoint_sha256' must be 64 hex digits"),
        ({"spark_conf": ["a=b"]}, "setting 'spark_conf' must be a JSON object"),
        ({"walks": {"walks": 3}}, "setting 'walks' must be a JSON object with keys among walks_per_node"),
        ({"related": {"k": 3}}, "setting 'related' must be a JSON object with keys among top_k"),
    ],
)
def test_a_bad_setting_is_named(nightly, change, message):
    with pytest.raises(ValueError, match=message):
        nightly[1].plan_run({**SETTINGS, **change}, "2026-03-01")


@pytest.fixture
def fake_spark(tmp_path, monkeypatch):
    """A `spark-submit` first on PATH that records its arguments and exits with the status named
    for its job file in FAKE_SPARK_EXIT (0 otherwise)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "spark-submit"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "with open(os.environ['FAKE_SPARK_LOG'], 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "job = next(os.path.basename(a) for a in sys.argv if a.endswith('.py'))\n"
        "sys.exit(json.loads(os.environ.get('FAKE_SPARK_EXIT', '{}')).get(job, 0))\n"
    )
    script.chmod(0o755)
    log = tmp_path / "submits.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SPARK_LOG", str(log))

    def submits() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return submits


def wiring_conf(tmp_path, **extra) -> dict:
    return {
        "pins": "/data/pins",
        "edges": "/data/edges",
        "checkpoint": "/models/m.pt",
        "output_root": str(tmp_path / "out"),
        "spark_conn_id": CONN_ID,
        "spark_packages": "",
        "jobs_dir": "/opt/jobs",
        **extra,
    }


def test_with_pairs_evaluate_runs_before_publish(nightly, fake_spark, tmp_path):
    run, tis = run_dag(wiring_conf(tmp_path, pairs="/data/pairs"))

    assert run.state == "success"
    assert {k: ti.state for k, ti in tis.items()} == dict.fromkeys(GRAPH, "success")
    submits = fake_spark()
    names = [s[s.index("--name") + 1] for s in submits]
    assert names[:2] == ["pinsage-neighbors", "pinsage-embed"] and names[-1] == "pinsage-publish"
    assert sorted(names[2:4]) == ["pinsage-evaluate", "pinsage-related"]  # in either order
    evaluate = submits[names.index("pinsage-evaluate")]
    assert evaluate[evaluate.index("--master") + 1] == "local[2]"
    out = f"{tmp_path}/out/runs/2026-03-01"
    assert evaluate[evaluate.index("/opt/jobs/evaluate.py") :] == split(
        f"/opt/jobs/evaluate.py --embeddings {out}/pin_embeddings --pairs /data/pairs --out {out}/evaluation"
    )
    assert "--packages" not in evaluate


def test_without_pairs_evaluate_is_skipped_and_publish_still_runs(nightly, fake_spark, tmp_path):
    run, tis = run_dag(wiring_conf(tmp_path))

    assert run.state == "success"
    assert tis["evaluate"].state == "skipped"
    assert all(ti.state == "success" for k, ti in tis.items() if k != "evaluate")
    assert [os.path.basename(next(a for a in s if a.endswith(".py"))) for s in fake_spark()] == [
        "neighborhoods.py",
        "embed.py",
        "related.py",
        "publish.py",
    ]


@pytest.mark.parametrize(
    "status, tries",
    [(2, 1), (1, 3), (3, 3)],
    ids=["bad-input-not-retried", "other-failure-retried", "busy-output-retried"],
)
def test_a_failed_job_stops_the_run_and_only_bad_input_skips_the_retries(
    nightly, fake_spark, tmp_path, monkeypatch, status, tries
):
    monkeypatch.setenv("FAKE_SPARK_EXIT", json.dumps({"embed.py": status}))
    run, tis = run_dag(wiring_conf(tmp_path))

    assert run.state == "failed"
    assert tis["embed"].state == "failed" and tis["embed"].try_number == tries
    assert tis["evaluate"].state == tis["related"].state == tis["publish"].state == "upstream_failed"
    assert len(fake_spark()) == 1 + tries  # neighbors once, embed per try, never publish


def test_a_missing_required_setting_fails_before_any_submit(nightly, fake_spark, tmp_path):
    conf = wiring_conf(tmp_path)
    del conf["checkpoint"]
    run, tis = run_dag(conf)
    assert run.state == "failed" and tis["settings"].state == "failed"
    assert fake_spark() == []


def embeddings(spark, path: str) -> dict[int, np.ndarray]:
    return {r.pin_id: np.array(r.embedding) for r in spark.read.format("delta").load(path).collect()}


def commit(spark, path: str) -> tuple[int, dict]:
    from delta.tables import DeltaTable

    row = DeltaTable.forPath(spark, path).history(1).collect()[0]
    return row["version"], json.loads(row["userMetadata"])


def test_a_nightly_run_publishes_and_a_rerun_of_its_date_replaces_it(nightly, spark, tmp_path, monkeypatch):
    graph = small_graph(seed=5)
    paths = write_graph(graph, str(tmp_path / "in"), with_boards=False)
    out = tmp_path / "out"
    spark_conf = {
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.log.level": "WARN",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "2",
        "spark.databricks.delta.snapshotPartitions": "2",
        # Each job is a short-lived JVM on a small graph: the quick JIT tier costs far less CPU.
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    }
    # The first run takes everything from Variables, the rerun overrides the checkpoint by param.
    variables = {
        "pins": paths["pins"],
        "edges": paths["edges"],
        "output_root": str(out),
        "checkpoint": write_checkpoint(str(tmp_path / "a.pt"), seed=1),
        "spark_conn_id": CONN_ID,
        "spark_packages": "",
        "spark_jars": _resolved_jars(),
        "spark_conf": json.dumps(spark_conf),
        "walks": json.dumps({"walks_per_node": 5, "walk_length": 4, "walks_per_batch": 5}),
    }
    for name, value in variables.items():
        monkeypatch.setenv(f"AIRFLOW_VAR_PINSAGE_{name.upper()}", value)
    run_dir, current = f"{out}/runs/2026-03-01", f"{out}/current"

    first, tis = run_dag({})
    assert first.state == "success", {k: ti.state for k, ti in tis.items()}
    assert tis["evaluate"].state == "skipped"
    published = embeddings(spark, f"{current}/pin_embeddings")
    assert sorted(published) == sorted(graph.pins)
    norms = np.linalg.norm(np.stack(list(published.values())), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    run_version, run_meta = commit(spark, f"{run_dir}/pin_embeddings")
    version, meta = commit(spark, f"{current}/pin_embeddings")
    assert version == 0 and run_version == 0
    assert meta == {**run_meta, "published_from": f"file:{run_dir}/pin_embeddings", "source_version": 0}
    first_run_id = run_meta["run_id"]
    assert spark.read.format("delta").load(f"{current}/board_embeddings").count() == 8
    related = spark.read.format("delta").load(f"{current}/related_pins")
    assert related.select("pin_id").distinct().count() == len(graph.pins)
    assert commit(spark, f"{current}/related_pins")[1]["published_from"] == f"file:{run_dir}/related_pins"

    # The rerun re-embeds with another checkpoint; its walks would repeat the first run's exactly
    # (same edges and seed, see test_neighborhoods), so they are marked done to keep the test short.
    b = write_checkpoint(str(tmp_path / "b.pt"), seed=2)
    rerun, tis = run_dag({"checkpoint": b}, mark_success="neighbors")
    assert rerun.state == "success", {k: ti.state for k, ti in tis.items()}
    assert os.listdir(out / "runs") == ["2026-03-01"]
    replaced = embeddings(spark, f"{current}/pin_embeddings")
    assert sorted(replaced) == sorted(graph.pins)  # replaced, not appended
    assert max(np.abs(replaced[p] - published[p]).max() for p in published) > 0.01
    for name in ("pin_embeddings", "board_embeddings"):
        (run_version, run_meta), (version, meta) = (
            commit(spark, f"{run_dir}/{name}"),
            commit(spark, f"{current}/{name}"),
        )
        assert run_version == 1 and version == 1
        assert meta == {**run_meta, "published_from": f"file:{run_dir}/{name}", "source_version": 1}
        assert meta["run_id"] != first_run_id
