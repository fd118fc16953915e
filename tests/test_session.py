"""The session factory's stop: a stopped local session's JVM exits, and a new session can start."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = """
import psutil
from pyspark import SparkContext
from jobs.lib.session import get_spark, stop_spark

spark = get_spark("stop-test", "local[1]", {"spark.ui.enabled": "false"})
jvm = SparkContext._gateway.proc.pid
assert spark.range(3).count() == 3
stop_spark(spark)
assert not psutil.pid_exists(jvm) or psutil.Process(jvm).status() == psutil.STATUS_ZOMBIE, "JVM still up"
again = get_spark("stop-test", "local[1]", {"spark.ui.enabled": "false"})
assert SparkContext._gateway.proc.pid != jvm
assert again.range(5).count() == 5
stop_spark(again)
print("ok")
"""


def test_stop_spark_lets_a_local_jvm_exit_and_a_new_session_start_after_it():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
