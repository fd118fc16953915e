"""The one SparkSession factory: Delta Lake on, local-mode defaults when not under spark-submit."""

from __future__ import annotations

import os
import subprocess
import sys

from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

# Sized for a laptop; a cluster run under spark-submit keeps whatever spark-submit was given.
LOCAL_DEFAULTS = {
    "spark.driver.memory": "4g",
    # A broadcast projection table is collected to the driver first; Spark's default limit on
    # collected results (1g) would cap the automatic broadcast bound below what 4g holds.
    "spark.driver.maxResultSize": "2g",
    "spark.sql.shuffle.partitions": "8",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.adaptive.enabled": "true",
    "spark.log.structuredLogging.enabled": "false",
    # Delta's VACUUM lists a table's files in this many tasks (Spark's default, 10,000, is sized
    # for a cluster's file listing; on a laptop it turns a small table's VACUUM into minutes).
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "8",
}


def under_spark_submit() -> bool:
    """True when spark-submit started this Python process (it hands over the JVM gateway)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def ivy_dir() -> str:
    """Where Spark's resolver keeps the Delta JARs: inside the active virtual environment."""
    return os.environ.get("PINSAGE_IVY_DIR", os.path.join(sys.prefix, "ivy2"))


def delta_package() -> str:
    """The Maven coordinate of the Delta JAR matching the installed delta-spark and pyspark."""
    return configure_spark_with_delta_pip(SparkSession.builder)._options["spark.jars.packages"]


def _manifest() -> str:
    return os.path.join(ivy_dir(), delta_package().replace(":", "_") + ".jars")


def _resolved_jars() -> str | None:
    """The JARs that setup resolved for delta_package(), if all are still on disk."""
    try:
        with open(_manifest()) as f:
            jars = f.read().split()
    except OSError:
        return None
    if jars and all(os.path.exists(j.removeprefix("file:")) for j in jars):
        return ",".join(jars)
    return None


def get_spark(app_name: str, master: str | None = None, conf: dict[str, str] | None = None) -> SparkSession:
    """Get or create the session.

    Under spark-submit the master, resources and JARs come from the command line (pass the Delta
    package with --packages, see README.md). Run with plain `python`, the job starts Spark in local
    mode (`master`, default local[*]) with the Delta JARs: those `make setup` resolved from Maven
    Central into ivy_dir() when present, else resolved now through spark.jars.packages.
    """
    builder = SparkSession.builder.appName(app_name)
    if master is not None or not under_spark_submit():
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(master or "local[*]").config("spark.jars.ivy", ivy_dir())
        for key, value in LOCAL_DEFAULTS.items():
            builder = builder.config(key, value)
        jars = _resolved_jars()
        builder = builder.config("spark.jars", jars) if jars else configure_spark_with_delta_pip(builder)
    for key, value in {**DELTA_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if master is not None or not under_spark_submit():
        spark.sparkContext.setLogLevel(os.environ.get("PINSAGE_SPARK_LOG_LEVEL", "WARN"))
    return spark


def stop_spark(spark: SparkSession) -> None:
    """Stop the session and, when this process launched the JVM (plain `python`), let the JVM exit.

    `SparkSession.stop()` alone leaves the JVM running with its heap (1-2 GiB resident) until Python
    exits; the trainer reads its inputs with Spark and then trains for hours without it. Under
    spark-submit the JVM is the parent process and is left alone. A later get_spark starts a new one."""
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if proc is None:
        return
    gateway.shutdown()
    SparkContext._gateway = None
    SparkContext._jvm = None
    proc.stdin.close()  # the gateway server exits when its stdin reaches end of file
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


if __name__ == "__main__":
    # `python -m jobs.lib.session` resolves the Delta JARs once (used by `make setup`) and prints the
    # coordinate to pass to spark-submit --packages.
    os.makedirs(ivy_dir(), exist_ok=True)
    if os.path.exists(_manifest()):
        os.remove(_manifest())
    spark = get_spark("pinsage-setup", "local[1]")
    spark.range(1).write.format("delta").mode("overwrite").save(os.path.join(ivy_dir(), "smoke-delta"))
    with open(_manifest(), "w") as f:
        f.write("\n".join(spark.sparkContext.getConf().get("spark.jars").split(",")))
    print(f"Spark {spark.version} ready with Delta ({delta_package()}); JARs listed in {_manifest()}")
    spark.stop()
