"""The stop budget: whether the process is stopping, and by when it must be done.

One object, made by the pipeline and handed to every part that waits on Kafka (the source's
fetch and rewind, the sink's flushes, both committers, the changelog restore, `in_thread`), in
place of the `lambda: self.stopping` / `lambda: self._deadline` pairs each used to take:

1. `stop()` (a signal handler may call it) starts the countdown: the deadline is
   `shutdown_timeout_s` from now; a second call changes nothing.
2. Loops look at `stopping` between waits and give up what is not durable yet.
3. Blocking calls are bounded by `left(limit)`: their own limit, or what is left of the budget
   when that is less; `passed()` says the budget is spent (`Stopping` is raised by the caller).

`StopBudget.never()` is one that never stops (tools and tests that have no shutdown).
"""

from __future__ import annotations

import threading
import time


class StopBudget:
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._event = threading.Event()
        self.deadline: float | None = None  # time.monotonic() by which a stop must be done

    @classmethod
    def never(cls) -> "StopBudget":
        return cls(float("inf"))

    def stop(self) -> None:
        if not self._event.is_set():
            self.deadline = time.monotonic() + self.timeout_s
            self._event.set()

    @property
    def stopping(self) -> bool:
        return self._event.is_set()

    def passed(self) -> bool:
        """The budget is spent: whatever still waits must be left behind."""
        return self.deadline is not None and time.monotonic() > self.deadline

    def left(self, limit: float) -> float:
        """`limit` seconds, or what is left of the budget when a stop is on and that is less."""
        if self.deadline is None:
            return limit
        return max(0.0, min(limit, self.deadline - time.monotonic()))
