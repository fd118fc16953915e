"""What runs on executors: per-layer model steps over Arrow batches (used through mapInArrow).

The checkpoint travels as a broadcast of its bytes; each Python worker parses it once and keeps the
model keyed by SHA-256 and device, so a task pays for loading at most once per worker process.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from jobs.lib.vectors import feature_problems, to_binary, to_list, to_matrix
from pinsage_model.checkpoint import build_model, parse_checkpoint
from pinsage_model.devices import DeviceError, resolve_device
from pinsage_model.model import PinSage
from pinsage_model.pooling import PoolState, finalize, fold, merge, partial_pool

# Arrow buffers arrive read-only; the model only reads its inputs, so sharing them without a copy is safe.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

_MODELS: dict[tuple[str, str], PinSage] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelRef:
    """What a task needs to get the model: the broadcast checkpoint bytes and where to run it."""

    checkpoint: object  # pyspark Broadcast[bytes]; typed loosely so this module imports without Spark
    sha256: str
    device: str  # auto | cpu | cuda
    projection_precision: str = "float32"  # how projections travel: a key of vectors.PRECISIONS
    # The layer's messages are its projections through W_pool (`PinSageConv.message`), pooled
    # out_dim wide and finished without W_pool; set per layer by `chain.run_layer`.
    through_w: bool = False
    linear_pooling: bool = False  # the model's pooling is in LINEAR_POOLINGS (through_w is allowed)


def task_device(requested: str) -> torch.device:
    """`resolve_device` on an executor: on CUDA, the GPU Spark assigned to this task (its first
    address), else GPU 0."""
    index = None
    if requested != "cpu" and torch.cuda.is_available():
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
        index = int(gpus.addresses[0]) if gpus is not None and gpus.addresses else 0
    try:
        return resolve_device(requested, index)
    except DeviceError as exc:
        raise RuntimeError(f"--device {requested}, but this executor cannot use it: {exc}") from None


def set_task_threads() -> None:
    """One torch thread per core Spark gave the task, so concurrent tasks do not oversubscribe."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None:
        torch.set_num_threads(max(1, int(ctx.cpus())))


def get_model(ref: ModelRef) -> tuple[PinSage, torch.device]:
    device = task_device(ref.device)
    key = (ref.sha256, str(device))
    with _LOCK:
        if key not in _MODELS:
            checkpoint = parse_checkpoint(ref.checkpoint.value, f"sha256:{ref.sha256[:12]}")
            if checkpoint.sha256 != ref.sha256:
                raise RuntimeError("checkpoint bytes on the executor differ from the driver's")
            _MODELS[key] = build_model(checkpoint, device)
    set_task_threads()
    return _MODELS[key], device


FAULT_ENV = "PINSAGE_INJECT_FAULT"


def inject_fault(step: str, k: int) -> None:
    """Fault injection for the recovery tests, off unless the environment sets
    PINSAGE_INJECT_FAULT="<step>:<k>:<mode>[:<marker dir>]". Executor steps: project or pool of
    layer k, head (k 0: the output head, which embed_new's MERGE runs); driver steps: validate (k 0,
    between the input checks), publish (after the k-th published table's commit), merge (k 1:
    embed_new --related, between its pin_embeddings and related_pins MERGEs). Mode `crash` kills
    this Python worker the first time any task gets here (a marker file in the directory makes it
    once per run; without a directory, every time); mode `fail` raises in every attempt, so the
    Spark job fails; mode `kill` SIGKILLs the run's driver and JVM (the process group of the run's
    session, as a lost machine would end them: start the run as a session leader, e.g. setsid), so
    on an executor it kills the run in the middle of the stage's write."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want_step, want_k, mode, *marker = spec.split(":", 3)
    if (want_step, int(want_k)) != (step, k):
        return
    if mode == "kill":
        # The session's first process group holds the driver and its JVM (Python workers sit in
        # groups of their own, and exit once the JVM is gone).
        os.killpg(os.getsid(0), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "fail":
        raise RuntimeError(f"{FAULT_ENV}: injected failure in {step} of layer {k}")
    if not marker:  # no marker directory: every attempt dies, as a worker that always crashes would
        os._exit(137)
    try:
        os.close(os.open(os.path.join(marker[0], f"{step}-{k}"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os._exit(137)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


class BadFeaturesError(ValueError):
    """Rows of an input features column that the projection cannot read: the task fails, and the
    driver names the table, column and rows with the full input check (`jobs.embed.run_layers`)."""


def check_features(batch: pa.RecordBatch, dim: int) -> None:
    """Raise BadFeaturesError when a row of `batch`'s input `vec` column is NULL, has NULL, NaN or
    infinite elements or a length other than `dim` (`vectors.feature_problems`)."""
    problems, lengths = feature_problems(batch.column("node_id"), batch.column("vec"), dim)
    bad = np.flatnonzero(problems)
    if len(bad):
        first = batch.column("node_id")[int(bad[0])].as_py()
        raise BadFeaturesError(
            f"{len(bad)} of {batch.num_rows} rows of an input batch have unreadable features "
            f"(expected {dim} finite values; node {first} has problem bits {int(problems[bad[0]])}, "
            f"length {int(lengths[bad[0]])})"
        )


def project_batches(
    batches: Iterator[pa.RecordBatch], ref: ModelRef, k: int, counter=None, check_dim: int | None = None
) -> Iterator[pa.RecordBatch]:
    """Step 1 of layer k: (node_id, vec) -> (src, proj = ReLU(Q_k vec + q_k)) for every row, or
    with `ref.through_w` W_pool applied to it as well (`PinSageConv.message`); proj encoded in the
    reference's projection precision. `check_dim`: the rows are an input table's features, read
    here for the first time, so each batch is checked first (`check_features`)."""
    model = device = None
    for batch in batches:
        if model is None:
            inject_fault("project", k)
            model, device = get_model(ref)
            conv = model.conv(k)
        if check_dim is not None:
            check_features(batch, check_dim)
        x = to_matrix(batch.column("vec"), conv.dims.in_dim)
        with torch.inference_mode():
            proj = conv.message(torch.from_numpy(x).to(device), ref.through_w)
        if counter is not None:
            counter.add(batch.num_rows)
        proj = to_binary(_numpy(proj), ref.projection_precision)
        yield pa.RecordBatch.from_arrays([batch.column("node_id"), proj], ["src", "proj"])


# Ids spanning at most this many slots per source get a direct position table (int32, so 4 bytes a
# slot) instead of a binary search; generated and most production ids are dense enough.
DENSE_SLOTS_PER_SOURCE = 4


@dataclass(frozen=True)
class Projections:
    """All of a layer's source projections, for broadcasting: ids sorted, matrix rows in that order.

    `dense` is how `lookup` finds ids: when they span at most DENSE_SLOTS_PER_SOURCE x sources
    values, a table from id - ids[0] to row position (-1 where no source has that id), so a lookup
    is one array read instead of a binary search over every source; else None (binary search)."""

    ids: np.ndarray  # [sources] int64, ascending
    matrix: np.ndarray  # [sources, hidden] float32
    dense: np.ndarray | None = None  # [ids[-1] - ids[0] + 1] int32 positions, or None

    @classmethod
    def build(cls, ids: np.ndarray, matrix: np.ndarray) -> Projections:
        """From ids in any order and their projections: sorted, with the direct table when it pays."""
        if len(ids) > 1 and not (ids[1:] >= ids[:-1]).all():  # sorted already: no copy of the matrix
            order = np.argsort(ids, kind="stable")
            ids, matrix = ids[order], matrix[order]
        ids, matrix = np.ascontiguousarray(ids), np.ascontiguousarray(matrix)
        dense = None
        if len(ids) and int(ids[-1]) - int(ids[0]) < DENSE_SLOTS_PER_SOURCE * len(ids):
            dense = np.full(int(ids[-1]) - int(ids[0]) + 1, -1, dtype=np.int32)
            dense[ids - ids[0]] = np.arange(len(ids), dtype=np.int32)
        return cls(ids, matrix, dense)

    def lookup(self, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row positions, found mask) of `src` in this table; a position means something only where
        found."""
        if not len(self.ids):
            return np.zeros(len(src), dtype=np.int64), np.zeros(len(src), dtype=bool)
        if self.dense is not None:
            offset = src - self.ids[0]
            inside = (offset >= 0) & (offset < len(self.dense))
            pos = np.maximum(self.dense[np.where(inside, offset, 0)], 0)
            # Re-checked against the ids: an offset that wrapped around int64 cannot match.
            return pos, inside & (self.ids[pos] == src)
        pos = np.minimum(np.searchsorted(self.ids, src), len(self.ids) - 1)
        return pos, self.ids[pos] == src


@dataclass(frozen=True)
class Adjacency:
    """A layer's neighbor rows for broadcasting beside its `Projections`, so each target's rows are
    looked up in the map over the targets and nothing is shuffled: rows sorted by (dst, src,
    weight), the order `transforms.gather` gives them, each target's rows contiguous.

    Rows whose source is not in the projection table are left out when it is built (dangling, as in
    every other way of running the layer); rows whose target is not a node are never looked up."""

    dst: np.ndarray  # [targets with rows] int64, ascending
    offsets: np.ndarray  # [targets with rows + 1] int64: dst[i]'s rows are offsets[i]:offsets[i+1]
    pos: np.ndarray  # [rows] int32 (int64 past 2**31 sources), each row's source row in the projections
    weight: np.ndarray  # [rows] float64

    @classmethod
    def build(cls, dst: np.ndarray, src: np.ndarray, weight: np.ndarray, table: Projections) -> Adjacency:
        """From neighbor rows in any order and the projection table their sources name."""
        pos, found = table.lookup(src)
        dst, src, weight, pos = dst[found], src[found], weight[found], pos[found]
        order = np.lexsort((weight, src, dst))
        dst, weight, pos = dst[order], weight[order], pos[order]
        change = np.flatnonzero(np.r_[True, dst[1:] != dst[:-1]]) if len(dst) else np.zeros(0, np.int64)
        offsets = np.r_[change, len(dst)].astype(np.int64)
        index_type = np.int32 if len(table.ids) < 2**31 else np.int64
        return cls(dst[change].copy(), offsets, pos.astype(index_type), np.ascontiguousarray(weight))

    def rows_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For targets `ids` (any order): (each row's target index, its source row, its weight, the
        number of rows of each target), the rows of each target together and in stored order."""
        at = np.minimum(np.searchsorted(self.dst, ids), max(len(self.dst) - 1, 0))
        found = (self.dst[at] == ids) if len(self.dst) else np.zeros(len(ids), dtype=bool)
        start = np.where(found, self.offsets[at], 0)
        counts = np.where(found, self.offsets[np.minimum(at + 1, len(self.offsets) - 1)] - start, 0)
        segment = np.repeat(np.arange(len(ids), dtype=np.int64), counts)
        first = np.cumsum(counts) - counts  # where each target's rows start in the output
        rows = np.repeat(start - first, counts) + np.arange(int(counts.sum()), dtype=np.int64)
        return segment, self.pos[rows].astype(np.int64), self.weight[rows], counts


# The `kind` of a gathered row (schemas GATHERED): a target's own row sorts before its neighbor rows.
OWN_ROW, NEIGHBOR_ROW = 0, 1


@dataclass
class _Targets:
    """Consecutive targets of a pooling task, in row order: what has been seen of each so far."""

    ids: np.ndarray  # [n] int64
    selfs: np.ndarray  # [n, self_dim] float32, h_u(k-2); zeros until the own row has been seen
    present: np.ndarray  # [n] bool, whether the own row has been seen
    state: PoolState  # [n] partial pooling of the neighbor rows seen
    rows: np.ndarray  # [n] int64, neighbor rows seen

    def split_last(self) -> tuple[_Targets, _Targets]:
        """(every target but the last, the last), for the last may continue in the next batch."""
        n = len(self.ids)
        last = n - 1
        head = _Targets(
            self.ids[:last],
            self.selfs[:last],
            self.present[:last],
            self.state.rows(slice(0, last)),
            self.rows[:last],
        )
        tail = _Targets(
            self.ids[last:],
            self.selfs[last:].copy(),
            self.present[last:],
            self.state.rows(slice(last, n)),
            self.rows[last:],
        )
        return head, tail

    def absorb(self, carry: _Targets, mode: str) -> None:
        """Fold `carry`, the previous batch's last target, into this batch's first, the same target."""
        merged = merge(carry.state, self.state.rows(slice(0, 1)), mode)
        self.state.acc[0], self.state.norm[0] = merged.acc[0], merged.norm[0]
        self.rows[0] += carry.rows[0]
        if carry.present[0]:
            self.selfs[0], self.present[0] = carry.selfs[0], True


def _own_vectors(
    batch: pa.RecordBatch, segment: np.ndarray, n: int, self_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """([n, self_dim] own vectors, [n] whether seen) of a batch's n targets from their own rows."""
    is_own = batch.column("kind").to_numpy() == OWN_ROW
    selfs = np.zeros((n, self_dim), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    if self_dim == 0:  # boards without features: the own term is empty
        own_rows = np.zeros((int(is_own.sum()), 0), dtype=np.float32)
    else:
        # self_vec is set on own rows only, and to_matrix keeps the non-null rows in order.
        own_rows = to_matrix(batch.column("self_vec"), self_dim)
    if len(own_rows) != int(is_own.sum()):
        raise ValueError("a target's own row has no vector")
    selfs[segment[is_own]] = own_rows
    present[segment[is_own]] = True
    return selfs, present


def _messages(
    batch: pa.RecordBatch, width: int, precision: str, table: Projections | None
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
    """(mask of the rows pooled, a message matrix, the matrix row of each pooled row or None): the
    neighbor rows' `proj` from the rows themselves (one matrix row per pooled row, in order), or
    the broadcast `table`'s whole matrix with the rows' positions in it (rows whose source it lacks
    are dropped), so nothing is gathered row by row."""
    is_message = batch.column("kind").to_numpy() == NEIGHBOR_ROW
    if table is not None:
        src = pc.fill_null(batch.column("src"), 0).to_numpy()  # own rows have no source
        pos, found = table.lookup(src)
        is_message &= found  # a source that is not a node: dangling, dropped
        return is_message, torch.from_numpy(table.matrix), torch.from_numpy(pos[is_message].astype(np.int64))
    messages = to_matrix(batch.column("proj"), width, precision)  # set on neighbor rows only, in order
    if len(messages) != int(is_message.sum()):
        raise ValueError("a neighbor row has no projection")
    return is_message, torch.from_numpy(messages), None


def _segments(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """(each target's id, in row order; each row's target index) of a batch sorted by dst."""
    dst = batch.column("dst").to_numpy()
    change = dst[1:] != dst[:-1]
    return dst[np.flatnonzero(np.r_[True, change])], np.cumsum(np.r_[False, change])


def _batch_targets(batch: pa.RecordBatch, conv, ref: ModelRef, table: Projections | None) -> _Targets:
    """The targets of one batch, sorted by (dst, kind, src), each with its rows pooled."""
    ids, segment = _segments(batch)
    n = len(ids)
    selfs, present = _own_vectors(batch, segment, n, conv.dims.self_dim)
    width = conv.dims.message_dim(ref.through_w)
    is_message, messages, index = _messages(batch, width, ref.projection_precision, table)
    weights = torch.from_numpy(batch.column("weight").to_numpy(zero_copy_only=False)[is_message])
    state = partial_pool(messages, torch.from_numpy(segment[is_message]), weights, n, conv.pooling, index)
    rows = np.bincount(segment[is_message], minlength=n)
    return _Targets(ids, selfs, present, state, rows)


def _whole_targets(batches: Iterator[pa.RecordBatch], conv_of, make) -> Iterator[_Targets]:
    """The targets of batches sorted by target, each once with all its rows: a batch's last target
    is carried as a partial state into the next batch, so memory does not grow with a hub's degree.
    `conv_of()` gives the layer (loading the model on the first non-empty batch); `make(batch,
    conv)` a batch's `_Targets`."""
    carry: _Targets | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        conv = conv_of()
        targets = make(batch, conv)
        if carry is not None:
            if carry.ids[0] == targets.ids[0]:
                targets.absorb(carry, conv.pooling)
            else:
                yield carry
        first, carry = targets.split_last()
        yield first
    if carry is not None:
        yield carry


class _Layer:
    """A task's model and layer k, loaded on first use (after the fault-injection point `step`)."""

    def __init__(self, ref: ModelRef, k: int, step: str) -> None:
        self.ref, self.k, self.step = ref, k, step
        self.model = self.device = self.conv = None

    def __call__(self):
        if self.model is None:
            inject_fault(self.step, self.k)
            self.model, self.device = get_model(self.ref)
            self.conv = self.model.conv(self.k)
        return self.conv


def pool_and_combine_batches(
    batches: Iterator[pa.RecordBatch],
    ref: ModelRef,
    k: int,
    written=None,
    pooled=None,
    projections=None,
    with_head: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Steps 2 and 3 of layer k over rows sorted by (dst, kind, src) in each partition.

    Each target u arrives as its own row (OWN_ROW, self_vec = h_u(k-2)) followed by its neighbor
    rows (NEIGHBOR_ROW, weight, proj). Pooling is a segment reduction over the sorted rows; the last
    target of a batch is carried as a partial state into the next, so memory does not grow with a
    hub's degree. Neighbor rows of an id that has no own row (not a node of the target type) are
    dropped. With `projections` (a broadcast of `Projections`), neighbor rows carry no `proj` and are
    looked up by source id instead; rows whose source is unknown are dropped.
    Emits (node_id, vec = h_u(k)), or with `with_head` (the last pin layer) the output head on it,
    (pin_id, embedding z_u) as published; `written` counts targets and `pooled` neighbor rows used.
    """
    table = projections.value if projections is not None else None
    layer = _Layer(ref, k, "pool")

    def make(batch: pa.RecordBatch, conv) -> _Targets:
        return _batch_targets(batch, conv, ref, table)

    for targets in _whole_targets(batches, layer, make):
        out = _combine(layer, targets, written, pooled, with_head)
        if out is not None:
            yield out


def pool_local_batches(
    batches: Iterator[pa.RecordBatch],
    ref: ModelRef,
    k: int,
    projections,
    adjacency,
    written=None,
    pooled=None,
    with_head: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Steps 2 and 3 of layer k as a map over the targets (node_id, vec = h_u(k-2)), in any order,
    with both the projections (`Projections`) and the neighbor rows (`Adjacency`) broadcast: each
    target's rows are looked up, pooled and combined in the batch that holds it, so neither the
    targets nor their rows are shuffled. Emits what `pool_and_combine_batches` emits."""
    table, rows_table = projections.value, adjacency.value
    layer = _Layer(ref, k, "pool")
    messages = torch.from_numpy(table.matrix)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        conv = layer()
        ids = batch.column("node_id").to_numpy()
        n = len(ids)
        selfs = to_matrix(batch.column("vec"), conv.dims.self_dim) if conv.dims.self_dim else None
        if selfs is None:
            selfs = np.zeros((n, 0), dtype=np.float32)
        elif len(selfs) != n:
            raise ValueError("a target's own row has no vector")
        segment, index, weights, counts = rows_table.rows_of(ids)
        state = partial_pool(
            messages,
            torch.from_numpy(segment),
            torch.from_numpy(weights),
            n,
            conv.pooling,
            torch.from_numpy(index),
        )
        targets = _Targets(ids, selfs, np.ones(n, dtype=bool), state, counts.astype(np.int64))
        out = _combine(layer, targets, written, pooled, with_head)
        if out is not None:
            yield out


# The `kind` of a merged row (schemas MERGED): a part's partial state stands where its neighbor rows
# would, after the target's own row.
PARTIAL_ROW = NEIGHBOR_ROW


def pool_part_batches(
    batches: Iterator[pa.RecordBatch], ref: ModelRef, k: int, projections, part: int
) -> Iterator[pa.RecordBatch]:
    """Step 2 of layer k for one part of its sources (projections broadcast in parts): neighbor rows
    (dst, src, weight) sorted by (dst, src, weight) in each partition, each source looked up in the
    broadcast `Projections` of the part (rows whose source it lacks are dropped) -> one partial state
    per target with rows (schemas PARTIALS: dst, part, rows, norm, acc as float32)."""
    table = projections.value
    layer = _Layer(ref, k, "pool")

    def make(batch: pa.RecordBatch, conv) -> _Targets:
        ids, segment = _segments(batch)
        n = len(ids)
        pos, found = table.lookup(batch.column("src").to_numpy())
        weights = torch.from_numpy(batch.column("weight").to_numpy(zero_copy_only=False)[found])
        index = torch.from_numpy(pos[found].astype(np.int64))
        messages = torch.from_numpy(table.matrix)
        state = partial_pool(messages, torch.from_numpy(segment[found]), weights, n, conv.pooling, index)
        rows = np.bincount(segment[found], minlength=n)
        selfs = np.zeros((n, 0), dtype=np.float32)
        return _Targets(ids, selfs, np.ones(n, dtype=bool), state, rows)

    for targets in _whole_targets(batches, layer, make):
        keep = targets.rows > 0  # a target none of whose sources is in the part has no partial
        if not keep.any():
            continue
        state = targets.state.rows(torch.from_numpy(keep))
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(targets.ids[keep], pa.int64()),
                pa.array(np.full(int(keep.sum()), part, dtype=np.int32)),
                pa.array(targets.rows[keep].astype(np.int64)),
                pa.array(state.norm.numpy()),
                to_binary(_numpy(state.acc)),
            ],
            ["dst", "part", "rows", "norm", "acc"],
        )


def _merged_targets(batch: pa.RecordBatch, conv, through_w: bool) -> _Targets:
    """The targets of one batch of merged rows, sorted by (dst, kind, part): own rows and the parts'
    partial states folded in part order."""
    ids, segment = _segments(batch)
    n = len(ids)
    selfs, present = _own_vectors(batch, segment, n, conv.dims.self_dim)
    is_partial = batch.column("kind").to_numpy() == PARTIAL_ROW
    acc = to_matrix(batch.column("acc"), conv.dims.message_dim(through_w))  # on partial rows only, in order
    if len(acc) != int(is_partial.sum()):
        raise ValueError("a partial row has no state")
    norm = pc.fill_null(batch.column("norm"), 0.0).to_numpy()[is_partial]
    partials = PoolState(torch.from_numpy(acc), torch.from_numpy(norm))
    state = fold(partials, torch.from_numpy(segment[is_partial]), n, conv.pooling)
    counts = pc.fill_null(batch.column("rows"), 0).to_numpy()[is_partial]
    rows = np.bincount(segment[is_partial], weights=counts, minlength=n).astype(np.int64)
    return _Targets(ids, selfs, present, state, rows)


def combine_parts_batches(
    batches: Iterator[pa.RecordBatch],
    ref: ModelRef,
    k: int,
    written=None,
    pooled=None,
    with_head: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Step 3 of layer k after its parts were pooled: rows sorted by (dst, kind, part), each target's
    own row then its partial states -> what `pool_and_combine_batches` emits. Partial states of an
    id with no own row (not a node of the target type) are dropped."""
    layer = _Layer(ref, k, "pool")

    def make(batch: pa.RecordBatch, conv) -> _Targets:
        return _merged_targets(batch, conv, ref.through_w)

    for targets in _whole_targets(batches, layer, make):
        out = _combine(layer, targets, written, pooled, with_head)
        if out is not None:
            yield out


def _combine(layer: _Layer, targets: _Targets, written, pooled, with_head: bool) -> pa.RecordBatch | None:
    """h_u(k) of the targets whose own row was seen, as (node_id, vec), or `with_head` the output
    head on it as (pin_id, embedding); the rest are dangling."""
    conv, device = layer.conv, layer.device
    head = layer.model.head if with_head else None
    ids, selfs, rows, partial = targets.ids, targets.selfs, targets.rows, targets.state
    present = targets.present
    if not present.all():  # neighbor rows naming an id that is not a target node: dangling
        keep = torch.from_numpy(present)
        ids, selfs, rows, partial = ids[present], selfs[present], rows[present], partial.rows(keep)
    if len(ids) == 0:
        return None
    with torch.inference_mode():
        pooled_vecs = finalize(partial, conv.pooling).to(device)
        h = conv.from_pooled(torch.from_numpy(selfs).to(device), pooled_vecs, layer.ref.through_w)
        z = head(h) if head is not None else None
    if written is not None:
        written.add(len(ids))
    if pooled is not None:
        pooled.add(int(rows.sum()))
    if z is not None:
        return pa.RecordBatch.from_arrays(
            [pa.array(ids, pa.int64()), to_list(_numpy(z))], ["pin_id", "embedding"]
        )
    return pa.RecordBatch.from_arrays([pa.array(ids, pa.int64()), to_binary(_numpy(h))], ["node_id", "vec"])


def head_batches(batches: Iterator[pa.RecordBatch], ref: ModelRef) -> Iterator[pa.RecordBatch]:
    """Output head on the last pin layer: (node_id, vec = h_p(K)) -> (pin_id, embedding z_p) (for
    embed_new; the full run applies it in its last layer's map, `pool_and_combine_batches`)."""
    model = device = None
    for batch in batches:
        if model is None:
            inject_fault("head", 0)
            model, device = get_model(ref)
        h = to_matrix(batch.column("vec"), model.config.embed_dim)
        with torch.inference_mode():
            z = model.head(torch.from_numpy(h).to(device))
        yield pa.RecordBatch.from_arrays(
            [batch.column("node_id"), to_list(_numpy(z))], ["pin_id", "embedding"]
        )


def vectors_to_arrays(batches: Iterator[pa.RecordBatch], dim: int, id_name: str) -> Iterator[pa.RecordBatch]:
    """(node_id, vec BINARY) -> (id_name, embedding ARRAY<FLOAT>), for publishing board vectors."""
    for batch in batches:
        yield pa.RecordBatch.from_arrays(
            [batch.column("node_id"), to_list(to_matrix(batch.column("vec"), dim))], [id_name, "embedding"]
        )
