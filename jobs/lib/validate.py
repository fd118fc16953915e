"""Input checks that run before any compute, each failure naming the table, column and problem.

`conform` checks columns and types (no Spark job) and casts to the canonical schemas; the `check_*`
functions run one pass per table (node tables: a numpy pass over Arrow batches that flags each row,
or a SQL one when only the ids are checked, aggregated, plus one duplicate-id query).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType

from jobs.lib.io import InputError, reading
from jobs.lib.vectors import PROBLEM_BITS, PROBLEMS, feature_problems
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


# Per node row: its id, its problems and its feature length (-1: NULL features or none checked).
FLAGS_SCHEMA = "node_id bigint, problems int, length int"


def _flag_rows(batches, id_col: str, dim: int):
    """FLAGS_SCHEMA rows of a node table's Arrow batches with features (a mapInArrow function)."""
    for batch in batches:
        ids = batch.column(id_col)
        problems, lengths = feature_problems(ids, batch.column("features"), dim)
        yield pa.RecordBatch.from_arrays(
            [ids, pa.array(problems, pa.int32()), pa.array(lengths, pa.int32())],
            ["node_id", "problems", "length"],
        )


def vector_width(df: DataFrame, column: str) -> int:
    """The length of the first non-NULL vector in `column` (0 when there is none); `check_nodes`
    then holds every other row to it."""
    first = df.where(F.col(column).isNotNull()).select(F.size(column).alias("n")).first()
    return int(first["n"]) if first is not None else 0


def check_nodes(df: DataFrame, table: str, id_col: str, dim: int | None, dim_source: str) -> int:
    """Ids non-null and unique; when `dim` is given, features non-null, of length `dim`, finite.
    Returns the row count. Feature checks run as one numpy pass over Arrow batches; without them
    the ids are flagged in SQL, so nothing crosses to Python."""
    if dim is None:
        node_id = F.col(id_col).cast("bigint")
        null_id = F.when(node_id.isNull(), PROBLEM_BITS["null_ids"]).otherwise(0)
        flags = df.select(node_id.alias("node_id"), null_id.alias("problems"), F.lit(-1).alias("length"))
    else:
        flags = df.select(id_col, "features").mapInArrow(
            partial(_flag_rows, id_col=id_col, dim=dim), FLAGS_SCHEMA
        )
    return check_flags(flags, df.select(F.col(id_col).alias("node_id")), table, id_col, dim, dim_source)


def check_flags(
    flags: DataFrame, ids: DataFrame, table: str, id_col: str, dim: int | None, dim_source: str
) -> int:
    """`check_nodes` from a node table's FLAGS_SCHEMA rows (`flags`) and its ids (`ids`: node_id).
    Returns the row count."""
    with reading(table):
        return _check_flags(flags, ids, table, id_col, dim, dim_source)


def _has(name: str) -> Column:
    return (F.col("problems").bitwiseAND(PROBLEM_BITS[name])) != 0


def _check_flags(
    flags: DataFrame, ids: DataFrame, table: str, id_col: str, dim: int | None, dim_source: str
) -> int:
    present = F.col("length") >= 0
    stats = flags.agg(
        F.count(F.lit(1)).alias("rows"),
        F.min(F.when(present, F.col("length"))).alias("low"),
        F.max(F.when(present, F.col("length"))).alias("high"),
        *(_count(_has(name)).alias(name) for name in PROBLEMS),
    ).collect()[0]
    rows = int(stats["rows"])
    if rows == 0:
        raise InputError(table, None, "has no rows")
    if stats["null_ids"]:
        raise InputError(table, id_col, f"{stats['null_ids']} rows have a NULL id")
    if dim is not None:
        low, high = stats["low"], stats["high"]
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
            if stats[name]:
                first = flags.where(_has(name) & F.col("node_id").isNotNull()).select("node_id")
                shown = [r[0] for r in first.orderBy("node_id").limit(EXAMPLES).collect()]
                suffix = f" (e.g. {id_col} {', '.join(map(str, shown))})" if shown else ""
                raise InputError(table, "features", f"{stats[name]} {text}{suffix}")
    dups = ids.groupBy("node_id").count().filter("count > 1")
    first = dups.orderBy("node_id").limit(EXAMPLES).collect()
    if first:
        listed = ", ".join(f"{r['node_id']} ({r['count']} times)" for r in first)
        raise InputError(table, id_col, f"duplicate ids, e.g. {listed}")
    return rows


@dataclass(frozen=True)
class LinkStats:
    rows: int
    null_ids: int  # rows with a NULL in either id column
    first_ids: int  # distinct values of the first id column, approximate (HyperLogLog, 5% error)


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
        F.count(F.lit(1)).alias("rows"),
        _count(bad).alias("bad"),
        _count(null_ids).alias("null_ids"),
        F.approx_count_distinct(id_cols[0]).alias("first_ids"),
    ).collect()[0]
    if stats["bad"]:
        sample = df.filter(bad).select(*id_cols, "weight").limit(EXAMPLES).collect()
        listed = "; ".join(f"{tuple(r[:2])} -> {r['weight']}" for r in sample)
        raise InputError(
            table,
            "weight",
            f"{stats['bad']} rows have a NULL, NaN, infinite or non-positive weight (e.g. {listed})",
        )
    return LinkStats(
        rows=int(stats["rows"]), null_ids=int(stats["null_ids"]), first_ids=int(stats["first_ids"])
    )
