"""Input checks that run before any compute, each failure naming the table, column and problem.

`conform` checks columns and types (no Spark job) and casts to the canonical schemas; the `check_*`
functions run one pass per table (node tables: a numpy pass over Arrow batches, plus one duplicate-id
query).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType

from jobs.lib.io import InputError, reading
from schemas import INPUT_SCHEMAS, OPTIONAL_COLUMNS, accepted

EXAMPLES = 3


def conform(df: DataFrame, table: str) -> DataFrame:
    """Select the table's canonical columns, cast to canonical types; extra columns are dropped."""
    schema = INPUT_SCHEMAS[table]
    present = {f.name: f.dataType for f in df.schema.fields}
    out = []
    for field in schema.fields:
        if field.name not in present:
            if field.name in OPTIONAL_COLUMNS.get(table, set()):
                default = 1.0 if field.name == "weight" else None
                out.append(F.lit(default).cast(field.dataType).alias(field.name))
                continue
            raise InputError(table, field.name, f"missing column (found: {', '.join(present) or 'none'})")
        stored = present[field.name]
        if stored not in accepted(field):
            want = " or ".join(dict.fromkeys(t.simpleString() for t in accepted(field)))
            raise InputError(table, field.name, f"has type {stored.simpleString()}, expected {want}")
        target = field.dataType
        if isinstance(target, ArrayType):  # NULL elements are reported by check_nodes, not by a cast
            target = ArrayType(target.elementType, containsNull=True)
        out.append(F.col(field.name).cast(target).alias(field.name))
    return df.select(out)


def _count(cond: Column) -> Column:
    # count, not sum: a sum over no rows is NULL, and an empty neighbor table is valid input
    return F.count(F.when(cond, 1))


def _non_finite(x: Column) -> Column:
    return F.isnan(x) | (x == float("inf")) | (x == float("-inf"))


# Per Arrow batch: counts of each problem and the first few ids showing it.
_PROBLEMS = ("null_ids", "null_features", "null_elements", "wrong_length", "non_finite")
_STATS_SCHEMA = "rows bigint, min_len bigint, max_len bigint, " + ", ".join(
    f"{p} bigint, {p}_ids array<bigint>" for p in _PROBLEMS
)
_STATS_ARROW = pa.schema(
    [("rows", pa.int64()), ("min_len", pa.int64()), ("max_len", pa.int64())]
    + [field for p in _PROBLEMS for field in ((p, pa.int64()), (f"{p}_ids", pa.list_(pa.int64())))]
)


def _feature_stats(batches, id_col: str, dim: int | None):
    """One row of problem counts per Arrow batch, computed with numpy instead of per-element SQL."""
    for batch in batches:
        ids = batch.column(id_col)
        # Filled, because a column with NULLs would convert to float64 and round large ids (2**63 - 1
        # to 2**63, which no longer fits the stats' bigint); NULL-id rows are never shown as examples.
        id_values = pc.fill_null(ids, 0).to_numpy(zero_copy_only=False)
        flags = {"null_ids": ~ids.is_valid().to_numpy(zero_copy_only=False)}
        row = {"rows": batch.num_rows, "min_len": None, "max_len": None}
        if dim is not None:
            features = batch.column("features")
            present = features.is_valid().to_numpy(zero_copy_only=False)
            lengths = pc.fill_null(pc.list_value_length(features), -1).to_numpy(zero_copy_only=False)
            values = features.flatten()
            owner = np.repeat(np.arange(batch.num_rows), np.where(present, lengths, 0))
            null_values = ~values.is_valid().to_numpy(zero_copy_only=False)
            finite = np.isfinite(values.to_numpy(zero_copy_only=False))  # NULLs come back as NaN
            flags["null_features"] = ~present
            flags["null_elements"] = np.bincount(owner[null_values], minlength=batch.num_rows) > 0
            flags["wrong_length"] = present & (lengths != dim)
            flags["non_finite"] = np.bincount(owner[~finite & ~null_values], minlength=batch.num_rows) > 0
            if present.any():
                row["min_len"], row["max_len"] = int(lengths[present].min()), int(lengths[present].max())
        for name in _PROBLEMS:
            hit = flags.get(name, np.zeros(batch.num_rows, dtype=bool))
            row[name] = int(hit.sum())
            shown = hit & ~flags["null_ids"] if name != "null_ids" else np.zeros_like(hit)
            row[f"{name}_ids"] = [int(i) for i in id_values[shown][:EXAMPLES]]
        yield pa.RecordBatch.from_pylist([row], schema=_STATS_ARROW)


def vector_width(df: DataFrame, column: str) -> int:
    """The length of the first non-NULL vector in `column` (0 when there is none); `check_nodes`
    then holds every other row to it."""
    first = df.where(F.col(column).isNotNull()).select(F.size(column).alias("n")).first()
    return int(first["n"]) if first is not None else 0


def check_nodes(df: DataFrame, table: str, id_col: str, dim: int | None, dim_source: str) -> int:
    """Ids non-null and unique; when `dim` is given, features non-null, of length `dim`, finite.
    Returns the row count. Feature checks run as one numpy pass over Arrow batches."""
    with reading(table):
        return _check_nodes(df, table, id_col, dim, dim_source)


def _check_nodes(df: DataFrame, table: str, id_col: str, dim: int | None, dim_source: str) -> int:
    cols = [id_col] + (["features"] if dim is not None else [])
    fn = partial(_feature_stats, id_col=id_col, dim=dim)
    parts = df.select(*cols).mapInArrow(fn, _STATS_SCHEMA).collect()
    rows = sum(p["rows"] for p in parts)
    if rows == 0:
        raise InputError(table, None, "has no rows")
    total = {name: sum(p[name] for p in parts) for name in _PROBLEMS}
    examples = {name: [i for p in parts for i in p[f"{name}_ids"]][:EXAMPLES] for name in _PROBLEMS}
    if total["null_ids"]:
        raise InputError(table, id_col, f"{total['null_ids']} rows have a NULL id")
    if dim is not None:
        lens = [(p["min_len"], p["max_len"]) for p in parts if p["min_len"] is not None]
        low, high = (min(a for a, _ in lens), max(b for _, b in lens)) if lens else (None, None)
        problems = {
            "null_features": "rows have NULL features",
            "null_elements": "rows have NULL elements in features",
            "wrong_length": (
                f"rows do not have length {dim} ({dim_source}); lengths seen: {low}..{high}"
                + (" (ragged)" if low != high else "")
            ),
            "non_finite": "rows have NaN or Inf in features",
        }
        for name, text in problems.items():
            if total[name]:
                shown = examples[name]
                suffix = f" (e.g. {id_col} {', '.join(map(str, shown))})" if shown else ""
                raise InputError(table, "features", f"{total[name]} {text}{suffix}")
    dups = df.groupBy(id_col).count().filter("count > 1")
    first = dups.orderBy(id_col).limit(EXAMPLES).collect()
    if first:
        listed = ", ".join(f"{r[id_col]} ({r['count']} times)" for r in first)
        raise InputError(table, id_col, f"duplicate ids, e.g. {listed}")
    return rows


@dataclass(frozen=True)
class LinkStats:
    rows: int
    null_ids: int  # rows with a NULL in either id column


def check_links(df: DataFrame, table: str, id_cols: tuple[str, str]) -> LinkStats:
    """Weights present, finite and > 0. Rows with NULL ids are allowed: they are dropped later as
    dangling references, and counted here."""
    with reading(table):
        return _check_links(df, table, id_cols)


def _check_links(df: DataFrame, table: str, id_cols: tuple[str, str]) -> LinkStats:
    weight = F.col("weight")
    bad = weight.isNull() | _non_finite(weight) | (weight <= 0)
    null_ids = F.col(id_cols[0]).isNull() | F.col(id_cols[1]).isNull()
    stats = df.agg(
        F.count(F.lit(1)).alias("rows"), _count(bad).alias("bad"), _count(null_ids).alias("null_ids")
    ).collect()[0]
    if stats["bad"]:
        sample = df.filter(bad).select(*id_cols, "weight").limit(EXAMPLES).collect()
        listed = "; ".join(f"{tuple(r[:2])} -> {r['weight']}" for r in sample)
        raise InputError(
            table,
            "weight",
            f"{stats['bad']} rows have a NULL, NaN, infinite or non-positive weight (e.g. {listed})",
        )
    return LinkStats(rows=int(stats["rows"]), null_ids=int(stats["null_ids"]))
