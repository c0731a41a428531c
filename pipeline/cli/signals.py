"""Ctrl+C and SIGTERM for the commands that run until stopped (simulate, replay, alerts tail and
forward, broker start --foreground): a clean stop instead of a KeyboardInterrupt traceback.
`run` has its own handler (a second signal exits at once)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An Event that SIGINT or SIGTERM sets while inside, so a loop stops cleanly (flushes,
    commits, closes its files); the previous handlers come back on the way out. Outside the main
    thread (where Python cannot install handlers) a plain Event."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
