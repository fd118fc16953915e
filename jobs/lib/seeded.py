"""Every seeded random draw of the pipeline, and what each is drawn for, in one place.

A draw is xxhash64 over the seed, the ids it is for and a purpose, never a function of partition
order, so a seed gives the same walks, samples and splits however the data is partitioned. The
purpose keeps draws made for different reasons independent under one seed. The values below are
part of every recorded output: changing one changes each table drawn with it.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

# jobs/lib/walks.py: appended after (source type, source, walk index, step).
WALK_RESTART = 0  # does the walker jump back to its source?
WALK_MOVE = 1  # where in the neighbor distribution does it land?

# Evaluation (jobs/lib/evaluation): prefixed to the ids.
CANDIDATE_POOL = 11  # the seeded sample of candidates
PAIR_LEFT, PAIR_RIGHT = 12, 13  # the two orders that pair random pins for the similarity histogram
MAP_SAMPLE = 14  # labelled pins on the PCA map
QUERY_BLOCK = 15  # which broadcast block a pair (or a related-pins query) is in (always seed 0)

# Related pins (jobs/lib/related.py): prefixed to the ids.
CENTROID_SAMPLE = 16  # the sample the inverted file's centroids are trained on

# goodbooks-10k (jobs/goodbooks): appended after the ids.
SPLIT = "split"  # which split a list goes to
HOLDOUT = "holdout"  # which memberships of a list are held out
QUERY = "query"  # which book of the list is a held-out book's query
COLD = "cold"  # which books are held out entirely, as new books
REVEAL = "reveal"  # in which order a new book's training-split memberships are revealed
COLD_QUERY = "cold query"  # which book of the list is a new book's query

_MANTISSA = (1 << 53) - 1


def seeded_hash(seed: int, purpose: int, *cols: str | Column) -> Column:
    """A BIGINT that depends only on the seed, the purpose and the columns (evaluation samples)."""
    return F.xxhash64(F.lit(seed).cast("long"), F.lit(purpose), *cols)


def tagged_hash(seed: int, purpose: str, *cols: str | Column) -> Column:
    """A BIGINT that depends only on the seed, the columns and the purpose (goodbooks choices)."""
    return F.xxhash64(F.lit(seed), *cols, F.lit(purpose))


def uniform(seed: int, *keys: Column | int | str) -> Column:
    """A uniform double in [0, 1) that depends only on the seed and the keys (the last key being the
    purpose); 53 bits of the hash, so every double in the range is as likely."""
    parts = [F.lit(seed).cast("long")] + [k if isinstance(k, Column) else F.lit(k) for k in keys]
    return (F.xxhash64(*parts).bitwiseAND(F.lit(_MANTISSA))).cast("double") / float(1 << 53)
