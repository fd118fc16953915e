from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys

import pyspark
import pytest

from jobs.lib.session import get_spark

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Every JVM the tests start (this session's, and those of the `python jobs/...`, spark-submit and
# Airflow runs they launch, which inherit the environment) handles small graphs for seconds to
# minutes: the quick JIT tier and the serial collector leave the two cores to the work instead of to
# C2 compilation and parallel GC threads. The jobs themselves keep the JVM's defaults.
JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
os.environ.setdefault("SPARK_SUBMIT_OPTS", JVM_OPTIONS)
os.environ.setdefault("SPARK_DAEMON_JAVA_OPTS", JVM_OPTIONS)

# What a Spark and Delta run loads, for the class archive below: the suite starts dozens of fresh
# JVMs (each `python jobs/...`, spark-submit and Airflow task), and each would otherwise parse and
# verify Spark's classes again (about 8 of a small job's 36 CPU seconds on this project's 2-core machine).
ARCHIVE_WORKLOAD = """
import tempfile
from jobs.lib.session import get_spark, stop_spark
spark = get_spark("class-archive", "local[2]", {"spark.ui.enabled": "false"})
path = tempfile.mkdtemp() + "/t"
df = spark.range(100).selectExpr("id AS pin_id", "array(cast(id AS float)) AS v")
df.write.format("delta").save(path)
spark.read.format("delta").load(path).mapInArrow(lambda batches: batches, df.schema).groupBy(
    "pin_id").count().collect()
spark.read.format("delta").load(path).toArrow()
stop_spark(spark)
"""


# A JVM that cannot use the archive (another class path) says so on stderr unless told not to.
QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def class_archive() -> pathlib.Path | None:
    """A JDK class-data-sharing archive of the classes a Spark and Delta run loads, dumped once per
    JDK and pyspark into .venv (ignored by git); None if the JVM cannot dump one within 5 minutes.
    A JVM whose class path differs from the dump's ignores it and loads classes as usual: the
    logging options keep that silent."""
    java_home = os.environ.get("JAVA_HOME", "")
    key = hashlib.sha256(f"{sys.prefix}|{java_home}|{pyspark.__version__}".encode()).hexdigest()[:12]
    archive = pathlib.Path(sys.prefix) / "jvm-class-archive" / f"spark-{key}.jsa"
    if not archive.exists():
        archive.parent.mkdir(exist_ok=True)
        partial = archive.with_suffix(f".{os.getpid()}.part")
        opts = f"{JVM_OPTIONS} -XX:ArchiveClassesAtExit={partial} {QUIET_CDS}"
        env = {**os.environ, "SPARK_SUBMIT_OPTS": opts}
        try:
            subprocess.run(
                [sys.executable, "-c", ARCHIVE_WORKLOAD], cwd=ROOT, env=env, capture_output=True, timeout=300
            )
        except subprocess.TimeoutExpired:
            return None
        if not partial.exists():
            return None
        partial.replace(archive)
    return archive


def pytest_configure(config):
    # Once, in the process that starts xdist's workers (they inherit the environment) or in a run
    # without workers; only when the JVM options were not set from outside.
    if hasattr(config, "workerinput") or os.environ["SPARK_SUBMIT_OPTS"] != JVM_OPTIONS:
        return
    archive = class_archive()
    if archive is not None:
        shared = f" -XX:SharedArchiveFile={archive} {QUIET_CDS}"
        os.environ["SPARK_SUBMIT_OPTS"] += shared
        os.environ["SPARK_DAEMON_JAVA_OPTS"] += shared


@pytest.fixture(scope="session")
def spark():
    session = get_spark(
        "pinsage-tests",
        "local[2]",
        {
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "2g",
        },
    )
    yield session
    session.stop()


# Modules that take a minute or more of one worker, slowest first: `make test` hands whole modules to
# its two workers in collection order (--dist loadfile --no-loadscope-reorder), so starting these
# first keeps one worker from finishing a long module alone at the end.
SLOWEST_MODULES = (
    "test_embed_new.py",
    "test_recovery.py",
    "test_airflow.py",
    "test_equivalence.py",
    "test_neighborhoods.py",
    "test_evaluate.py",
    "test_fuzz.py",
    "test_related.py",
    "test_golden.py",
    "test_cluster.py",
    "test_retention.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: module order kept
