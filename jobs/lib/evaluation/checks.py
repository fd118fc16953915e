"""Input checks of the evaluation, run before any write: labels, pairs, the coverage of the pair and
candidate pins, and vector tables. Each failure names the table, the column and the problem."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.lib.io import InputError
from jobs.lib.validate import EXAMPLES, check_nodes, vector_width
from schemas.tables import LABEL_ACCEPTED_TYPES, LABELS, accepted

# Rows fetched to show the distinct examples of a problem.
_EXAMPLE_ROWS = 50


def conform_labels(df: DataFrame) -> DataFrame:
    """labels as (pin_id BIGINT, label STRING); INT / BIGINT labels are cast to STRING."""
    present = {f.name: f.dataType for f in df.schema.fields}
    for field in LABELS.fields:
        if field.name not in present:
            found = ", ".join(present) or "none"
            raise InputError("labels", field.name, f"missing column (found: {found})")
    allowed = {"pin_id": accepted(LABELS["pin_id"]), "label": LABEL_ACCEPTED_TYPES}
    for name, types in allowed.items():
        if present[name] not in types:
            want = " or ".join(t.simpleString() for t in types)
            raise InputError("labels", name, f"has type {present[name].simpleString()}, expected {want}")
    return df.select(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in LABELS.fields))


@dataclass(frozen=True)
class VectorTable:
    """A checked vector table: (pin_id, vec), the vectors' width and the rows read."""

    vectors: DataFrame
    dim: int
    rows: int


def check_vector_table(df: DataFrame, table: str, column: str) -> VectorTable:
    """Check a (pin_id, <column>) vector table as the embed job checks its pins: unique non-NULL ids,
    every vector non-NULL, finite and as long as the first one, which is not empty."""
    dim = vector_width(df, column)
    renamed = df.select("pin_id", F.col(column).alias("features"))
    try:
        rows = check_nodes(renamed, table, "pin_id", dim, "the length of its first row")
    except InputError as exc:
        raise InputError(table, column if exc.column == "features" else exc.column, exc.problem) from None
    if dim == 0:
        raise InputError(table, column, "vectors have length 0")
    return VectorTable(df.select("pin_id", F.col(column).alias("vec")), dim, rows)


@dataclass(frozen=True)
class PairStats:
    rows: int
    distinct: int


def _count(cond: Column) -> Column:
    return F.sum(cond.cast("long"))


def _unknown(column: str) -> Column:
    return F.col(column).isNotNull() & F.col(column.replace("_pin", "_known")).isNull()


def check_pairs(pairs: DataFrame, known: DataFrame, known_table: str) -> PairStats:
    """Pairs non-empty, ids non-NULL, query != positive, and every pin in `known` (pin_id, unique):
    one pass, plus a look-up of examples only when something is wrong."""
    ids = known.select("pin_id")
    flagged = pairs.join(
        ids.select(F.col("pin_id").alias("query_pin"), F.lit(1).alias("query_known")), "query_pin", "left"
    ).join(ids.select(F.col("pin_id").alias("pos_pin"), F.lit(1).alias("pos_known")), "pos_pin", "left")
    stats = flagged.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct("query_pin", "pos_pin").alias("distinct"),
        _count(F.col("query_pin").isNull()).alias("null_query_pin"),
        _count(F.col("pos_pin").isNull()).alias("null_pos_pin"),
        _count(F.col("query_pin") == F.col("pos_pin")).alias("self"),
        _count(_unknown("query_pin")).alias("unknown_query_pin"),
        _count(_unknown("pos_pin")).alias("unknown_pos_pin"),
    ).collect()[0]
    if not stats["rows"]:
        raise InputError("pairs", None, "has no rows")

    def examples(cond: Column, column: str) -> str:
        found = flagged.where(cond).select(column).limit(_EXAMPLE_ROWS).collect()
        shown = sorted({r[column] for r in found})
        return f"(e.g. {column} {', '.join(map(str, shown[:EXAMPLES]))})"

    for column in ("query_pin", "pos_pin"):
        if stats[f"null_{column}"]:
            raise InputError("pairs", column, f"{stats[f'null_{column}']} rows have a NULL id")
    if stats["self"]:
        shown = examples(F.col("query_pin") == F.col("pos_pin"), "query_pin")
        raise InputError(
            "pairs", "pos_pin", f"{stats['self']} rows name the query pin itself as the positive {shown}"
        )
    for column in ("query_pin", "pos_pin"):
        if stats[f"unknown_{column}"]:
            problem = f"{stats[f'unknown_{column}']} rows name a pin that is not in {known_table}"
            raise InputError("pairs", column, f"{problem} {examples(_unknown(column), column)}")
    return PairStats(int(stats["rows"]), int(stats["distinct"]))


def check_covered(ids: DataFrame, table: DataFrame, table_name: str, why: str) -> None:
    """Every pin_id of `ids` has a row in `table` (pin_id)."""
    missing = ids.join(table.select("pin_id"), "pin_id", "left_anti")
    count = missing.count()
    if count:
        shown = [r["pin_id"] for r in missing.orderBy("pin_id").limit(EXAMPLES).collect()]
        raise InputError(
            table_name, "pin_id", f"{count} {why} have no row (e.g. pin_id {', '.join(map(str, shown))})"
        )
