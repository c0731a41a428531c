"""librdkafka's log lines: every client logs through `LIBRDKAFKA_LOG` (`clients.client_config`
sets it as the `logger`), which holds back runs of alike warnings (`RepeatFilter`)."""

from __future__ import annotations

import logging
import re
import time

LIBRDKAFKA_LOG = logging.getLogger("latentwatch.librdkafka")  # every client logs through it


class RepeatFilter(logging.Filter):
    """Holds back warnings and errors like one passed less than `period` seconds ago (alike:
    equal but for numbers), then passes the next one with how many were held back.

    While a broker is down librdkafka logs every reconnect attempt at ERROR, about 20 lines a
    second per client, all alike; the run loop's own line says what is going on. Debug and info
    records (e.g. `debug=...` output) always pass.
    """

    def __init__(self, period: float = 60.0):
        super().__init__()
        self.period = period
        self._seen: dict[tuple[int, str], list] = {}  # kind -> [time passed, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        key = (record.levelno, re.sub(r"\d+", "#", message))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.period:
            seen[1] += 1
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = [now, 0]
        if seen is not None and seen[1]:
            record.msg, record.args = f"{message} ({seen[1]} more like it not shown)", None
        return True


# The clients log through this logger (conf["logger"], set by clients.client_config).
LIBRDKAFKA_LOG.addFilter(RepeatFilter())
