"""One writer per output root: the lease a job holds on the root it writes.

A run takes the lease before it deletes or writes anything under ROOT, renews it while it runs,
checks that it still holds it before every commit and every delete (fencing: jobs.lib.io calls
`fence`), and releases it at the end, also when it fails. The lease is a generation of small files
ROOT/_lease/<generation>.json; the holder is the run that created the highest generation, its
heartbeat is that file's modification time. Creating the next generation is an atomic
create-if-absent, so of two runs starting together, or two runs taking over the same stale lease,
exactly one wins:

- local paths: link(2) of a fully written private file, which fails when the name exists (POSIX);
- HDFS: FileSystem.create(overwrite=false), decided by the NameNode;
- object stores (s3a, gs, abfs): only where the store does conditional writes; elsewhere two runs
  can both believe they hold the lease.

A lease whose heartbeat is older than the timeout is taken over (the run that held it was killed):
the taker logs it and creates the next generation; the old holder, if it was only stalled, finds a
higher generation at its next fence check and stops (LeaseLostError).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from jobs.lib import io

log = logging.getLogger("pinsage.lease")

LEASE_DIR = "_lease"
# Shorter than the nightly DAG's retry delay (5 minutes), so the retry of a killed run proceeds.
DEFAULT_TIMEOUT_S = 120.0


class LeaseBusyError(Exception):
    """Another run holds the lease on the root: this run wrote nothing."""

    def __init__(self, root: str, holder: dict, seen: float) -> None:
        self.root, self.holder, self.seen = root, holder, seen
        super().__init__(
            f"{root} is being written by run {holder.get('run_id', '?')} "
            f"(started {holder.get('started', '?')}, last seen {stamp(seen)})"
        )


class LeaseLostError(Exception):
    """This run's lease was taken over (its heartbeat had stopped): it must not write again."""


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _generation(name: str) -> int | None:
    stem, dot, ext = name.partition(".")
    return int(stem) if ext == "json" and stem.isdigit() else None


class Lease:
    """A lease on `root` held through `files` (jobs.lib.io.LocalFiles or HadoopFiles); `acquire`
    makes one."""

    def __init__(self, files, root: str, generation: int, record: dict, timeout_s: float) -> None:
        self.files, self.root, self.generation = files, root, generation
        self.record, self.timeout_s = record, timeout_s
        self.path = lease_path(root, generation)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Raise LeaseLostError unless this run still holds the lease (no higher generation, its own
        file still there and naming this run)."""
        if self.lost is None:
            self.lost = self._loss()
        if self.lost is not None:
            raise LeaseLostError(f"{self.root}: run {self.record['run_id']} {self.lost}; it stopped writing")

    def _loss(self) -> str | None:
        newer = [g for g in generations(self.files, self.root) if g > self.generation]
        if newer:
            holder = read_record(self.files, lease_path(self.root, max(newer)))
            return f"lost its lease to run {holder.get('run_id', '?')}"
        if read_record(self.files, self.path).get("run_id") != self.record["run_id"]:
            return "lost its lease (its lease file is gone)"
        return None

    def heartbeat(self) -> None:
        """Renew the lease (its file's modification time); a lease found taken over is lost."""
        if self.lost is None and not self.files.touch(self.path):
            self.lost = "lost its lease (its lease file is gone)"

    def note(self, **fields: str) -> None:
        """Add fields to the lease record (the run key once the inputs are read)."""
        self.record.update(fields)
        self.files.replace(self.path, _encode(self.record))

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.timeout_s / 4):
                try:
                    self.heartbeat()
                except Exception:  # a storage hiccup: the next beat, or the fence check, decides
                    log.warning("lease heartbeat on %s failed", self.root, exc_info=True)

        self._thread = threading.Thread(target=beat, name=f"lease {self.root}", daemon=True)
        self._thread.start()

    def release(self, remove_root: bool = False) -> None:
        """Stop renewing and remove the lease file, unless the lease was taken over meanwhile; then
        ROOT/_lease once empty, and with `remove_root` ROOT too once empty (a run that wrote
        nothing leaves no trace of its lease)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost is None and self._loss() is None:
            self.files.delete(self.path)
            self.files.remove_empty_folder(f"{self.root.rstrip('/')}/{LEASE_DIR}")
            if remove_root:
                self.files.remove_empty_folder(self.root)


def lease_path(root: str, generation: int) -> str:
    return f"{root.rstrip('/')}/{LEASE_DIR}/{generation:012d}.json"


def generations(files, root: str) -> list[int]:
    found = (_generation(name) for name in files.names(f"{root.rstrip('/')}/{LEASE_DIR}"))
    return sorted(g for g in found if g is not None)


def read_record(files, path: str) -> dict:
    raw = files.read(path)
    try:
        record = json.loads(raw) if raw else {}
    except ValueError:  # caught mid-rewrite by `note`
        record = {}
    return record if isinstance(record, dict) else {}


def _encode(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


def acquire(
    files,
    root: str,
    run_id: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    now: Callable[[], float] = time.time,
    shown_root: str | None = None,
) -> Lease:
    """Take the lease on `root` for `run_id`, or raise LeaseBusyError naming the run that holds it. A
    holder silent for more than `timeout_s` seconds is taken over (logged). `shown_root` names the
    root in messages (default `root`)."""
    record = {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": stamp(now()),
        "root": shown_root or root,
    }
    for _ in range(10):  # each pass either wins, finds a live holder, or lost a race to a new one
        found = generations(files, root)
        generation = 1
        if found:
            top = lease_path(root, found[-1])
            seen = files.modified(top)
            if seen is None:  # released or taken over between listing and looking
                continue
            holder = read_record(files, top)
            for _ in range(20):  # on HDFS a file being created reads empty until its writer closes it
                if holder or now() - seen >= timeout_s:
                    break
                time.sleep(0.05)
                holder = read_record(files, top)
            if now() - seen < timeout_s:
                raise LeaseBusyError(shown_root or root, holder, seen)
            generation = found[-1] + 1
            log.warning(
                "taking over the lease on %s from run %s (started %s, last seen %s, more than %.0f s ago)",
                shown_root or root,
                holder.get("run_id", "?"),
                holder.get("started", "?"),
                stamp(seen),
                timeout_s,
            )
            record["took_over_from"] = holder.get("run_id", "?")
        if files.create_new(lease_path(root, generation), _encode(record)):
            for old in (g for g in found if g < generation):
                files.delete(lease_path(root, old))
            return Lease(files, root, generation, record, timeout_s)
    raise LeaseBusyError(shown_root or root, {"run_id": "(several runs racing)"}, now())


_HELD: list[Lease] = []


def note_run_key(run_key: str) -> None:
    """Record the run key in the leases this process holds (a job calls it once it knows the key)."""
    for lease in _HELD:
        lease.note(run_key=run_key)


@contextmanager
def held(spark, root: str, run_id: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Lease]:
    """Hold the lease on `root` for the block: taken before it (LeaseBusyError when another run
    holds it), renewed by a heartbeat thread, checked before every commit and delete through
    jobs.lib.io, released after the block, also on failure."""
    files, where = io.small_files(spark, root)
    existed = files.exists(where)
    lease = acquire(files, where, run_id, timeout_s, shown_root=root)
    lease.start_heartbeat()
    _HELD.append(lease)
    io.add_fence(lease.check)
    try:
        yield lease
    finally:
        io.remove_fence(lease.check)
        _HELD.remove(lease)
        lease.release(remove_root=not existed)
