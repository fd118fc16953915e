"""Reclaim storage under an output root: old table versions and the work folders of failed runs.

    spark-submit jobs/retention.py --root ROOT --older-than-days N [--dry-run]

Takes the root's lease like any job that writes (so it exits 3, touching nothing, while a run
writes ROOT), then VACUUMs every Delta table under ROOT (ROOT/<table> and ROOT/<folder>/<table>)
keeping every version of the last N days readable, and deletes the entries of ROOT/_work (work
folders of failed runs, kept for --resume) whose newest file is older than N days. Delta refuses a
VACUUM under 7 days unless spark.databricks.delta.retentionDurationCheck.enabled=false is given
with --conf.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from jobs.lib.cli import CommonArgs, add_common_args, job_args, positive, spark_job_main
from jobs.lib.io import delete_path, delta_tables_under, entries_older_than, table_version, vacuum_delta
from jobs.lib.report import Report

log = logging.getLogger("pinsage.retention")


@dataclass(frozen=True)
class RetentionArgs:
    root: str
    older_than_days: float
    dry_run: bool = False
    common: CommonArgs = CommonArgs()


def parse_args(argv: list[str] | None = None) -> RetentionArgs:
    p = argparse.ArgumentParser(description="Vacuum old table versions and old work folders under a root.")
    p.add_argument("--root", required=True, help="an output root (--out of embed, neighborhoods, ...)")
    p.add_argument("--older-than-days", type=positive, required=True, help="keep what is newer than this")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    add_common_args(p, work_tables=False)
    a = p.parse_args(argv)
    return job_args(RetentionArgs, p, a, root=a.root.rstrip("/"))


@dataclass
class RetentionReport(Report):
    root: str
    vacuumed: dict[str, int] = field(default_factory=dict)  # table -> its latest version, kept
    work_removed: list[str] = field(default_factory=list)
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would vacuum" if self.dry_run else "vacuumed"
        lines = [f"{verb} {name} (latest version {v})" for name, v in self.vacuumed.items()]
        verb = "would remove" if self.dry_run else "removed"
        return [f"retention under {self.root}:", *lines, *(f"{verb} {p}" for p in self.work_removed)]


def run(spark: SparkSession, args: RetentionArgs) -> RetentionReport:
    report = RetentionReport(args.root, dry_run=args.dry_run)
    hours = args.older_than_days * 24
    with report.timed("vacuum"):
        for path in delta_tables_under(spark, args.root):
            report.vacuumed[path] = table_version(spark, path)
            if not args.dry_run:
                vacuum_delta(spark, path, hours)
    with report.timed("work"):
        cutoff_ms = int((time.time() - hours * 3600) * 1000)
        report.work_removed = entries_older_than(spark, f"{args.root}/_work", cutoff_ms)
        if not args.dry_run:
            for path in report.work_removed:
                delete_path(spark, path)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return spark_job_main("pinsage-retention", args, run, writes=args.root)


if __name__ == "__main__":
    sys.exit(main())
