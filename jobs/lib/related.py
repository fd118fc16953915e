"""Related pins on Spark: every pin's K nearest other pins by cosine similarity (paper section 3.5),
exactly or through an inverted file. Both score with pinsage_model.similarity's kernel and keep its
order (stored score descending, then the smaller id), so a pin's list depends only on the vectors,
never on partitioning or on the order in which candidates are met.

- `exact_related`: one Spark job per block of queries; the driver broadcasts the block's normalised
  vectors, every task keeps the top K of its candidates per query (`top_k_batches`), and the partial
  lists are merged per query (`merge_top_k`).
- `ann_related`: centroids trained with faiss k-means on a seeded sample (in one executor task),
  every pin's P nearest lists computed on the executors (`probe_batches`; the first is the pin's
  own list), and `probed_related`: queries routed by their own list, each list's members sent to
  the routes that probe it, every query scored in one task against the members of its probed lists
  (`score_routes`), so its list is final there and no partial lists are merged. The driver holds
  the centroids only.
- `index_related`: the same for pins looked up in an index an ann run wrote (jobs/embed_new.py
  --related), checked by `read_written_index`; `replacement_rows` is the MERGE that swaps their
  lists into related_pins.
- `related_hits`: hit@k of a related table over held-out pairs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark import Broadcast, StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.lib.evaluation.ranking import blocks_for
from jobs.lib.io import (
    InputError,
    append_delta,
    commit_at,
    get_file,
    is_delta,
    json_object,
    last_commit,
    path_exists,
    read_delta,
    read_table,
)
from jobs.lib.seeded import CENTROID_SAMPLE, QUERY_BLOCK, seeded_hash
from jobs.lib.vectors import to_list, to_matrix
from pinsage_model import related as index_format
from pinsage_model.related import probe_lists
from pinsage_model.similarity import TopK, normalise, top_k_rows
from schemas.tables import RELATED_INDEX_LISTS, RELATED_PINS

log = logging.getLogger("pinsage.related")

# Scores computed at once per executor step: a [block, chunk] float32 screening matrix of about
# 16 MB, and at least a few top-k widths of candidates, so the top-k bookkeeping stays small next to
# the product.
_CHUNK_ELEMENTS = 1 << 22
_MIN_CHUNK_TOP_K = 4
KMEANS_ITERATIONS = 20

_PARTIAL = pa.schema([("pin_id", pa.int64()), ("related_pin_id", pa.int64()), ("score", pa.float32())])
PARTIAL_DDL = "pin_id bigint, related_pin_id bigint, score float"
_RELATED = pa.schema(
    [("pin_id", pa.int64()), ("rank", pa.int32()), ("related_pin_id", pa.int64()), ("score", pa.float32())]
)
RELATED_DDL = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in RELATED_PINS.fields)
_PROBES = pa.schema([("pin_id", pa.int64()), ("list_id", pa.int32()), ("probe", pa.int32())])
PROBES_DDL = "pin_id bigint, list_id int, probe int"
CENTROIDS_DDL = "list_id int, centroid array<float>, faiss_version string"
MEMBER, QUERY = 0, 1


def _ids(batch: pa.RecordBatch, name: str = "pin_id") -> np.ndarray:
    return batch.column(name).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _chunk(rows: int, k: int) -> int:
    return max(_CHUNK_ELEMENTS // max(rows, 1), _MIN_CHUNK_TOP_K * k, 1)


def _partial_batch(query_ids: np.ndarray, top: TopK) -> Iterator[pa.RecordBatch]:
    rows, ids, scores, _ = top.result()
    if len(rows):
        arrays = [pa.array(query_ids[rows]), pa.array(ids), pa.array(scores, pa.float32())]
        yield pa.RecordBatch.from_arrays(arrays, schema=_PARTIAL)


# ---- merging partial lists ----------------------------------------------------------------------


def merge_batches(batches: Iterator[pa.RecordBatch], k: int) -> Iterator[pa.RecordBatch]:
    """Executor side of merge_top_k: every partial row of the task's queries at once (a task holds
    whole queries), the best k per query with their ranks."""
    parts = [b for b in batches if b.num_rows]
    if not parts:
        return
    table = pa.Table.from_batches(parts)
    pins, related, scores, ranks = top_k_rows(
        table.column("pin_id").to_numpy().astype(np.int64),
        table.column("related_pin_id").to_numpy().astype(np.int64),
        table.column("score").to_numpy(),
        k,
    )
    arrays = [pa.array(pins), pa.array(ranks, pa.int32()), pa.array(related), pa.array(scores, pa.float32())]
    yield pa.RecordBatch.from_arrays(arrays, schema=_RELATED)


def merge_top_k(partials: DataFrame, k: int) -> DataFrame:
    """RELATED_PINS rows from partial lists (pin_id, related_pin_id, score), each pair at most once:
    the best k per pin, whichever partial list they came from."""
    by_pin = partials.repartition("pin_id")
    return by_pin.mapInArrow(partial(merge_batches, k=k), RELATED_DDL)


# ---- exact --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queries:
    """A block of queries as the executors receive it: ids [B] and normalised vectors [B, d]."""

    ids: np.ndarray
    q: np.ndarray

    @classmethod
    def from_arrow(cls, table: pa.Table, dim: int) -> Queries:
        ids = table.column("pin_id").to_numpy().astype(np.int64)
        return cls(ids, normalise(to_matrix(table.column("vec").combine_chunks(), dim)))


def top_k_batches(
    batches: Iterator[pa.RecordBatch], block: Broadcast, dim: int, k: int
) -> Iterator[pa.RecordBatch]:
    """Executor side of exact_related: the top k of the task's candidates (pin_id, vec) for every
    query of the broadcast block, its own id excluded; at most k rows per query for the whole task."""
    queries: Queries = block.value
    top = TopK(len(queries.ids), k, exclude=queries.ids)
    chunk = _chunk(len(queries.ids), k)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        ids = _ids(batch)
        vectors = normalise(to_matrix(batch.column("vec"), dim))
        for lo in range(0, len(ids), chunk):
            top.add(queries.q, vectors[lo : lo + chunk], ids[lo : lo + chunk])
    yield from _partial_batch(queries.ids, top)


def exact_related(
    vectors: DataFrame,
    dim: int,
    pins: int,
    k: int,
    block_mb: float,
    work: str,
    queries: DataFrame | None = None,
) -> DataFrame:
    """RELATED_PINS rows of every pin of `queries` (pin_id, vec; default `vectors`, `pins` of them)
    against every pin of `vectors` by blocked brute force: one Spark job per block of about `block_mb`
    of float64 query vectors (the driver holds one block), each block's merged lists appended to
    WORK/blocks when there is more than one."""
    sc = vectors.sparkSession.sparkContext
    per_block, blocks = blocks_for(pins, dim, block_mb)
    block_of = F.pmod(seeded_hash(0, QUERY_BLOCK, "pin_id"), F.lit(blocks)).cast("int")
    with_block = (vectors if queries is None else queries).select("pin_id", "vec", block_of.alias("block"))
    if blocks > 1:
        with_block = with_block.persist(StorageLevel.MEMORY_AND_DISK)
    candidates = vectors.select("pin_id", "vec")
    try:
        for b in range(blocks):
            sc.setJobDescription(f"related (exact): query block {b + 1}/{blocks}")
            table = with_block.where(F.col("block") == b).select("pin_id", "vec").toArrow()
            log.info("exact: block %d/%d: %d pins (%d a block)", b + 1, blocks, table.num_rows, per_block)
            if table.num_rows == 0:
                continue
            ref = sc.broadcast(Queries.from_arrow(table, dim))
            kernel = partial(top_k_batches, block=ref, dim=dim, k=k)
            merged = merge_top_k(candidates.mapInArrow(kernel, PARTIAL_DDL), k)
            if blocks == 1:
                return merged
            append_delta(merged, f"{work}/blocks", first=b == 0)
            ref.destroy()
    finally:
        with_block.unpersist()
    return read_delta(vectors.sparkSession, f"{work}/blocks")


# ---- inverted file ------------------------------------------------------------------------------


def centroid_sample(vectors: DataFrame, size: int, seed: int) -> DataFrame:
    """(pin_id, vec): the `size` pins with the smallest seeded hash (ties to the smaller id), the same
    set whatever the partitioning."""
    order = seeded_hash(seed, CENTROID_SAMPLE, "pin_id")
    return vectors.select("pin_id", "vec").orderBy(order, "pin_id").limit(size)


def train_batches(
    batches: Iterator[pa.RecordBatch], dim: int, lists: int, seed: int
) -> Iterator[pa.RecordBatch]:
    """Executor side of train_centroids (one task holds the whole sample): spherical k-means on the
    normalised sample in pin_id order, so the centroids depend only on the sample and the seed."""
    import faiss

    parts = [b for b in batches if b.num_rows]
    if not parts:
        return
    table = pa.Table.from_batches(parts).sort_by("pin_id")
    x = normalise(to_matrix(table.column("vec").combine_chunks(), dim)).astype(np.float32)
    faiss.omp_set_num_threads(1)  # one thread per task, and a thread count that cannot change the result
    kmeans = faiss.Kmeans(
        dim,
        lists,
        niter=KMEANS_ITERATIONS,
        seed=seed,
        spherical=True,
        max_points_per_centroid=len(x) // lists + 1,  # train on the whole sample, not faiss's subsample
        verbose=False,
    )
    kmeans.train(x)
    arrays = [
        pa.array(np.arange(lists), pa.int32()),
        to_list(kmeans.centroids),
        pa.array([faiss.__version__] * lists),
    ]
    yield pa.RecordBatch.from_arrays(arrays, names=["list_id", "centroid", "faiss_version"])


def train_centroids(sample: DataFrame, dim: int, lists: int, seed: int) -> tuple[np.ndarray, str]:
    """([lists, dim] normalised float64 centroids trained on `sample` (pin_id, vec) in one task, the
    version of faiss that trained them)."""
    kernel = partial(train_batches, dim=dim, lists=lists, seed=seed)
    rows = sample.repartition(1).mapInArrow(kernel, CENTROIDS_DDL).collect()
    rows = sorted(rows, key=lambda r: r["list_id"])
    return normalise(np.array([r["centroid"] for r in rows], dtype=np.float32)), rows[0]["faiss_version"]


def probe_batches(
    batches: Iterator[pa.RecordBatch], centroids: Broadcast, dim: int, probes: int
) -> Iterator[pa.RecordBatch]:
    """Executor side of probe: (pin_id, list_id, probe) for each pin's `probes` nearest lists."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        ids = _ids(batch)
        lists = probe_lists(normalise(to_matrix(batch.column("vec"), dim)), centroids.value, probes)
        arrays = [
            pa.array(np.repeat(ids, probes)),
            pa.array(lists.reshape(-1), pa.int32()),
            pa.array(np.tile(np.arange(1, probes + 1), len(ids)), pa.int32()),
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=_PROBES)


def probe(vectors: DataFrame, centroids: Broadcast, dim: int, probes: int) -> DataFrame:
    """(pin_id, list_id, probe): each pin's `probes` nearest lists, probe 1 (its own list) first."""
    kernel = partial(probe_batches, centroids=centroids, dim=dim, probes=probes)
    return vectors.select("pin_id", "vec").mapInArrow(kernel, PROBES_DDL)


def _lookup(
    query_ids: np.ndarray,
    q: np.ndarray,
    centroids: np.ndarray,
    probes: int,
    lists: dict[int, tuple[np.ndarray, np.ndarray]],
    k: int,
) -> Iterator[pa.RecordBatch]:
    """RELATED_PINS rows of normalised queries `q` (ids `query_ids`): the top k of the members of
    their `probes` nearest lists (`lists`: list id -> (member ids, normalised vectors)), each its own
    id excluded; pinsage_model.related.RelatedIndex.lookup on the executors."""
    probed = probe_lists(q, centroids, probes)
    top = TopK(len(q), k, exclude=query_ids)
    for list_id in np.unique(probed):
        members = lists.get(int(list_id))
        if members is None:
            continue
        rows = np.flatnonzero((probed == list_id).any(axis=1))
        ids, vectors = members
        chunk = _chunk(len(rows), k)
        for lo in range(0, len(ids), chunk):
            top.add(q[rows], vectors[lo : lo + chunk], ids[lo : lo + chunk], rows)
    rows, ids, scores, ranks = top.result()
    if len(rows):
        arrays = [
            pa.array(query_ids[rows]),
            pa.array(ranks, pa.int32()),
            pa.array(ids),
            pa.array(scores, pa.float32()),
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=_RELATED)


def score_routes(
    batches: Iterator[pa.RecordBatch], centroids: Broadcast, dim: int, k: int, probes: int
) -> Iterator[pa.RecordBatch]:
    """Executor side of probed_related: rows (route, kind, list_id, pin_id, vec) sorted by route,
    kind, list_id and pin_id, so a route's members (kind MEMBER: every pin of every list some query of
    the route probes) come before its queries (kind QUERY). Every query gets its final list at once:
    the top k of the members of its probed lists, recomputed here with the centroids."""
    route, lists, parts = None, {}, {}
    for batch in batches:
        if batch.num_rows == 0:
            continue
        routes = batch.column("route").to_numpy(zero_copy_only=False)
        kinds = batch.column("kind").to_numpy(zero_copy_only=False)
        list_ids = batch.column("list_id").to_numpy(zero_copy_only=False)
        ids = _ids(batch)
        vectors = normalise(to_matrix(batch.column("vec"), dim))
        change = (np.diff(routes) != 0) | (np.diff(kinds) != 0) | (np.diff(list_ids) != 0)
        cuts = np.flatnonzero(change) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(ids)], strict=True):
            if routes[lo] != route:
                route, lists, parts = routes[lo], {}, {}
            if kinds[lo] == MEMBER:
                # A list's members may span batches: gathered, joined when the first query comes.
                parts.setdefault(int(list_ids[lo]), []).append((ids[lo:hi], vectors[lo:hi]))
                continue
            if parts:
                for list_id, chunks in parts.items():
                    lists[list_id] = (
                        np.concatenate([c[0] for c in chunks]),
                        np.concatenate([c[1] for c in chunks]),
                    )
                parts = {}
            yield from _lookup(ids[lo:hi], vectors[lo:hi], centroids.value, probes, lists, k)


def probed_related(
    members: DataFrame,
    queries: DataFrame,
    centroids: Broadcast,
    dim: int,
    k: int,
    probes: int,
    probed: DataFrame | None = None,
) -> DataFrame:
    """RELATED_PINS rows of `queries` (pin_id, list_id: the list nearest to it, vec) against the
    `members` (list_id, pin_id, vec) of the lists each probes: its `probes` nearest, given as
    `probed` (pin_id, list_id) when already computed.

    Queries are routed by their nearest list to one of spark.sql.shuffle.partitions routes, and each
    list's members are sent to every route whose queries probe it, so a query is scored in one task
    and its list is final there: no partial lists are shuffled and merged. A route holds the members
    of the lists its queries probe (at most the catalogue; more partitions, fewer per route)."""
    spark = queries.sparkSession
    routes = int(spark.conf.get("spark.sql.shuffle.partitions"))
    route = F.pmod(F.hash(F.col("list_id")), F.lit(routes)).cast("int")
    routed = queries.select("pin_id", "vec", "list_id", route.alias("route"))
    if probed is None:
        probed = probe(routed, centroids, dim, probes)
    # The lists each route needs: the probes of its queries (the task recomputes them per query).
    needed = probed.join(routed.select("pin_id", "route"), "pin_id").select("route", "list_id").distinct()
    member_rows = members.join(needed, "list_id").select(
        "route", F.lit(MEMBER).alias("kind"), "list_id", "pin_id", "vec"
    )
    query_rows = routed.select("route", F.lit(QUERY).alias("kind"), "list_id", "pin_id", "vec")
    gathered = (
        member_rows.unionByName(query_rows)
        .repartition(routes, "route")
        .sortWithinPartitions("route", "kind", "list_id", "pin_id")
    )
    score = partial(score_routes, centroids=centroids, dim=dim, k=k, probes=probes)
    return gathered.mapInArrow(score, RELATED_DDL)


@dataclass(frozen=True)
class InvertedFile:
    """What ann_related computed besides the related lists: the index's lists, and the pairs it
    scored."""

    lists: DataFrame  # RELATED_INDEX_LISTS rows
    pairs_scored: int
    list_sizes: tuple[int, int]  # smallest and largest list


def ann_related(
    vectors: DataFrame,
    centroids: np.ndarray,
    dim: int,
    k: int,
    probes: int,
    work: str,
    query_ids: DataFrame | None = None,
) -> tuple[DataFrame, InvertedFile]:
    """RELATED_PINS rows through the inverted file of `centroids` of every pin, or of the pins of
    `query_ids` (pin_id) only, and the index's lists (every pin). Each pin's probes are written to
    WORK/probes, read by both the members and the queries."""
    from jobs.lib.io import write_and_reload

    spark = vectors.sparkSession
    sc = spark.sparkContext
    ref = sc.broadcast(centroids)
    sc.setJobDescription("related (ann): the probed lists of every pin")
    probed = write_and_reload(probe(vectors, ref, dim, probes), f"{work}/probes")
    vec = vectors.select("pin_id", "vec")
    members = probed.where(F.col("probe") == 1).join(vec, "pin_id")
    queries, query_probes = members, probed
    if query_ids is not None:
        queries = members.join(query_ids, "pin_id", "left_semi")
        query_probes = probed.join(query_ids, "pin_id", "left_semi")
    related = probed_related(members, queries, ref, dim, k, probes, query_probes.select("pin_id", "list_id"))
    sc.setJobDescription("related (ann): list sizes")
    sizes = probed.where(F.col("probe") == 1).groupBy("list_id").agg(F.count(F.lit(1)).alias("members"))
    # Per list, the queries probing it and those it is the own list of (each query has one).
    probing = query_probes.groupBy("list_id").agg(
        F.count(F.lit(1)).alias("queries"), F.sum((F.col("probe") == 1).cast("long")).alias("own")
    )
    stats = (
        sizes.join(probing, "list_id", "left")
        .agg(
            F.sum(F.col("members") * F.coalesce(F.col("queries"), F.lit(0))).alias("pairs"),
            F.sum("own").alias("own"),
            F.min("members").alias("smallest"),
            F.max("members").alias("largest"),
        )
        .first()
    )
    # A query meets itself in its own list and is not scored against itself.
    pairs = int(stats["pairs"] or 0) - int(stats["own"] or 0)
    index_lists = members.select("list_id", "pin_id", F.col("vec").alias("embedding"))
    return related, InvertedFile(
        index_lists, pairs, (int(stats["smallest"] or 0), int(stats["largest"] or 0))
    )


# ---- lookups of pins embedded later (jobs/embed_new.py --related) -------------------------------


@dataclass(frozen=True)
class WrittenIndex:
    """What an ann run of jobs/related.py left under its output root, checked: the index's record
    (index.json), its normalised centroids and lists (list_id, pin_id, vec), and the related_pins
    table (path, the version checked, its record)."""

    meta: dict
    centroids: np.ndarray
    lists: DataFrame
    table: str
    version: int
    record: dict

    @property
    def top_k(self) -> int:
        return int(self.record["top_k"])

    @property
    def run_id(self) -> str:
        return str(self.meta["run_id"])


def _index_record(spark: SparkSession, folder: str) -> tuple[dict, np.ndarray]:
    """(index.json decoded, centroids.npy) of the index folder, copied to the driver."""
    meta_path = f"{folder}/{index_format.INDEX_META}"
    if not path_exists(spark, meta_path):
        raise InputError(
            "related_index",
            None,
            f"{meta_path} is missing: --related needs the index that jobs/related.py --method ann writes",
        )
    with tempfile.TemporaryDirectory(prefix="pinsage-related-") as scratch:
        local = os.path.join(scratch, index_format.INDEX_META)
        get_file(spark, meta_path, local)
        with open(local) as f:
            meta = json_object(f.read())
        if meta is None or meta.get("format_version") != index_format.FORMAT_VERSION:
            found = None if meta is None else meta.get("format_version")
            raise InputError(
                "related_index",
                None,
                f"{meta_path} has format_version {found}, expected {index_format.FORMAT_VERSION}",
            )
        centroids_path = f"{folder}/{index_format.CENTROIDS}"
        if not path_exists(spark, centroids_path):
            raise InputError("related_index", None, f"{centroids_path} is missing")
        local = os.path.join(scratch, index_format.CENTROIDS)
        get_file(spark, centroids_path, local)
        centroids = np.load(local)
    if centroids.shape != (meta.get("lists"), meta.get("dim")):
        raise InputError(
            "related_index",
            None,
            f"{centroids_path} is {list(centroids.shape)}, index.json says {meta.get('lists')} lists of "
            f"width {meta.get('dim')}",
        )
    return meta, normalise(centroids)


def read_written_index(spark: SparkSession, root: str, base_run_id: str) -> WrittenIndex:
    """The index and related_pins table under `root` (jobs/related.py --method ann --out ROOT),
    refused (InputError) unless the index is there, related_pins holds the lists of that index's run
    (its record's `related_run_id`, or `run_id` before any merge) and the index was built from
    pin_embeddings of the full run `base_run_id` (the embeddings version it records)."""
    folder, table = f"{root}/related_index", f"{root}/related_pins"
    meta, centroids = _index_record(spark, folder)
    if not is_delta(spark, table):
        raise InputError("related_pins", None, f"{table} is not a Delta table written by jobs/related.py")
    commit = last_commit(spark, table)
    record = commit["metadata"]
    table_run = record.get("related_run_id", record.get("run_id"))
    if table_run != meta["run_id"] or "top_k" not in record:
        raise InputError(
            "related_pins",
            None,
            f"holds the lists of run {table_run}, but {folder} is the index of run {meta['run_id']}",
        )
    built = meta.get("inputs", {}).get("pin_embeddings", {})
    built_run = None
    if built.get("format") == "delta" and is_delta(spark, built["path"]):
        made = commit_at(spark, built["path"], int(built["version"]))
        if made is not None:
            built_run = made["metadata"].get("base_run_id", made["metadata"].get("run_id"))
    if built_run != base_run_id:
        where = f"{built.get('path')} version {built.get('version')}" if built else "no recorded input"
        raise InputError(
            "related_index",
            None,
            f"was built from pin_embeddings of run {built_run} ({where}), but --base holds full run "
            f"{base_run_id}: run jobs/related.py --method ann on the base run's embeddings",
        )
    stored = read_table(spark, "related_index", f"{folder}/{index_format.LISTS}")
    for name in RELATED_INDEX_LISTS.fieldNames():
        if name not in stored.columns:
            raise InputError("related_index", name, f"missing column in {folder}/{index_format.LISTS}")
    lists = stored.select("list_id", "pin_id", F.col("embedding").alias("vec"))
    return WrittenIndex(meta, centroids, lists, table, int(commit["version"]), record)


def index_related(index: WrittenIndex, queries: DataFrame) -> DataFrame:
    """RELATED_PINS rows of `queries` (pin_id, vec) looked up in a written index as
    pinsage_model.related.RelatedIndex.lookup does (the index's probes, its own id excluded, the
    index's pins with the index's vectors as candidates) and as many as the related_pins table has
    per pin; on the executors, with the kernel of ann_related."""
    dim, k, probes = int(index.meta["dim"]), index.top_k, int(index.meta["probes"])
    ref = queries.sparkSession.sparkContext.broadcast(index.centroids)
    vec = queries.select("pin_id", "vec")
    own = probe(vec, ref, dim, 1).select("pin_id", "list_id").join(vec, "pin_id")
    return probed_related(index.lists, own, ref, dim, k, probes)


def replacement_rows(new: DataFrame, pins: DataFrame, old: DataFrame) -> DataFrame:
    """The source of a MERGE on (pin_id, rank) (jobs.lib.io.merge_delta with drop="drop") that
    replaces the related lists of `pins` (pin_id) in the RELATED_PINS table `old` by their `new`
    rows: the new rows, plus each of these pins' old rows at a rank its new list does not have,
    to be deleted."""
    stale = old.join(pins, "pin_id", "left_semi").join(
        new.select("pin_id", "rank"), ["pin_id", "rank"], "left_anti"
    )
    return new.select(*RELATED_PINS.fieldNames(), F.lit(False).alias("drop")).unionByName(
        stale.select(*RELATED_PINS.fieldNames(), F.lit(True).alias("drop"))
    )


# ---- the related table against held-out pairs ----------------------------------------------------


def related_hits(related: DataFrame, pairs: DataFrame, ks: Sequence[int]) -> dict:
    """{"pairs": n, "hit@k": share, ...}: over the distinct (query_pin, pos_pin) `pairs`, the share
    whose pos_pin is in query_pin's related list (RELATED_PINS rows) at rank <= k; a pair whose query
    has no list is a miss. With exact lists this is the evaluation's hit@k on the same vectors
    wherever no score ties the k-th (tests/test_related.py)."""
    listed = related.select(
        F.col("pin_id").alias("query_pin"), F.col("related_pin_id").alias("pos_pin"), "rank"
    )
    joined = pairs.select("query_pin", "pos_pin").distinct().join(listed, ["query_pin", "pos_pin"], "left")
    hit = {k: F.coalesce((F.col("rank") <= k).cast("double"), F.lit(0.0)) for k in ks}
    row = joined.agg(
        F.count(F.lit(1)).alias("pairs"), *(F.avg(h).alias(f"hit@{k}") for k, h in hit.items())
    ).first()
    return {"pairs": int(row["pairs"]), **{f"hit@{k}": float(row[f"hit@{k}"] or 0.0) for k in ks}}
