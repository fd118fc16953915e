from __future__ import annotations

import os

import pytest

from jobs.lib.session import get_spark

# Every JVM the tests start (this session's, and those of the `python jobs/...`, spark-submit and
# Airflow runs they launch, which inherit the environment) handles small graphs for seconds to
# minutes: the quick JIT tier and the serial collector leave the two cores to the work instead of to
# C2 compilation and parallel GC threads. The jobs themselves keep the JVM's defaults.
JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
os.environ.setdefault("SPARK_SUBMIT_OPTS", JVM_OPTIONS)
os.environ.setdefault("SPARK_DAEMON_JAVA_OPTS", JVM_OPTIONS)


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
