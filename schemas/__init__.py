"""Table schemas: see schemas/tables.py."""

from schemas.tables import (
    BOARD_EMBEDDINGS,
    BOARD_NEIGHBORS,
    BOARDS,
    EDGES,
    GATHERED,
    INPUT_SCHEMAS,
    LAYER,
    MERGED,
    NEIGHBORS,
    OPTIONAL_COLUMNS,
    PARTIALS,
    PIN_EMBEDDINGS,
    PIN_NEIGHBORS,
    PINS,
    PROJECTIONS,
    accepted,
)

__all__ = [
    "BOARDS",
    "BOARD_EMBEDDINGS",
    "BOARD_NEIGHBORS",
    "EDGES",
    "GATHERED",
    "INPUT_SCHEMAS",
    "LAYER",
    "MERGED",
    "NEIGHBORS",
    "OPTIONAL_COLUMNS",
    "PARTIALS",
    "PINS",
    "PIN_EMBEDDINGS",
    "PIN_NEIGHBORS",
    "PROJECTIONS",
    "accepted",
]
