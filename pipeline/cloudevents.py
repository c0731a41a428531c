"""CloudEvents on the alerts topic: the Kafka protocol binding in binary mode. Every alert and
episode record carries `ce_*` headers; the body (our JSON record, records.py) does not change,
so subscribers that read the body alone see no difference. On by default (`alerts.cloudevents`).

| header | value |
| --- | --- |
| `ce_specversion` | `1.0` |
| `ce_id` | a reading alert's `alert_id`; an episode event's `episode_id/<event>/<readings>` (an episode's open, updates and close are distinct events, and CloudEvents wants source + id unique per event; a replay gives the same ids) |
| `ce_source` | `alerts.cloudevents_source`, default `/latentwatch/<group_id>` |
| `ce_type` | `io.latentwatch.alert.reading`, `io.latentwatch.episode.open` / `.update` / `.close` |
| `ce_time` | the record's `ts` (event time of the reading, RFC 3339) |
| `ce_subject` | the sensor id |
| `content-type` | `application/json`, or `application/avro` with `alerts.format: avro` (the binding's `datacontenttype`) |
"""

from __future__ import annotations

import orjson

SPECVERSION = b"1.0"
CONTENT_TYPE = b"application/json"
CONTENT_TYPES = {"json": CONTENT_TYPE, "avro": b"application/avro"}  # by alerts.format
TYPE_PREFIX = "io.latentwatch."


def default_source(group_id: str) -> str:
    return f"/latentwatch/{group_id}"


def headers(value: bytes, source: bytes) -> list[tuple[str, bytes]]:
    """The binary-mode headers of one alerts-topic record (its JSON `value`)."""
    return headers_of(orjson.loads(value), source, CONTENT_TYPE)


def headers_of(r: dict, source: bytes, content_type: bytes) -> list[tuple[str, bytes]]:
    """The binary-mode headers of one alerts-topic record `r` (records.py's dict), whose body is
    written as `content_type`."""
    if r.get("kind") == "episode":
        event = r["event"]
        ce_id = f"{r['episode_id']}/{event}/{r['readings']}"
        ce_type = f"{TYPE_PREFIX}episode.{event}"
    elif r.get("kind") == "health":  # issue 30: one open and one close per health episode
        event = r["event"]
        ce_id = f"{r['episode_id']}/{event}"
        ce_type = f"{TYPE_PREFIX}health.{r['rule']}.{event}"
    else:
        ce_id = r["alert_id"]
        ce_type = f"{TYPE_PREFIX}alert.{r.get('kind', 'reading')}"
    return [("ce_specversion", SPECVERSION), ("ce_id", ce_id.encode()), ("ce_source", source),
            ("ce_type", ce_type.encode()), ("ce_time", r["ts"].encode()), ("ce_subject", r["sensor_id"].encode()),
            ("content-type", content_type)]
