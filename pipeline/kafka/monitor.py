"""What Kafka's clients report between batches, turned into typed outcomes and few log lines.

librdkafka reports errors through `error_cb` (on its threads' behalf, inside poll/consume):
- fatal consumer errors -> `Fatal` at the next `check()` (exit 1);
- errors that may mean a deleted topic -> a metadata request decides (at most every 5 s, and
  after any failed batch); gone -> `TopicsGone` (one line, exit 2): retrying cannot bring a
  topic back, since the producer never auto-creates topics;
- "all brokers down" and transport errors -> one line a minute, not librdkafka's 20 a second.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError

from latentwatch.pipeline.errors import Fatal, UserError
from latentwatch.pipeline.kafka import clients

log = logging.getLogger("latentwatch.run")

TRANSPORT = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
             KafkaError._TIMED_OUT, KafkaError.NETWORK_EXCEPTION}


class TopicsGone(UserError):
    """One of the pipeline's topics was deleted while running."""


class KafkaMonitor:
    def __init__(self, settings, on_error_kind):
        self.settings = settings
        self._count = on_error_kind  # metrics hook: kind -> None
        self._fatal: str | None = None
        self._suspect: str | None = None
        self._last_check = -1e9
        self._last_error_log = 0.0
        self._last_down_log = -1e9

    def on_error(self, err: KafkaError, from_producer: bool = False) -> None:
        kind = "fatal" if err.fatal() else ("transport" if err.code() in TRANSPORT else "broker")
        self._count(kind)
        if err.fatal():
            if not from_producer:  # a producer is replaced (the sink); a consumer cannot be
                self._fatal = err.str()
        elif err.code() in clients.TOPIC_GONE:
            self._suspect = self._suspect or err.str()
            return  # decided by check(): logged there if the topic is still there
        now = time.monotonic()
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._last_error_log = now
            self.say_unreachable()
            return
        if now - self._last_error_log > 5 or err.fatal():
            self._last_error_log = now
            log.warning("Kafka: %s (librdkafka keeps retrying)", err.str())

    def on_messages(self, messages: list) -> list:
        """Consumer errors arrive as messages: report them, return the good ones."""
        good = []
        for msg in messages:
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                self.on_error(err)
        return good

    def check(self, client, after_failure: bool = False) -> None:
        """Raise Fatal or TopicsGone when the run must stop."""
        if self._fatal is not None:
            raise Fatal(self._fatal)
        if (self._suspect is None and not after_failure) or client is None:
            return
        now = time.monotonic()
        if now - self._last_check < 5:
            return
        self._last_check = now
        suspect, self._suspect = self._suspect, None
        missing = clients.missing_topics(client, self.settings.topics.names(), timeout=5)
        if missing:
            raise TopicsGone(clients.topics_gone_message(self.settings, missing))
        if suspect is not None:  # all there (or no answer): a passing error
            log.warning("Kafka: %s (librdkafka keeps retrying)", suspect)

    def say_unreachable(self) -> None:
        """One line a minute while Kafka is down."""
        now = time.monotonic()
        if now - self._last_down_log > 60:
            self._last_down_log = now
            log.warning("Kafka at %s is unreachable (all brokers down): waiting for it. Nothing is "
                        "committed before the broker acknowledges a batch's outputs, so processing "
                        "resumes where it stopped; if it lasts, the broker's log says why (e.g. 'all "
                        "log dirs ... have failed': its disk is full)", self.settings.kafka.bootstrap_servers)

    def after_failure(self) -> None:
        """A TCP probe of the bootstrap servers tells "Kafka is down" apart from other failures."""
        if not clients.bootstrap_reachable(self.settings.kafka.bootstrap_servers):
            self.say_unreachable()
