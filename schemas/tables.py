"""Every table the pipeline reads or writes, as a named StructType.

Inputs may be stored with wider-but-compatible types (INT ids, DOUBLE weights or features); the
validators in `jobs.lib.validate` accept those listed in ACCEPTED_TYPES and cast to these schemas.
Vectors inside the pipeline travel as BINARY: float32 little-endian, `dim * 4` bytes per row.
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    ByteType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

VECTOR = ArrayType(FloatType(), containsNull=False)

# ---- inputs ---------------------------------------------------------------------------------
PINS = StructType([StructField("pin_id", LongType(), False), StructField("features", VECTOR, False)])
BOARDS = StructType([StructField("board_id", LongType(), False), StructField("features", VECTOR, True)])
EDGES = StructType(
    [
        StructField("pin_id", LongType(), True),
        StructField("board_id", LongType(), True),
        StructField("weight", FloatType(), True),  # optional column, 1.0 when absent
    ]
)


def _neighbor_table(target: str, source: str) -> StructType:
    """A neighbor table: `target` pools `source` with `weight` (the two tables differ only in which id
    comes first)."""
    return StructType(
        [
            StructField(target, LongType(), True),
            StructField(source, LongType(), True),
            StructField("weight", FloatType(), True),
        ]
    )


BOARD_NEIGHBORS = _neighbor_table("board_id", "pin_id")
PIN_NEIGHBORS = _neighbor_table("pin_id", "board_id")
# Related-item pairs (training positives, validation pairs): pos_pin is related to query_pin.
PAIRS = StructType([StructField("query_pin", LongType(), False), StructField("pos_pin", LongType(), False)])
# The pins jobs/related.py --queries gives lists (every pin of the embeddings stays a candidate).
QUERY_PINS = StructType([StructField("pin_id", LongType(), False)])

# ---- outputs (Delta, under --out) ----------------------------------------------------------
PIN_EMBEDDINGS = StructType(
    [StructField("pin_id", LongType(), False), StructField("embedding", VECTOR, False)]
)
BOARD_EMBEDDINGS = StructType(
    [StructField("board_id", LongType(), False), StructField("embedding", VECTOR, False)]
)

# ---- internal --------------------------------------------------------------------------------
# One Delta table per layer under --out/_work/<run key>: h(k) of every node of the layer's target type.
LAYER = StructType([StructField("node_id", LongType(), False), StructField("vec", BinaryType(), True)])
# Neighbor rows as the layers read them (transforms.links): target dst pools source src. NULL ids
# are removed; ids that are not nodes drop out inside the layer (and are counted there).
NEIGHBORS = StructType(
    [
        StructField("dst", LongType(), False),
        StructField("src", LongType(), False),
        StructField("weight", DoubleType(), False),
    ]
)
# Output of a projection map: Q_k applied to every source node once.
PROJECTIONS = StructType([StructField("src", LongType(), False), StructField("proj", BinaryType(), False)])
# Rows a pooling task sees for a target, sorted by (dst, kind, src, weight): kind OWN_ROW (see
# jobs.lib.inference) is the target's own representation (self_vec; ARRAY<FLOAT> instead of BINARY
# while it is still input features), kind NEIGHBOR_ROW a neighbor row with its weight and projection
# (proj NULL when projections are broadcast).
GATHERED = StructType(
    [
        StructField("dst", LongType(), False),
        StructField("kind", ByteType(), False),
        StructField("src", LongType(), True),
        StructField("weight", DoubleType(), True),
        StructField("self_vec", BinaryType(), True),
        StructField("proj", BinaryType(), True),
    ]
)

# A layer whose projections are broadcast in parts (chain.run_layer): each part pools the neighbor
# rows whose source it holds into one partial state per target (pooling.PoolState, acc as float32),
# and the merge pass sees a target's own row (OWN_ROW, self_vec) then its partials (PARTIAL_ROW), by
# part.
PARTIALS = StructType(
    [
        StructField("dst", LongType(), False),
        StructField("part", IntegerType(), False),
        StructField("rows", LongType(), False),
        StructField("norm", DoubleType(), False),
        StructField("acc", BinaryType(), False),
    ]
)
MERGED = StructType(
    [
        StructField("dst", LongType(), False),
        StructField("kind", ByteType(), False),
        StructField("part", IntegerType(), True),
        StructField("rows", LongType(), True),
        StructField("norm", DoubleType(), True),
        StructField("self_vec", BinaryType(), True),
        StructField("acc", BinaryType(), True),
    ]
)

INPUT_SCHEMAS: dict[str, StructType] = {
    "pins": PINS,
    "boards": BOARDS,
    "edges": EDGES,
    "board_neighbors": BOARD_NEIGHBORS,
    "pin_neighbors": PIN_NEIGHBORS,
    "pairs": PAIRS,
    "validation_pairs": PAIRS,
    "queries": QUERY_PINS,
    # The evaluation reads published embeddings through the same validators as the embed job's
    # inputs (labels carry a STRING column, which jobs.lib.evaluation checks itself).
    "pin_embeddings": PIN_EMBEDDINGS,
}
OPTIONAL_COLUMNS: dict[str, set[str]] = {"edges": {"weight"}, "boards": {"features"}}

ACCEPTED_TYPES: dict[str, tuple[DataType, ...]] = {
    "id": (LongType(), IntegerType()),
    "weight": (FloatType(), DoubleType()),
    "vector": tuple(ArrayType(t, n) for t in (FloatType(), DoubleType()) for n in (False, True)),
}


# ---- evaluation (jobs/evaluate.py) ----------------------------------------------------------
# Its held-out pairs are PAIRS above: the job ranks pos_pin among the candidates for query_pin.
# One label per pin, used only to colour the 2-D map of the embedding space. Stored labels may also
# be INT or BIGINT; they are cast to STRING.
LABELS = StructType([StructField("pin_id", LongType(), False), StructField("label", StringType(), True)])
LABEL_ACCEPTED_TYPES: tuple[DataType, ...] = (StringType(), IntegerType(), LongType())
# Output O/pair_ranks: one row per method and distinct (query_pin, pos_pin). rank = 1 + higher +
# ties (ties count against the positive); candidates counts the positive itself.
PAIR_RANKS = StructType(
    [
        StructField("method", StringType(), False),
        StructField("query_pin", LongType(), False),
        StructField("pos_pin", LongType(), False),
        StructField("rank", LongType(), False),
        StructField("higher", LongType(), False),
        StructField("ties", LongType(), False),
        StructField("candidates", LongType(), False),
    ]
)


# ---- related pins (jobs/related.py) ---------------------------------------------------------
# Output R/related_pins: for every pin its nearest other pins by cosine similarity, rank 1..K, in
# the order of pinsage_model.similarity (score as stored descending, then related_pin_id ascending).
RELATED_PINS = StructType(
    [
        StructField("pin_id", LongType(), False),
        StructField("rank", IntegerType(), False),
        StructField("related_pin_id", LongType(), False),
        StructField("score", FloatType(), False),
    ]
)
# R/related_index/lists (Parquet): each pin of the inverted file with its list and embedding.
RELATED_INDEX_LISTS = StructType(
    [
        StructField("list_id", IntegerType(), False),
        StructField("pin_id", LongType(), False),
        StructField("embedding", VECTOR, False),
    ]
)


def accepted(field: StructField) -> tuple[DataType, ...]:
    """The stored types a canonical input field may arrive as."""
    if isinstance(field.dataType, LongType):
        return ACCEPTED_TYPES["id"]
    if isinstance(field.dataType, FloatType):
        return ACCEPTED_TYPES["weight"]
    return ACCEPTED_TYPES["vector"]
