"""`latentwatch sensors accept | mute | unmute | show`: what the operator knows, told to the
pipeline through the control topic (pipeline/control.py), and what the pipeline holds of a sensor."""

from __future__ import annotations

import argparse
import fnmatch
import getpass
import json
import time

from latentwatch.pipeline.cli.connection import add_connection_flags, connection_settings
from latentwatch.pipeline.errors import UserError

WHO_HELP = "who gives the command (default: the login name)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sensors", help="operator commands (accept a new normal, mute, unmute) and a sensor's state")
    ssub = p.add_subparsers(dest="sensors_command", metavar="ACTION", required=True)

    def command(name: str, text: str, description: str):
        c = ssub.add_parser(name, help=text, description=description)
        c.add_argument("sensor", help="the sensor id")
        c.add_argument("--reason", required=True, help="why (kept with the command and shown by `sensors show`)")
        c.add_argument("--by", default=None, help=WHO_HELP)
        c.add_argument("--at", default=None, metavar="TIME",
                       help="event time from which it applies (ISO 8601 or epoch seconds; default now)")
        c.add_argument("--topic", default=None, help="control topic (default: topics.control, else <topics.input>.control: sensor-readings.control)")
        add_connection_flags(c)
        c.set_defaults(func=_command, command_name=name)
        return c

    command("accept", "the sensor's current behaviour is its new normal",
            "Its baseline is learnt again from its next readings (the model's cold_start, default 500; "
            "their alarms are held back meanwhile), its EWMA restarts and its open episode closes with "
            "reason accepted. Applied once, by whichever member owns the sensor.")
    m = command("mute", "maintenance: no alerts from the sensor until a time",
                "Its readings are still scored and its state kept, but no alert, episode or health event is "
                "published until --until (or `sensors unmute`); each alarm held back is counted "
                "(latentwatch_alarms_suppressed_total; `sensors show`).")
    when = m.add_mutually_exclusive_group(required=True)
    when.add_argument("--until", default=None, metavar="TIME", help="end of the mute (ISO 8601 or epoch seconds)")
    when.add_argument("--for", dest="duration", default=None, metavar="DURATION",
                      help="length of the mute from --at: 90s, 45m, 2h, 1d")
    command("unmute", "end a mute now", "Alerts of the sensor are published again from --at (default now).")

    s = ssub.add_parser("show", help="baseline state, health, mute and open episodes of sensors",
                        description="Reads the state changelog of the group (what its members hold, as of "
                                    "their last committed batch) and the control topic; prints one block per "
                                    "sensor whose id matches PATTERN (shell wildcards: pump-*).")
    s.add_argument("pattern", help="a sensor id or a pattern (pump-*)")
    s.add_argument("--group-id", default=None, help="the run's group id (default: group_id, else latentwatch)")
    s.add_argument("--json", action="store_true", help="one JSON object per sensor")
    s.add_argument("--topic", default=None, help="control topic (default: topics.control, else <topics.input>.control: sensor-readings.control)")
    add_connection_flags(s)
    s.set_defaults(func=_show)


def _time(value: str, flag: str) -> float:
    from latentwatch.pipeline.times import parse_time

    try:
        return float(parse_time(value))
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{flag} {value!r}: give an ISO 8601 time (2026-12-06T14:00:00Z) or epoch seconds") from None


def _duration(value: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        n = float(value[:-1]) * units[value[-1]] if value and value[-1] in units else float(value)
    except ValueError:
        n = -1
    if not n > 0:
        raise UserError(f"--for {value!r}: give a positive duration such as 90s, 45m, 2h or 1d")
    return n


def _command(args) -> int:
    from confluent_kafka import KafkaException, Producer

    from latentwatch.pipeline import control
    from latentwatch.pipeline.kafka import clients

    at = _time(args.at, "--at") if args.at else time.time()
    until = 0.0
    if args.command_name == "mute":
        until = _time(args.until, "--until") if args.until else at + _duration(args.duration)
        if until <= at:
            raise UserError(f"--until is not after --at ({args.until}): a mute must end later than it starts")
    by = args.by or getpass.getuser()
    if not args.reason.strip():
        raise UserError("--reason is empty: say why, for whoever reads it later")
    cmd = control.Command(args.command_name, args.sensor, at, until, by, args.reason)
    control.parse(cmd.to_json(), args.sensor.encode())  # the pipeline's own check, before sending
    settings = connection_settings(args, {"topics.control": args.topic})
    try:
        topic = control.ensure(settings)
    except KafkaException as exc:
        raise UserError(f"Kafka at {settings.kafka.bootstrap_servers}: {exc}") from None
    errors = []
    producer = Producer(clients.tool_producer_config(settings, {"enable.idempotence": True}))
    producer.produce(topic, key=args.sensor.encode(), value=cmd.to_json(),
                     on_delivery=lambda err, _m: errors.append(err) if err else None)
    left = producer.flush(settings.startup_timeout_s)
    if left or errors:
        raise UserError(f"the command was not acknowledged by Kafka at {settings.kafka.bootstrap_servers}"
                        + (f": {errors[0]}" if errors else " in time"))
    from latentwatch.pipeline.times import iso

    print(f"{args.command_name} {args.sensor} from {iso(at)}" + (f" until {iso(until)}" if until else "")
          + f" by {by}: sent to {topic}")
    return 0


def _show(args) -> int:
    from latentwatch.pipeline import control
    from latentwatch.pipeline.kafka.changelog import state_topic

    settings = connection_settings(args, {"group_id": args.group_id, "topics.control": args.topic})
    entries = _read_compacted(settings, state_topic(settings), args.pattern)
    commands = _read_compacted(settings, control.topic(settings), args.pattern)
    from latentwatch.pipeline import state as st

    shown = 0
    sensors = sorted({k for _p, k in entries} | {k for _p, k in commands})
    for sid in sensors:
        info = {"sensor_id": sid, "partitions": []}
        for (p, k), value in sorted(entries.items()):
            if k != sid or value is None:
                continue
            try:
                e, _before, _written = st.unpack_record(value)
            except ValueError:
                continue
            info["partitions"].append(_describe(p, e))
        last = [v for (_p, k), v in commands.items() if k == sid and v is not None]
        if last:
            try:
                c = json.loads(control.parse(last[-1], sid.encode()).to_json())
                from latentwatch.pipeline.times import iso

                info["last_command"] = {**c, **{k: iso(c[k]) for k in ("at", "until") if k in c}}
            except control.BadCommand as exc:
                info["last_command"] = {"invalid": str(exc)}
        shown += 1
        if args.json:
            print(json.dumps(info))
        else:
            print(_block(info))
    if not shown:
        raise UserError(f"no sensor matches {args.pattern!r} in {state_topic(settings)} or {control.topic(settings)}")
    return 0


def _describe(partition: int, e) -> dict:
    from latentwatch.pipeline.times import iso

    d = {"partition": partition, "last_reading": iso(e.last_ts)}
    b = e.baseline
    d["baseline"] = "own" if b is None else ("learned" if b.learned else f"fleet ({b.seen} readings so far)")
    if e.control is not None and e.control.accepted > 0:
        d["baseline"] += f", re-learnt after an accept at {iso(e.control.accepted)}"
    h = e.health
    d["health"] = h.open_rules if h is not None else []
    ep = e.alarm.episode if e.alarm is not None else None
    d["open_episode"] = None if ep is None else {"since": iso(ep.started_ts), "readings": ep.count,
                                                 "peak_margin": round(ep.peak, 3)}
    c = e.control
    if c is not None:
        d["muted_until"] = iso(c.mute_until) if c.mute_until > e.last_ts else None
        d["suppressed"] = c.suppressed
        d["last_applied"] = {"at": iso(c.applied), "by": c.by, "why": c.why}
    return d


def _block(info: dict) -> str:
    lines = [info["sensor_id"]]
    for d in info["partitions"]:
        lines.append(f"  partition {d['partition']}: last reading {d['last_reading']}; baseline {d['baseline']}")
        lines.append(f"    health: {', '.join(d['health']) or 'ok'}")
        ep = d["open_episode"]
        lines.append(f"    open episode: since {ep['since']}, {ep['readings']} readings, peak x{ep['peak_margin']}"
                     if ep else "    open episode: none")
        if "suppressed" in d:
            lines.append(f"    muted until {d['muted_until']}" if d["muted_until"] else "    not muted")
            lines.append(f"    alarms held back by mutes: {d['suppressed']}; last command applied at "
                         f"{d['last_applied']['at']} by {d['last_applied']['by']}: {d['last_applied']['why']}")
    if not info["partitions"]:
        lines.append("  no state held (no reading since the command, or another group)")
    c = info.get("last_command")
    if c:
        lines.append("  last command on the control topic: " + (
            f"invalid ({c['invalid']})" if "invalid" in c else
            f"{c['command']} at {c['at']}" + (f" until {c['until']}" if c.get("until") else "")
            + f" by {c['by']}: {c['reason']}"))
    return "\n".join(lines)


def _read_compacted(settings, topic: str, pattern: str, timeout_s: float = 15.0) -> dict:
    """{(partition, key): latest value} of a topic read to its end (keys matching `pattern`)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from latentwatch.pipeline.kafka import clients

    consumer = Consumer(clients.tool_consumer_config(settings, {
        "group.id": f"latentwatch-sensors-show-{time.time_ns()}", "enable.auto.commit": False,
        "isolation.level": "read_committed", "auto.offset.reset": "earliest"}))
    out: dict = {}
    try:
        meta = consumer.list_topics(topic, timeout=settings.startup_timeout_s)
        t = meta.topics.get(topic)
        if t is None or t.error is not None:
            return out
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in t.partitions}
        consumer.assign([TopicPartition(topic, p, -2) for p in t.partitions])
        left = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            for m in consumer.consume(10_000, 0.5):
                if m.error():
                    continue
                key = (m.key() or b"").decode("utf-8", "replace")
                if fnmatch.fnmatchcase(key, pattern):
                    out[(m.partition(), key)] = m.value()
                if m.offset() + 1 >= ends[m.partition()]:
                    left.discard(m.partition())
    except KafkaException as exc:
        raise UserError(f"Kafka at {settings.kafka.bootstrap_servers}: {exc}") from None
    finally:
        consumer.close()
    return out

