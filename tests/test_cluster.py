"""The same chain on a standalone Spark cluster: a master and two single-core workers started from
the pyspark distribution on loopback, the job handed over with spark-submit as a user would, with
the project shipped as a --py-files zip. With the same shuffle partitions and as many task slots as
local[2], its output must be bit-identical to local mode's."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import numpy as np
import pyspark
import pytest

from jobs.embed import parse_args, run
from jobs.lib.session import _resolved_jars
from pinsage_model.checkpoint import read_checkpoint
from tests.graphs import embed_argv, small_graph, write_checkpoint, write_graph

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPARK_HOME = pathlib.Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("cluster-logs")
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
    }
    port, ui = free_port(), free_port()
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    procs = [
        subprocess.Popen(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui),
            ],
            env=env,
            stdout=open(logs / "master.log", "w"),
            stderr=subprocess.STDOUT,
        )
    ]
    url = f"spark://127.0.0.1:{port}"
    for i in range(2):
        procs.append(
            subprocess.Popen(
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "1",
                    "--memory",
                    "2g",
                    "--webui-port",
                    str(free_port()),
                    "--work-dir",
                    str(logs / f"work{i}"),
                ],
                env=env,
                stdout=open(logs / f"worker{i}.log", "w"),
                stderr=subprocess.STDOUT,
            )
        )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=5) as r:
                    if len([w for w in json.load(r)["workers"] if w["state"] == "ALIVE"]) == 2:
                        break
            except (OSError, ValueError):  # not listening yet, or an empty page while the UI starts
                pass
            if time.time() > deadline:
                pytest.fail(
                    "the standalone cluster did not come up: " + (logs / "master.log").read_text()[-2000:]
                )
            time.sleep(1)
        yield url, env
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def project_zip(path: pathlib.Path) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for package in ("jobs", "pinsage_model", "schemas"):
            for file in sorted((ROOT / package).rglob("*.py")):
                z.write(file, file.relative_to(ROOT))
    return str(path)


def embeddings(spark, out: str) -> dict[int, list[float]]:
    return {
        r.pin_id: list(r.embedding)
        for r in spark.read.format("delta").load(f"{out}/pin_embeddings").collect()
    }


def test_spark_submit_on_a_standalone_cluster_matches_local_mode(spark, cluster, tmp_path):
    url, env = cluster
    paths = write_graph(small_graph(seed=21, board_dim=2), str(tmp_path / "in"), with_boards=True)
    ckpt = write_checkpoint(str(tmp_path / "m.pt"), num_layers=4, board_feature_dim=2)
    run(spark, parse_args(embed_argv(paths, ckpt, str(tmp_path / "local"))), read_checkpoint(ckpt))

    jars = _resolved_jars()
    assert jars, "make setup records the Delta JARs"
    submit = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--master",
        url,
        "--jars",
        jars,
        "--py-files",
        project_zip(tmp_path / "pinsage_spark.zip"),
        "--conf",
        f"spark.pyspark.python={sys.executable}",
        "--conf",
        "spark.sql.shuffle.partitions=4",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.databricks.delta.snapshotPartitions=2",
        # The executors' JVMs get the suite's JVM options (tests/conftest.py), as the driver and
        # the daemons do through the environment.
        "--conf",
        f"spark.executor.extraJavaOptions={os.environ['SPARK_SUBMIT_OPTS']}",
        "--executor-memory",
        "1g",
        str(ROOT / "jobs" / "embed.py"),
        *embed_argv(paths, ckpt, str(tmp_path / "cluster")),
    ]
    result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "output pin_embeddings: 30 rows" in result.stdout

    local, remote = embeddings(spark, str(tmp_path / "local")), embeddings(spark, str(tmp_path / "cluster"))
    assert sorted(local) == sorted(remote)
    worst = max(np.abs(np.array(local[p]) - np.array(remote[p])).max() for p in local)
    assert local == remote, f"cluster and local mode differ (by up to {worst})"
