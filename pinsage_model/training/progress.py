"""Progress lines for long training steps: counts, elapsed time and an estimate of the time left,
logged at most every `every` seconds (and at the end), so a step of many minutes is never silent."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

PROGRESS_SECONDS = 30.0


class Progress:
    """Call `update(done)` as work completes; logs `what: done/total (p%), Ns, about Ms left`."""

    def __init__(
        self,
        what: str,
        total: int,
        log: logging.Logger,
        every: float = PROGRESS_SECONDS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.what, self.total, self.log, self.every, self.clock = what, total, log, every, clock
        self.start = self.last = clock()

    def line(self, done: int, detail: str = "") -> str:
        elapsed = self.clock() - self.start
        share = done / self.total if self.total else 1.0
        left = elapsed * (1 - share) / share if share > 0 else float("nan")
        return (
            f"{self.what}: {done:,}/{self.total:,} ({100 * share:.0f}%), {elapsed:.0f}s, "
            f"about {left:.0f}s left" + (f", {detail}" if detail else "")
        )

    def update(self, done: int, detail: str = "") -> None:
        """Log a line when `every` seconds have passed since the last or the work is done; `detail`
        is added to it."""
        now = self.clock()
        if now - self.last >= self.every or done >= self.total:
            self.last = now
            self.log.info("%s", self.line(done, detail))
