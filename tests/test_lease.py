"""One writer per output root (jobs.lib.lease): real processes racing for the lease on a local root,
a second run refused while the first holds it, a killed holder's lease taken over after its
timeout, fencing of a holder whose lease was taken over, and a job refused with exit status 3."""

from __future__ import annotations

import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from jobs.lib.io import LocalFiles
from jobs.lib.lease import LeaseBusyError, LeaseLostError, acquire, generations, lease_path, read_record

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUSY = re.compile(r"^(\S+) is being written by run (\S+) \(started (\S+), last seen (\S+)\)$")

# One contender: waits until the wall-clock moment argv[3], tries the lease on argv[1] as run
# argv[2], prints WON or BUSY <message>, holds a won lease (heartbeat on) until stdin closes.
CONTENDER = """
import sys, time
from jobs.lib.io import LocalFiles
from jobs.lib.lease import LeaseBusyError, acquire
root, run_id, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, at - time.time()))
try:
    lease = acquire(LocalFiles(), root, run_id, timeout_s=float(sys.argv[4]))
except LeaseBusyError as exc:
    print("BUSY", exc, flush=True)
    sys.exit(0)
lease.start_heartbeat()
print("WON", flush=True)
sys.stdin.read()
lease.release()
"""


def contender(root: str, run_id: str, at: float, timeout_s: float = 60) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CONTENDER, root, run_id, str(at), str(timeout_s)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_of_processes_started_at_the_same_moment_exactly_one_gets_the_lease(tmp_path):
    root = str(tmp_path / "out")
    at = time.time() + 3  # every interpreter is up and waiting by then
    procs = [contender(root, f"run-{i}", at) for i in range(4)]
    lines = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.stdin.close()
        p.wait(timeout=30)

    winners = [i for i, line in enumerate(lines) if line == "WON"]
    assert len(winners) == 1, lines
    for i, line in enumerate(lines):
        if i != winners[0]:
            match = BUSY.match(line.removeprefix("BUSY "))
            assert match and match[2] == f"run-{winners[0]}", line
    assert generations(LocalFiles(), root) == []  # released by the winner


def test_a_run_started_while_another_holds_the_lease_is_refused_naming_it(tmp_path):
    root = str(tmp_path / "out")
    first = contender(root, "first", time.time())
    assert first.stdout.readline().strip() == "WON"
    second = contender(root, "second", time.time())
    line = second.stdout.readline().strip()
    second.wait(timeout=30)
    match = BUSY.match(line.removeprefix("BUSY "))
    assert match and match[1] == root and match[2] == "first", line

    first.stdin.close()
    first.wait(timeout=30)
    lease = acquire(LocalFiles(), root, "third")  # released: the next run gets it at once
    assert read_record(LocalFiles(), lease.path)["run_id"] == "third"
    lease.release()


def test_a_killed_holders_lease_is_taken_over_after_its_timeout_and_the_takeover_logged(tmp_path, caplog):
    root = str(tmp_path / "out")
    holder = contender(root, "killed", time.time(), timeout_s=1.5)
    assert holder.stdout.readline().strip() == "WON"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)

    with pytest.raises(LeaseBusyError, match="being written by run killed"):
        acquire(LocalFiles(), root, "too-early", timeout_s=30)
    time.sleep(2)
    with caplog.at_level(logging.WARNING, logger="pinsage.lease"):
        lease = acquire(LocalFiles(), root, "retry", timeout_s=1.5)
    assert "taking over the lease" in caplog.text and "from run killed" in caplog.text
    assert lease.record["took_over_from"] == "killed"
    assert generations(LocalFiles(), root) == [lease.generation]  # the dead run's file is gone
    lease.check()
    lease.release()


def test_a_holder_whose_lease_was_taken_over_fails_its_next_fence_check_and_leaves_the_new_lease(tmp_path):
    files, root = LocalFiles(), str(tmp_path / "out")
    stalled = acquire(files, root, "stalled", timeout_s=1)
    old = time.time() - 10
    os.utime(stalled.path, (old, old))  # its heartbeat stopped ten seconds ago
    taker = acquire(files, root, "taker", timeout_s=1)

    with pytest.raises(LeaseLostError, match="run stalled lost its lease"):
        stalled.check()
    stalled.heartbeat()
    stalled.release()
    assert read_record(files, lease_path(root, taker.generation))["run_id"] == "taker"
    taker.check()
    taker.release()


def test_a_job_on_a_root_another_run_holds_exits_3_before_writing_anything(spark, tmp_path, capsys):
    from jobs.lib.cli import EXIT_BUSY
    from jobs.publish import main

    target = str(tmp_path / "current")
    lease = acquire(LocalFiles(), target, "nightly")
    try:
        assert main(["--source", str(tmp_path / "run"), "--target", target]) == EXIT_BUSY == 3
    finally:
        lease.release()
    err = capsys.readouterr().err
    assert re.search(
        rf"error: {re.escape(target)} is being written by run nightly \(started \S+, last seen", err
    )
    assert os.listdir(target) == []  # the job wrote nothing; the test's own lease is released

    # A run that holds the lease releases it also when it fails (here: its source does not exist),
    # leaving no trace of it.
    assert main(["--source", str(tmp_path / "run"), "--target", target]) == 2
    assert os.listdir(target) == []
