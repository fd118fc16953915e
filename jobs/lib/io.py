"""Reading input tables and writing Delta tables: the only place that touches storage.

Jobs read and write through these functions only (no `.write.format(...)` or `.read.format(...)`
elsewhere), so every table is written in one commit and every work table is read back the same way.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession


class InputError(ValueError):
    """Bad input, named by table, column and problem."""

    def __init__(self, table: str, column: str | None, problem: str) -> None:
        self.table, self.column, self.problem = table, column, problem
        where = f"table '{table}'" + (f", column '{column}'" if column else "")
        super().__init__(f"{where}: {problem}")


# Checks run before every commit and every delete below (jobs.lib.lease registers the check that the
# run still holds the lease on the root it writes: fencing).
_FENCES: list[Callable[[], None]] = []


def add_fence(check: Callable[[], None]) -> None:
    _FENCES.append(check)


def remove_fence(check: Callable[[], None]) -> None:
    if check in _FENCES:
        _FENCES.remove(check)


def fence() -> None:
    """Raise unless every registered fence check passes (called before each commit and delete)."""
    for check in list(_FENCES):
        check()


def _fs_path(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def path_exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = _fs_path(spark, path)
    return bool(fs.exists(hpath))


def is_delta(spark: SparkSession, path: str) -> bool:
    return path_exists(spark, path.rstrip("/") + "/_delta_log")


def delete_path(spark: SparkSession, path: str) -> None:
    fence()
    fs, hpath = _fs_path(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def delete_work(spark: SparkSession, work: str) -> None:
    """Delete a run's work folder (ROOT/_work/<id>), and ROOT/_work too once no other run's is left."""
    delete_path(spark, work)
    fs, parent = _fs_path(spark, work.rstrip("/").rsplit("/", 1)[0])
    if fs.exists(parent) and fs.getContentSummary(parent).getFileCount() == 0:
        fs.delete(parent, True)


def read_table(spark: SparkSession, name: str, path: str, version: int | None = None) -> DataFrame:
    """A Delta table when `path` holds a _delta_log (at `version` when given), else Parquet. A path
    that cannot be read as either is an InputError naming the table and what is wrong: a _delta_log
    without commits, a file that is not Parquet, Parquet files that disagree on a column's type
    (every footer is read: Spark otherwise takes the schema from one file and fails mid-scan)."""
    if not path_exists(spark, path):
        raise InputError(name, None, f"path {path} does not exist")
    if is_delta(spark, path):
        if not _delta_commits(spark, path):
            raise InputError(
                name, None, f"{path}/_delta_log holds no commit (the write that created it died)"
            )
        fmt, reader = "delta", spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
    else:
        fmt, reader = "parquet", spark.read.format("parquet").option("mergeSchema", "true")
    try:
        return reader.load(path)
    except Exception as exc:  # AnalysisException, or a Py4JJavaError from the footer-reading job
        raise _storage_error(spark, name, path, fmt, exc) from None


def _delta_commits(spark: SparkSession, path: str) -> bool:
    fs, log_dir = _fs_path(spark, path.rstrip("/") + "/_delta_log")
    return any(
        status.getPath().getName().endswith((".json", ".checkpoint.parquet"))
        for status in fs.listStatus(log_dir)
    )


def data_files(spark: SparkSession, path: str) -> list:
    """The data files under `path` (Hadoop FileStatus), names starting with `_` or `.` skipped."""
    fs, hpath = _fs_path(spark, path)
    files, found = fs.listFiles(hpath, True), []
    while files.hasNext():
        status = files.next()
        if not status.getPath().getName().startswith(("_", ".")):
            found.append(status)
    return found


def _storage_error(spark: SparkSession, name: str, path: str, fmt: str, exc: Exception) -> InputError:
    """The InputError for a table Spark could not open: which file, which column, what is wrong."""
    text = str(exc)
    if "CANNOT_MERGE_SCHEMAS" in text:
        clash = _type_clash(spark, path)
        if clash is not None:
            column, (type_a, file_a), (type_b, file_b) = clash
            return InputError(
                name,
                column,
                f"its Parquet files under {path} disagree on the type: "
                f"{type_a} in {file_a}, {type_b} in {file_b}",
            )
    bad_file = re.search(r"reading file (\S+?)\.? Could not read footer", text)
    if bad_file:
        return InputError(name, None, f"cannot read {bad_file[1]}: not a Parquet file, or a damaged one")
    if "UNABLE_TO_INFER_SCHEMA" in text:
        return InputError(name, None, f"{path} is neither a Delta table nor a folder of Parquet files")
    return InputError(name, None, f"cannot read {path} as {fmt}: {_first_line(exc)}")


def _type_clash(spark: SparkSession, path: str) -> tuple[str, tuple[str, str], tuple[str, str]] | None:
    """The first column two Parquet files under `path` store with different types, with each type and
    file; each footer is read on its own (only on this error path)."""
    seen: dict[str, tuple[str, str]] = {}
    for status in sorted(data_files(spark, path), key=lambda status: str(status.getPath())):
        file = str(status.getPath().toString())
        for field in spark.read.parquet(file).schema.fields:
            found = (field.dataType.simpleString(), status.getPath().getName())
            first = seen.setdefault(field.name, found)
            if first[0] != found[0]:
                return field.name, first, found
    return None


@contextmanager
def reading(name: str) -> Iterator[None]:
    """A block in which a Spark job that fails reading a file of table `name` (a damaged data page
    found mid-scan) raises InputError naming the file."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        bad_file = re.search(r"Encountered error while reading file (\S+?)\.? ", str(exc))
        if bad_file is None:
            raise
        raise InputError(name, None, f"cannot read {bad_file[1]}: a damaged data file") from None


def read_snapshot(spark: SparkSession, name: str, snap: dict) -> DataFrame:
    """The data `snapshot` recorded: a Delta table at the recorded version, Parquet as it is."""
    return read_table(spark, name, snap["path"], snap.get("version"))


def _first_line(exc: Exception) -> str:
    """The line of a Spark error that says what went wrong. A failed job (reading a file footer whose
    columns clash) comes as a Py4JJavaError, whose first line only names the JVM call; from the Java
    exception's line only the innermost message is kept."""
    lines = [line.lstrip(": ").strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith("An error occurred while calling")]
    return lines[0].rsplit("Exception: ", 1)[-1] if lines else type(exc).__name__


def snapshot(spark: SparkSession, name: str, path: str) -> dict:
    """What identifies the data an input path holds now: a Delta table's version, or for Parquet
    the count, total size and latest modification time of its files. Recorded with every output so
    reruns and resumes can tell whether their inputs changed."""
    if not path_exists(spark, path):
        raise InputError(name, None, f"path {path} does not exist")
    full = qualified(spark, path)  # as Hadoop resolves it, so the record is valid from any directory
    if is_delta(spark, path):
        return {"path": full, "format": "delta", "version": table_version(spark, path)}
    count = size = latest = 0
    for status in data_files(spark, path):
        count, size = count + 1, size + status.getLen()
        latest = max(latest, status.getModificationTime())
    return {"path": full, "format": "parquet", "files": count, "bytes": size, "modified_ms": latest}


# Parquet settings for work tables of float32 vectors (BINARY): their bytes neither compress nor
# repeat, so trying (snappy, then a dictionary per column chunk) only costs time; measured in
# docs/benchmarks.md. The published embeddings keep Parquet's defaults: written this way they took
# as long and the boards' table, with the zeros of its ReLU, grew from 190 to 288 MB.
VECTOR_TABLE = {"compression": "none", "parquet.enable.dictionary": "false"}


def write_delta(df: DataFrame, path: str, metadata: dict | None = None, options: dict | None = None) -> int:
    """Replace the Delta table at `path` in one commit; returns the new table version. `options`:
    writer options such as VECTOR_TABLE.

    Readers see the previous version until the commit lands, so a failed write leaves the old
    table intact.
    """
    return int(write_delta_commit(df, path, metadata, options)["version"])


def write_delta_commit(
    df: DataFrame,
    path: str,
    metadata: dict | None = None,
    options: dict | None = None,
    partition_by: str | None = None,
) -> dict:
    """`write_delta`, returning the new commit as `last_commit` reads it (its operationMetrics
    count the rows written, so no second pass over the table is needed to report them).
    `partition_by`: a column whose values become folders, so a filter on it reads only those."""
    fence()
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if partition_by is not None:
        writer = writer.partitionBy(partition_by)
    for key, value in (options or {}).items():
        writer = writer.option(key, value)
    if metadata:
        writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True))
    writer.save(path)
    return last_commit(df.sparkSession, path)


def write_parquet(df: DataFrame, path: str) -> None:
    """Replace the Parquet folder at `path` (files that readers without Spark load, such as the
    related-pins index; not atomic, unlike a Delta commit)."""
    fence()
    df.write.mode("overwrite").parquet(path)


def read_delta(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    """A Delta table this pipeline wrote (a work table or an output), at `version` when given."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def write_and_reload(
    df: DataFrame,
    path: str,
    metadata: dict | None = None,
    options: dict | None = None,
    partition_by: str | None = None,
) -> DataFrame:
    """Materialise `df` as the Delta table at `path` (with writer `options`, partitioned by the
    column `partition_by` when given) and return it read back, so later passes start from the
    table, not from the plan that computed it."""
    write_delta_commit(df, path, metadata, options, partition_by)
    return read_delta(df.sparkSession, path)


def append_delta(df: DataFrame, path: str, first: bool) -> None:
    """Add `df`'s rows to the Delta table at `path` in one commit; `first` replaces what is there."""
    fence()
    df.write.format("delta").mode("overwrite" if first else "append").save(path)


def merge_delta(
    df: DataFrame,
    path: str,
    key: str | tuple[str, ...],
    metadata: dict | None = None,
    drop: str | None = None,
) -> dict:
    """Upsert `df` into the Delta table at `path` in one MERGE commit: rows whose `key` (a column or
    several) is there are updated, the others inserted; returns the commit as `last_commit` reads it.

    With `drop`, a boolean column of `df` that the table does not have: a table row matched by a
    source row with `drop` true is deleted, and such source rows are never inserted (a set of rows
    replaced, rows beyond the new set removed, in the same commit)."""
    from delta.tables import DeltaTable

    spark = df.sparkSession
    keys = (key,) if isinstance(key, str) else key
    fence()
    conf = "spark.databricks.delta.commitInfo.userMetadata"  # MERGE takes no userMetadata option
    if metadata:
        spark.conf.set(conf, json.dumps(metadata, sort_keys=True))
    try:
        table = DeltaTable.forPath(spark, path)
        on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        merge = table.alias("t").merge(df.alias("s"), on)
        if drop is None:
            merge = merge.whenMatchedUpdateAll().whenNotMatchedInsertAll()
        else:
            columns = {c: f"s.{c}" for c in table.toDF().columns}
            merge = (
                merge.whenMatchedDelete(f"s.{drop}")
                .whenMatchedUpdate(set=columns)
                .whenNotMatchedInsert(f"NOT s.{drop}", values=columns)
            )
        merge.execute()
    finally:
        spark.conf.unset(conf)
    return last_commit(spark, path)


def committed_rows(spark: SparkSession, path: str, commit: dict) -> int:
    """The rows a table has at `commit` (from `write_delta_commit`): the commit's own count when Delta
    kept metrics, else a count of the table at that version."""
    rows = commit["metrics"].get("numOutputRows")
    if rows is None:  # spark.databricks.delta.history.metricsEnabled=false: no commit metrics
        rows = read_delta(spark, path, int(commit["version"])).count()
    return int(rows)


def put_file(spark: SparkSession, local: str, dest: str) -> None:
    """Copy a driver-local file to `dest` on the job's file system (local, HDFS, S3, ...)."""
    fence()
    fs, target = _fs_path(spark, dest)
    jvm = spark.sparkContext._jvm
    fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(os.path.abspath(local)), target)


def copy_path(spark: SparkSession, source: str, dest: str) -> None:
    """Replace `dest` with a copy of the file or folder `source` (not atomic)."""
    fence()
    jvm = spark.sparkContext._jvm
    src_fs, src = _fs_path(spark, source)
    dst_fs, dst = _fs_path(spark, dest)
    if dst_fs.exists(dst):
        dst_fs.delete(dst, True)
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    jvm.org.apache.hadoop.fs.FileUtil.copy(src_fs, src, dst_fs, dst, False, conf)


def get_file(spark: SparkSession, source: str, local: str) -> None:
    """Copy the file `source` on the job's file system to the driver-local path `local`."""
    fs, src = _fs_path(spark, source)
    jvm = spark.sparkContext._jvm
    fs.copyToLocalFile(False, src, jvm.org.apache.hadoop.fs.Path(os.path.abspath(local)), True)


def table_version(spark: SparkSession, path: str) -> int:
    return int(last_commit(spark, path)["version"])


def last_commit(spark: SparkSession, path: str) -> dict:
    """The latest commit of a Delta table: version, operation, operationMetrics, its userMetadata as
    stored (`user_metadata`, None when none) and decoded (`metadata`: empty unless it is a JSON
    object, as every table these jobs write carries)."""
    from delta.tables import DeltaTable

    return _commit_record(DeltaTable.forPath(spark, path).history(1).collect()[0])


def _commit_record(row) -> dict:
    raw = row["userMetadata"]
    return {
        "version": int(row["version"]),
        "operation": row["operation"],
        "metrics": dict(row["operationMetrics"] or {}),
        "user_metadata": raw,
        "metadata": (json_object(raw) or {}) if raw else {},
    }


def commit_at(spark: SparkSession, path: str, version: int) -> dict | None:
    """`last_commit`'s record of the commit that made `version` of the Delta table at `path`, or None
    when the table's history no longer holds it."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    rows = DeltaTable.forPath(spark, path).history().where(F.col("version") == version).collect()
    return _commit_record(rows[0]) if rows else None


def json_object(raw: str) -> dict | None:
    """A commit's userMetadata decoded, or None unless it is a JSON object (written by something
    other than these jobs)."""
    try:
        decoded = json.loads(raw)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


class LocalFiles:
    """Small files on the driver's local file system, for leases. `create_new` is link(2), which
    fails when the name exists: atomic on a POSIX file system (Hadoop's local create(overwrite=false)
    checks, then creates)."""

    def create_new(self, path: str, data: bytes) -> bool:
        # Written in full under a private name, then linked into place: link(2) fails when the name
        # exists, so the file appears atomically and never empty.
        for _ in range(10):  # the folder may be removed by a releasing run between the calls
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:
                continue
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        raise FileNotFoundError(path)

    def replace(self, path: str, data: bytes) -> None:
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def names(self, folder: str) -> list[str]:
        try:
            return os.listdir(folder)
        except FileNotFoundError:
            return []

    def read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def modified(self, path: str) -> float | None:
        try:
            return os.stat(path).st_mtime
        except FileNotFoundError:
            return None

    def touch(self, path: str) -> bool:
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def delete(self, path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def remove_empty_folder(self, path: str) -> None:
        try:
            os.rmdir(path)
        except OSError:  # not empty (another run's lease, a table), or already gone
            pass


class HadoopFiles:
    """`LocalFiles` through the Hadoop FileSystem API, for leases on HDFS and other stores:
    `create_new` is create(overwrite=false), atomic on HDFS (the NameNode creates the file or
    refuses); an object store gives that guarantee only with conditional writes."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def _path(self, path: str):
        return _fs_path(self.spark, path)

    def create_new(self, path: str, data: bytes) -> bool:
        fs, hpath = self._path(path)
        try:
            stream = fs.create(hpath, False)
        except Exception as exc:  # FileAlreadyExistsException through Py4J
            if "AlreadyExists" in str(exc) or fs.exists(hpath):
                return False
            raise
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()
        return True

    def replace(self, path: str, data: bytes) -> None:
        fs, hpath = self._path(path)
        stream = fs.create(hpath, True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def names(self, folder: str) -> list[str]:
        fs, hpath = self._path(folder)
        if not fs.exists(hpath):
            return []
        return [status.getPath().getName() for status in fs.listStatus(hpath)]

    def read(self, path: str) -> bytes | None:
        fs, hpath = self._path(path)
        try:
            stream = fs.open(hpath)
        except Exception:  # FileNotFoundException: released or taken over meanwhile
            return None
        try:
            jvm = self.spark.sparkContext._jvm
            return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def modified(self, path: str) -> float | None:
        fs, hpath = self._path(path)
        try:
            return fs.getFileStatus(hpath).getModificationTime() / 1000
        except Exception:  # FileNotFoundException
            return None

    def touch(self, path: str) -> bool:
        fs, hpath = self._path(path)
        try:
            fs.setTimes(hpath, int(time.time() * 1000), -1)
        except Exception:  # FileNotFoundException: taken over and cleaned up
            return False
        return True

    def delete(self, path: str) -> None:
        fs, hpath = self._path(path)
        fs.delete(hpath, False)

    def exists(self, path: str) -> bool:
        fs, hpath = self._path(path)
        return bool(fs.exists(hpath))

    def remove_empty_folder(self, path: str) -> None:
        fs, hpath = self._path(path)
        try:
            if fs.exists(hpath) and len(fs.listStatus(hpath)) == 0:
                fs.delete(hpath, False)
        except Exception:  # PathIsNotEmptyDirectoryException: something arrived meanwhile
            pass


def qualified(spark: SparkSession, path: str) -> str:
    """`path` as Hadoop resolves it: scheme and absolute path (file:/abs/out, hdfs://nn/out)."""
    fs, hpath = _fs_path(spark, path)
    return str(fs.makeQualified(hpath).toString())


def small_files(spark: SparkSession, root: str) -> tuple[LocalFiles | HadoopFiles, str]:
    """The small-file access for leases under `root`, and `root` in the form that access takes: a
    local path for the file: scheme, the qualified URI otherwise."""
    full = qualified(spark, root)
    fs, hpath = _fs_path(spark, full)
    uri = fs.makeQualified(hpath).toUri()
    if uri.getScheme() == "file":
        return LocalFiles(), str(uri.getPath())
    return HadoopFiles(spark), full


def delta_tables_under(spark: SparkSession, root: str, depth: int = 2) -> list[str]:
    """The Delta tables at most `depth` folders below `root` (ROOT/pin_embeddings,
    ROOT/board_layers/layer_1), skipping folders named with `_` or `.` (work tables, leases)."""
    found, level = [], [root.rstrip("/")]
    for _ in range(depth):
        below = []
        for folder in level:
            fs, hpath = _fs_path(spark, folder)
            if not fs.exists(hpath):
                continue
            for status in fs.listStatus(hpath):
                name = str(status.getPath().getName())
                if status.isDirectory() and not name.startswith(("_", ".")):
                    path = f"{folder}/{name}"
                    (found if is_delta(spark, path) else below).append(path)
        level = below
    return sorted(found)


def entries_older_than(spark: SparkSession, folder: str, cutoff_ms: int) -> list[str]:
    """The entries of `folder` whose newest file (or own time, when empty) is older than `cutoff_ms`."""
    fs, hpath = _fs_path(spark, folder)
    if not fs.exists(hpath):
        return []
    old = []
    for status in fs.listStatus(hpath):
        newest = status.getModificationTime()
        if status.isDirectory():
            files = fs.listFiles(status.getPath(), True)
            while files.hasNext():
                newest = max(newest, files.next().getModificationTime())
        if newest < cutoff_ms:
            old.append(f"{folder.rstrip('/')}/{status.getPath().getName()}")
    return sorted(old)


def vacuum_delta(spark: SparkSession, path: str, hours: float) -> None:
    """Delete the files of the Delta table at `path` that no version newer than `hours` ago reads
    (Delta's VACUUM; those versions can no longer be read)."""
    from delta.tables import DeltaTable

    fence()
    DeltaTable.forPath(spark, path).vacuum(hours)
