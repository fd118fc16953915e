"""What wrote a table: the project's version and git commit, and the Spark and Delta versions, as
recorded in every output commit (`software`), so a run can be reproduced with the same code."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess

from pyspark.sql import SparkSession

PACKAGE = "pinsage-spark"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.lru_cache(maxsize=1)
def project_version() -> dict[str, str | None]:
    """{"version", "git_commit"}: from jobs/_build_info.py when `make package` wrote it (a zip under
    spark-submit --py-files has no checkout), else the installed package's version and the commit
    of the checkout this code runs from (None when neither is known)."""
    try:
        from jobs import _build_info  # written by `make package`, not in git

        return {"version": _build_info.VERSION, "git_commit": _build_info.GIT_COMMIT}
    except ImportError:
        pass
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"version": version, "git_commit": git_commit(REPO)}


def git_commit(folder: str) -> str | None:
    """The commit checked out at `folder` (with `+dirty` when tracked files changed), or None."""
    if not os.path.exists(os.path.join(folder, ".git")):
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def delta_version(spark: SparkSession) -> str | None:
    """The Delta Lake version the JVM loaded (what writes the tables), else the Python package's."""
    try:
        return str(spark.sparkContext._jvm.io.delta.package.VERSION())
    except Exception:  # an older Delta without the constant
        try:
            return importlib.metadata.version("delta-spark")
        except importlib.metadata.PackageNotFoundError:
            return None


def software(spark: SparkSession) -> dict[str, str | None]:
    """The `software` entry of a run record."""
    return {
        "pinsage_spark": project_version()["version"],
        "git_commit": project_version()["git_commit"],
        "spark": spark.version,
        "delta": delta_version(spark),
    }
