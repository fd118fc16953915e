"""Input checks that run before any compute, each failure naming the table, column and problem.

`conform` checks columns and types (no Spark job) and casts to the canonical schemas; the `check_*`
functions run one aggregate per table, plus one duplicate-id query for node tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType

from jobs.lib.io import InputError
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
            want = " or ".join(t.simpleString() for t in dict.fromkeys(accepted(field)))
            raise InputError(table, field.name, f"has type {stored.simpleString()}, expected {want}")
        target = field.dataType
        if isinstance(target, ArrayType):  # NULL elements are reported by check_nodes, not by a cast
            target = ArrayType(target.elementType, containsNull=True)
        out.append(F.col(field.name).cast(target).alias(field.name))
    return df.select(out)


def _count(cond: Column) -> Column:
    return F.sum(F.when(cond, 1).otherwise(0))


def _non_finite(x: Column) -> Column:
    return F.isnan(x) | (x == float("inf")) | (x == float("-inf"))


def _examples(df: DataFrame, cond: Column, id_col: str) -> str:
    ids = [r[0] for r in df.filter(cond).select(id_col).limit(EXAMPLES).collect()]
    return f" (e.g. {id_col} {', '.join(map(str, ids))})" if ids else ""


def check_nodes(df: DataFrame, table: str, id_col: str, dim: int | None, dim_source: str) -> int:
    """Ids non-null and unique; when `dim` is given, features non-null, of length `dim`, finite.
    Returns the row count."""
    aggs = [F.count(F.lit(1)).alias("rows"), _count(F.col(id_col).isNull()).alias("null_ids")]
    features = F.col("features")
    conditions: dict[str, Column] = {}
    if dim is not None:
        conditions = {
            "null_features": features.isNull(),
            "null_elements": features.isNotNull() & F.exists(features, lambda x: x.isNull()),
            "non_finite": features.isNotNull() & F.exists(features, _non_finite),
            "wrong_length": features.isNotNull() & (F.size(features) != dim),
        }
        aggs += [_count(c).alias(name) for name, c in conditions.items()]
        aggs += [F.min(F.size(features)).alias("min_len"), F.max(F.size(features)).alias("max_len")]
    stats = df.agg(*aggs).collect()[0]
    if stats["rows"] == 0:
        raise InputError(table, None, "has no rows")
    if stats["null_ids"]:
        raise InputError(table, id_col, f"{stats['null_ids']} rows have a NULL id")
    if dim is not None:
        problems = {
            "null_features": "rows have NULL features",
            "null_elements": "rows have NULL elements in features",
            "wrong_length": (
                f"rows do not have length {dim} ({dim_source}); lengths seen: "
                f"{stats['min_len']}..{stats['max_len']}"
                + (" (ragged)" if stats["min_len"] != stats["max_len"] else "")
            ),
            "non_finite": "rows have NaN or Inf in features",
        }
        for name, text in problems.items():
            if stats[name]:
                examples = _examples(df, conditions[name], id_col)
                raise InputError(table, "features", f"{stats[name]} {text}{examples}")
    dups = df.groupBy(id_col).count().filter("count > 1")
    first = dups.orderBy(id_col).limit(EXAMPLES).collect()
    if first:
        listed = ", ".join(f"{r[id_col]} ({r['count']} times)" for r in first)
        raise InputError(table, id_col, f"duplicate ids, e.g. {listed}")
    return int(stats["rows"])


@dataclass(frozen=True)
class LinkStats:
    rows: int
    null_ids: int  # rows with a NULL in either id column


def check_links(df: DataFrame, table: str, id_cols: tuple[str, str]) -> LinkStats:
    """Weights present, finite and > 0. Rows with NULL ids are allowed: they are dropped later as
    dangling references, and counted here."""
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
