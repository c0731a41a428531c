"""Operator commands through a compacted control topic (issue 30.2), keyed by sensor id.

    {"command": "accept" | "mute" | "unmute", "sensor_id": "pump-7", "at": <event time>,
     "until": <event time, mute only>, "by": "alice", "reason": "maintenance until 14:00"}

Times are ISO 8601 (naive = UTC) or epoch seconds (`times.parse_time`); `at` is the *event time*
from which the command applies: to the sensor's first reading at or after `at`, and every later
one (the CLI sets it to now). So a command is applied in event-time order with the input, the
same live and on replay, whatever the batching; a command whose `at` is not after the one last
applied to the sensor (`state.Control.applied`) is a repeat and does nothing (idempotent). What a
command did lives in the sensor's state (`state.Control`, in the changelog): it survives SIGKILL,
restart and rebalance like the rest.

- `accept`: the new normal. The sensor's baseline is learnt again from its next `cold_start`
  readings (the cold-start mechanism of detectors/baselines.py: the fleet's baseline meanwhile),
  its EWMA restarts at the rule's center, and an open episode closes with `reason: "accepted"`.
  A sensor with an own model is scored by the shared model from then on (its own model was fitted
  to the old normal). Needs a model trained per sensor (baselines); without, only the EWMA restart
  and the close.
- `mute` until a time: maintenance. Readings are still scored and their state kept, but no alert,
  no process episode and no health event is published for readings with event time in [at,
  until); each reading that would have alarmed (over its instant limit) is counted as suppressed
  (`latentwatch_alarms_suppressed_total`, and per sensor in `sensors show`). Held back, not
  marked: a maintenance window is noise to the people the alerts serve.
- `unmute`: ends a mute now (at `at`).

Every member of the group reads the whole control topic (its own consumer, no group, from the
beginning at start, then following it), so a command reaches the member that owns the sensor
whichever that is; only the latest command per sensor is kept (the topic is compacted by sensor
id), at most `MAX_COMMANDS`. A malformed command is a dead letter (reason `control_invalid`, the
detail says why) produced by the member that owns input partition 0 (once per process start; the
headers name its source offset), never a crash.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from latentwatch.pipeline.times import parse_time

log = logging.getLogger(__name__)

COMMANDS = ("accept", "mute", "unmute")
MAX_COMMANDS = 100_000  # latest command per sensor kept in memory (~300 B each)
MAX_TEXT = 500  # characters of `by` and `reason`


class BadCommand(ValueError):
    """A control record that is not a command; the message says why."""


@dataclass(frozen=True, slots=True)
class Command:
    command: str
    sensor_id: str
    at: float
    until: float = 0.0
    by: str = ""
    reason: str = ""

    def to_json(self) -> bytes:
        """Times as epoch seconds, exactly (an ISO string in milliseconds could move `at` past
        the reading it was meant to apply from)."""
        d = {"command": self.command, "sensor_id": self.sensor_id, "at": self.at, "by": self.by,
             "reason": self.reason}
        if self.command == "mute":
            d["until"] = self.until
        return orjson.dumps(d)


def parse(value: bytes | None, key: bytes | None) -> Command:
    """The command in a control record; BadCommand when it is none."""
    if value is None:
        raise BadCommand("empty value (a tombstone is not a command)")
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadCommand(f"not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise BadCommand("not a JSON object")
    cmd = d.get("command")
    if cmd not in COMMANDS:
        raise BadCommand(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
    sid = d.get("sensor_id")
    if not isinstance(sid, str) or not sid:
        raise BadCommand("sensor_id is not a non-empty string")
    if key is not None and key != sid.encode():
        raise BadCommand(f"the key {key[:60]!r} is not the sensor id {sid[:60]!r} (the topic is compacted by it)")
    for name in ("by", "reason"):
        if not isinstance(d.get(name), str) or not d[name].strip():
            raise BadCommand(f"{name!r} is missing: a command says who gave it and why")
        if len(d[name]) > MAX_TEXT:
            raise BadCommand(f"{name!r} is longer than {MAX_TEXT} characters")
    at = _time(d.get("at"), "at")
    until = 0.0
    if cmd == "mute":
        until = _time(d.get("until"), "until")
        if until <= at:
            raise BadCommand("a mute's 'until' must be after its 'at'")
    return Command(cmd, sid, at, until, d["by"], d["reason"])


def _time(v, name: str) -> float:
    if v is None or isinstance(v, bool):
        raise BadCommand(f"{name!r} is missing (an ISO 8601 time or epoch seconds)")
    try:
        t = parse_time(v)
    except (TypeError, ValueError, OverflowError):
        raise BadCommand(f"{name!r} is not a time: {str(v)[:60]!r}") from None
    if not math.isfinite(t):
        raise BadCommand(f"{name!r} is not a finite time")
    return float(t)


class Commands:
    """The latest command per sensor id, bounded (least recently updated dropped first)."""

    def __init__(self, limit: int = MAX_COMMANDS):
        self.limit = limit
        self._by_sensor: OrderedDict[str, Command] = OrderedDict()
        self.seen = 0  # commands taken (metrics)

    def put(self, c: Command) -> None:
        old = self._by_sensor.get(c.sensor_id)
        if old is not None and old.at > c.at:  # an older command after a newer one: the newer stays
            return
        self._by_sensor[c.sensor_id] = c
        self._by_sensor.move_to_end(c.sensor_id)
        self.seen += 1
        while len(self._by_sensor) > self.limit:
            self._by_sensor.popitem(last=False)

    def get(self, sensor_id: str) -> Command | None:
        return self._by_sensor.get(sensor_id)

    def __len__(self) -> int:
        return len(self._by_sensor)


class ControlReader:
    """Follows the control topic from its beginning with a consumer of its own (no group):
    `poll()` takes what has arrived (never blocks), keeps commands in `commands`, and returns the
    malformed records as (message, reason, detail) for the dead-letter topic."""

    def __init__(self, settings, topic: str, commands: Commands | None = None, on_command=lambda name: None):
        from confluent_kafka import Consumer, TopicPartition

        from latentwatch.pipeline.kafka import clients

        conf = clients.tool_consumer_config(settings, {
            "group.id": f"{settings.group_id}-control-reader", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
        conf.pop("group.instance.id", None)
        self.topic = topic
        self.commands = commands if commands is not None else Commands()
        self._on_command = on_command  # metrics: each record taken, by command (or "invalid")
        self._consumer = Consumer(conf)
        meta = self._consumer.list_topics(topic, timeout=10)
        parts = meta.topics[topic].partitions if topic in meta.topics else {}
        self._consumer.assign([TopicPartition(topic, p, -2) for p in parts])  # -2: the beginning
        self.bad_total = 0

    def poll(self, max_messages: int = 10_000) -> list:
        return self._take(self._consumer.consume(max_messages, 0))

    def _take(self, msgs) -> list:
        bad = []
        for msg in msgs:
            if msg.error():
                continue
            try:
                c = parse(msg.value(), msg.key())
            except BadCommand as exc:
                self.bad_total += 1
                self._on_command("invalid")
                bad.append((msg, "control_invalid", str(exc)))
                log.warning("control topic %s offset %d: %s (dead-lettered)", msg.topic(), msg.offset(), exc)
                continue
            self.commands.put(c)
            self._on_command(c.command)
        return bad

    def catch_up(self, timeout_s: float = 10.0) -> list:
        """Read to the end of the control topic now (at start: commands before the first batch).
        Its end is asked again while the broker answers with a passing error (a leader moving:
        NOT_LEADER_FOR_PARTITION crashed `run` at start in the failover test); past `timeout_s`
        the run starts anyway and the commands arrive with `poll()` between batches."""
        import time

        from confluent_kafka import KafkaException

        bad, deadline = [], time.monotonic() + timeout_s
        ends: dict[int, int] = {}
        for tp in self._consumer.assignment():
            while tp.partition not in ends:
                try:
                    ends[tp.partition] = self._consumer.get_watermark_offsets(tp, timeout=5)[1]
                except KafkaException as exc:
                    if exc.args[0].fatal() or time.monotonic() >= deadline:
                        log.warning("control topic %s: its end is not known (%s): commands are read as they "
                                    "arrive", self.topic, exc.args[0].str())
                        return bad
                    time.sleep(0.5)
        done = {p: end == 0 for p, end in ends.items()}
        while not all(done.values()) and time.monotonic() < deadline:
            msgs = self._consumer.consume(10_000, 0.2)
            bad += self._take(msgs)
            for m in msgs:
                if not m.error() and m.offset() + 1 >= ends.get(m.partition(), 0):
                    done[m.partition()] = True
        return bad

    def close(self) -> None:
        try:
            self._consumer.close()  # nothing committed: this group id never holds offsets
        except Exception:  # noqa: BLE001 - closing at exit: nothing to do about it
            pass


def topic(settings) -> str:
    """The control topic: topics.control, else <input topic>.control."""
    return settings.topics.control or f"{settings.topics.input}.control"


def ensure(settings) -> str:
    """The control topic, created compacted (one partition) when missing. Returns its name."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from latentwatch.pipeline.errors import UserError
    from latentwatch.pipeline.kafka.changelog import TOPIC_CONFIG

    name = topic(settings)
    admin = AdminClient(settings.kafka.client_config())
    metadata = admin.list_topics(timeout=settings.startup_timeout_s)
    if name in metadata.topics:
        return name
    fut = admin.create_topics([NewTopic(name, 1, min(3, len(metadata.brokers)), config=TOPIC_CONFIG)])[name]
    try:
        fut.result(timeout=30)
        log.info("created control topic %s (1 partition, compacted)", name)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise UserError(f"could not create the control topic {name} ({exc.args[0].str()}): create it "
                            "compacted, or allow this client to") from None
    return name
