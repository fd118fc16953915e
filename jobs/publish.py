"""Make a finished run's embeddings the current ones.

    spark-submit jobs/publish.py --source ROOT/runs/DS --target ROOT/current

Copies SOURCE/board_embeddings, then SOURCE/related_pins and the folder SOURCE/related_index when
the run has them (jobs/related.py), then SOURCE/pin_embeddings, to TARGET, one Delta overwrite commit
per table; each target commit carries the source commit's userMetadata plus `published_from` (the
source table's path, fully qualified) and `source_version` (the version copied). Both sources are
checked before anything is written: when one is missing or not a Delta table the job exits with
status 2 and TARGET is untouched.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql.types import StructType

from jobs.lib.cli import CommonArgs, add_common_args, job_args, spark_job_main
from jobs.lib.io import (
    InputError,
    committed_rows,
    copy_path,
    is_delta,
    json_object,
    last_commit,
    path_exists,
    qualified,
    read_delta,
    write_delta_commit,
)
from jobs.lib.report import Report
from schemas.tables import BOARD_EMBEDDINGS, PIN_EMBEDDINGS, RELATED_PINS

log = logging.getLogger("pinsage.publish")

# pin_embeddings last: consumers read it as the signal that a publish is complete, so when it
# changes, the boards of the same run are already in place.
TABLES = {"board_embeddings": BOARD_EMBEDDINGS, "pin_embeddings": PIN_EMBEDDINGS}
# Published when the run has them, after board_embeddings and before pin_embeddings; the index
# folder (jobs/related.py --method ann) is copied right after its table.
OPTIONAL_TABLES = {"related_pins": RELATED_PINS}
OPTIONAL_FOLDERS = {"related_pins": "related_index"}


@dataclass(frozen=True)
class PublishArgs:
    source: str
    target: str
    common: CommonArgs = CommonArgs()


def parse_args(argv: list[str] | None = None) -> PublishArgs:
    p = argparse.ArgumentParser(description="Publish a run's embedding tables as the current ones.")
    p.add_argument("--source", required=True, help="a finished run's output root (ROOT/runs/DS)")
    p.add_argument("--target", required=True, help="the published root (ROOT/current)")
    add_common_args(p, work_tables=False)
    a = p.parse_args(argv)
    source, target = a.source.rstrip("/"), a.target.rstrip("/")
    if source == target:
        p.error("--source and --target must differ")
    return job_args(PublishArgs, p, a, source=source, target=target)


@dataclass
class PublishReport(Report):
    source: str
    target: str
    tables: dict[str, dict] = field(default_factory=dict)

    def lines(self) -> list[str]:
        lines = [f"published {self.source} to {self.target}"]
        for name, t in self.tables.items():
            lines.append(
                f"{name}: {t['rows']:,} rows, source version {t['source_version']} -> Delta version "
                f"{t['version']} at {t['path']}"
            )
        return lines


def source_commit(spark: SparkSession, name: str, path: str, schema: StructType) -> dict:
    """The source table's latest version and that commit's userMetadata; InputError unless `path`
    is a Delta table with the output columns of `schema`."""
    if not path_exists(spark, path):
        raise InputError(name, None, f"path {path} does not exist: the run has not written it")
    if not is_delta(spark, path):
        raise InputError(name, None, f"{path} is not a Delta table")
    stored = {f.name: f.dataType.simpleString() for f in read_delta(spark, path).schema.fields}
    for expected in schema.fields:
        found = stored.get(expected.name)
        if found != expected.dataType.simpleString():
            problem = "missing" if found is None else f"is {found}"
            raise InputError(name, expected.name, f"{problem}, expected {expected.dataType.simpleString()}")
    commit = last_commit(spark, path)
    raw = commit["user_metadata"]
    metadata = json_object(raw) if raw else {}
    if metadata is None:  # written by something other than these jobs: keep it verbatim
        metadata = {"source_user_metadata": raw}
    return {"version": commit["version"], "metadata": metadata}


def run(spark: SparkSession, args: PublishArgs) -> PublishReport:
    report = PublishReport(args.source, args.target)
    with report.timed("publish"):
        # Every source is checked before the first write, so a refused publish leaves TARGET as it was.
        schemas = dict(TABLES)
        for name, schema in OPTIONAL_TABLES.items():
            if path_exists(spark, f"{args.source}/{name}"):
                schemas[name] = schema
        commits = {n: source_commit(spark, n, f"{args.source}/{n}", s) for n, s in schemas.items()}
        for name in sorted(schemas, key=lambda n: n == "pin_embeddings"):
            source, commit = f"{args.source}/{name}", commits[name]
            spark.sparkContext.setJobDescription(f"publish {name} from {source}")
            # Read at the version whose metadata is recorded, even if the source gains a commit meanwhile.
            df = read_delta(spark, source, commit["version"])
            metadata = {
                **commit["metadata"],
                "published_from": qualified(spark, source),
                "source_version": commit["version"],
            }
            path = f"{args.target}/{name}"
            written = write_delta_commit(df, path, metadata)
            rows = committed_rows(spark, path, written)
            report.tables[name] = {
                "path": path,
                "version": int(written["version"]),
                "rows": rows,
                "source": source,
                "source_version": commit["version"],
            }
            log.info("published %s: %d rows from %s version %d", name, rows, source, commit["version"])
            folder = OPTIONAL_FOLDERS.get(name)
            if folder and path_exists(spark, f"{args.source}/{folder}"):
                copy_path(spark, f"{args.source}/{folder}", f"{args.target}/{folder}")
                report.tables[name]["copied"] = folder
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return spark_job_main("pinsage-publish", args, run, writes=args.target)


if __name__ == "__main__":
    sys.exit(main())
