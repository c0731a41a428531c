"""Liveness and readiness of one pipeline process, served as `/healthz` and `/readyz` next to
`/metrics` (metrics.py `serve`).

The run loop reports to a `Health`; the HTTP server's threads only read it:
- `beat()` at every iteration of the loop (a batch processed, or an empty poll: idle with nothing
  to do), and inside the loops that wait for Kafka (an outage is not a stall: restarting the
  process would not bring Kafka back, and it resumes where it stopped);
- `model_loaded(name)` once the model has scored its warm-up batch;
- `assignment(n)` from the consumer's assign callback (n may be 0: the group has more members
  than partitions, so this one waits for work), `waiting_for_assignment()` when partitions are
  revoked or lost (a rebalance under way).

liveness  (`/healthz`): the loop iterated within `stall_after_s`. Fails on a stalled loop (a call
                        that never returns, a deadlock): the orchestrator should restart the process.
readiness (`/readyz`):  the model is loaded and the consumer has had its first answer from the
                        group (partitions, or none because the group is waiting for work). A later
                        rebalance does not make it unready: every member goes through one when a
                        pod is added or replaced, and readiness flapping then would stall rollouts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from latentwatch.pipeline.events import Listener


class Health(Listener):
    def __init__(self, stall_after_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.stall_after_s = stall_after_s
        self._clock = clock
        # Reentrant: stopping() runs in a signal handler, which may interrupt this same thread
        # inside another method's `with self._lock` (a plain Lock would deadlock there).
        self._lock = threading.RLock()
        self._last_beat = clock()  # a process that just started is alive until it stalls
        self._model: str | None = None
        self._partitions: int | None = None  # None: no answer from the group yet
        self._rebalancing = False
        self._stopping = False
        self._registry_down: tuple[float, str] | None = None  # (since, why) while the schema registry is unreachable
        self._failed: str | None = None  # a failure the user must fix (the run is ending with it)

    # -- reported by the run loop --------------------------------------------------------------
    def beat(self) -> None:
        self._last_beat = self._clock()  # one float store: no lock needed

    def model_loaded(self, name: str) -> None:
        with self._lock:
            self._model = name

    def assignment(self, partitions: int) -> None:
        with self._lock:
            self._partitions = partitions
            self._rebalancing = False

    def waiting_for_assignment(self) -> None:
        with self._lock:
            self._rebalancing = True

    def on_assigned(self, partitions) -> None:
        self.assignment(len(partitions))

    def on_revoked(self, partitions) -> None:
        self.waiting_for_assignment()

    def registry(self, ok: bool, why: str) -> None:
        """The schema registry answers again (`ok`), or not (`why`). Readiness stays as it is: like
        a Kafka outage, restarting or unrouting this process would not bring the registry back;
        the probe's text says that scoring waits for it."""
        with self._lock:
            if ok:
                self._registry_down = None
            elif self._registry_down is None:
                self._registry_down = (self._clock(), why)
    def on_changelog_short(self, topic: str, missing: list[int]) -> None:
        with self._lock:
            self._failed = f"state topic {topic} has no partition for assigned input partitions {missing}"

    def stopping(self) -> None:
        """Shutting down (SIGTERM): no longer ready, so no new work is routed here; still alive."""
        with self._lock:
            self._stopping = True

    # -- read by the HTTP server (and the demo) -----------------------------------------------
    def partitions(self) -> int | None:
        """Partitions held now; None until the group first answered."""
        with self._lock:
            return self._partitions

    def liveness(self) -> tuple[bool, str]:
        age = self._clock() - self._last_beat
        if age > self.stall_after_s:
            return False, (f"run loop stalled: no iteration for {age:.0f} s "
                           f"(health.stall_after_s = {self.stall_after_s:g})")
        return True, f"run loop iterated {age:.1f} s ago"

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            model, partitions, rebalancing, stopping = (self._model, self._partitions, self._rebalancing,
                                                        self._stopping)
            failed = self._failed
        if failed:
            return False, failed
        if stopping:
            return False, "shutting down"
        if model is None:
            return False, "model not loaded"
        if partitions is None:
            return False, "joining the consumer group: no assignment yet"
        down = self._registry_down
        if down is not None:
            return True, (f"model {model} loaded; schema registry unreachable for {self._clock() - down[0]:.0f} s "
                          f"({down[1]}): scoring waits for it, nothing is committed past")
        if rebalancing:
            return True, f"model {model} loaded; consumer group rebalancing"
        if partitions == 0:
            return True, f"model {model} loaded; no partitions assigned: the group is waiting for work"
        return True, f"model {model} loaded; {partitions} partitions assigned"
