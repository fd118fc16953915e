"""Make a finished run's embeddings the current ones.

    spark-submit jobs/publish.py --source ROOT/runs/DS --target ROOT/current

Copies SOURCE/board_embeddings, then SOURCE/pin_embeddings, to TARGET, one Delta overwrite commit
per table; each target commit carries the source commit's userMetadata plus `published_from` (the
source table's path) and `source_version` (the version copied). Both sources are checked before
anything is written: when one is missing or not a Delta table the job exits with status 2 and
TARGET is untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql.types import StructType

from jobs.lib.cli import job_main, spark_conf
from jobs.lib.io import InputError, is_delta, path_exists, write_delta
from jobs.lib.session import get_spark
from schemas.tables import BOARD_EMBEDDINGS, PIN_EMBEDDINGS

log = logging.getLogger("pinsage.publish")

# pin_embeddings last: consumers read it as the signal that a publish is complete, so when it
# changes, the boards of the same run are already in place.
TABLES = {"board_embeddings": BOARD_EMBEDDINGS, "pin_embeddings": PIN_EMBEDDINGS}


@dataclass(frozen=True)
class PublishArgs:
    source: str
    target: str
    master: str | None = None
    conf: dict[str, str] = field(default_factory=dict)
    report_json: str | None = None


def parse_args(argv: list[str] | None = None) -> PublishArgs:
    p = argparse.ArgumentParser(description="Publish a run's embedding tables as the current ones.")
    p.add_argument("--source", required=True, help="a finished run's output root (ROOT/runs/DS)")
    p.add_argument("--target", required=True, help="the published root (ROOT/current)")
    p.add_argument("--master", help="Spark master when run with python (default local[*])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf")
    p.add_argument("--report-json", help="also write the run report as JSON to this local file")
    a = p.parse_args(argv)
    conf = spark_conf(p, a.conf)
    source, target = a.source.rstrip("/"), a.target.rstrip("/")
    if source == target:
        p.error("--source and --target must differ")
    return PublishArgs(source, target, a.master, conf, a.report_json)


@dataclass
class PublishReport:
    source: str
    target: str
    tables: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    def render(self) -> str:
        lines = [f"published {self.source} to {self.target}"]
        for name, t in self.tables.items():
            lines.append(
                f"{name}: {t['rows']:,} rows, source version {t['source_version']} -> Delta version "
                f"{t['version']} at {t['path']}"
            )
        lines.append(f"time: {self.seconds:.1f}s")
        return "\n".join(lines)


def source_commit(spark: SparkSession, name: str, path: str, schema: StructType) -> dict:
    """The source table's latest version and that commit's userMetadata; InputError unless `path`
    is a Delta table with the output columns of `schema`."""
    if not path_exists(spark, path):
        raise InputError(name, None, f"path {path} does not exist: the run has not written it")
    if not is_delta(spark, path):
        raise InputError(name, None, f"{path} is not a Delta table")
    from delta.tables import DeltaTable

    table = DeltaTable.forPath(spark, path)
    stored = {f.name: f.dataType.simpleString() for f in table.toDF().schema.fields}
    for expected in schema.fields:
        found = stored.get(expected.name)
        if found != expected.dataType.simpleString():
            problem = "missing" if found is None else f"is {found}"
            raise InputError(name, expected.name, f"{problem}, expected {expected.dataType.simpleString()}")
    row = table.history(1).collect()[0]
    raw = row["userMetadata"]
    try:
        metadata = json.loads(raw) if raw else {}
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):  # written by something other than these jobs: keep it verbatim
        metadata = {"source_user_metadata": raw}
    return {"version": int(row["version"]), "metadata": metadata}


def run(spark: SparkSession, args: PublishArgs) -> PublishReport:
    started = time.perf_counter()
    report = PublishReport(args.source, args.target)
    # Every source is checked before the first write, so a refused publish leaves TARGET as it was.
    commits = {name: source_commit(spark, name, f"{args.source}/{name}", s) for name, s in TABLES.items()}
    for name in TABLES:
        source, commit = f"{args.source}/{name}", commits[name]
        spark.sparkContext.setJobDescription(f"publish {name} from {source}")
        # Read at the version whose metadata is recorded, even if the source gains a commit meanwhile.
        df = spark.read.format("delta").option("versionAsOf", commit["version"]).load(source)
        metadata = {**commit["metadata"], "published_from": source, "source_version": commit["version"]}
        path = f"{args.target}/{name}"
        version = write_delta(df, path, metadata)
        rows = spark.read.format("delta").option("versionAsOf", version).load(path).count()
        report.tables[name] = {
            "path": path, "version": version, "rows": rows, "source": source,
            "source_version": commit["version"],
        }  # fmt: skip
        log.info("published %s: %d rows from %s version %d", name, rows, source, commit["version"])
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return job_main(lambda: run(get_spark("pinsage-publish", args.master, args.conf), args), args.report_json)


if __name__ == "__main__":
    sys.exit(main())
