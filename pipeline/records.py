"""Every record the scorer makes of a reading, built here and nowhere else (JSON, key = sensor id).

On the alerts topic, two kinds:

- `kind: "reading"`: one per alarmed reading (`alerts.per_reading`), naming the rule that fired
  (`instant` or `ewma`), its `statistic` and `limit`; `alert_id` is
  `<topic>/<partition>/<offset>/<index>` of the reading, so a replay after a crash produces the
  same id and subscribers can drop duplicates.
- `kind: "episode"`: a sensor's alarm as one incident, `event` `open` (its first alarmed reading),
  `update` (at most one per `update_s` of event time while it lasts: peak so far, readings so
  far) and `close` (after `close_after` readings without an alarm; or, with `reason: "evicted"`,
  when the sensor's state was evicted - idle TTL or capacity - with the episode open). `episode_id` is the
  `alert_id` of its first reading: a replay gives the same id.

On the latent topic (`topics.latent`), one record per scored reading: its latent vector and
score. On the alerts topic too, `kind: "health"` (issue 30): a sensor's own fault (stuck,
flatline, silent) as an episode, `health_records`. Every record names its reading the same way (`source`: topic, partition, offset, index).
budget.py sizes the worst case of each through these same functions.
"""

from __future__ import annotations

import time

import numpy as np
import orjson

from latentwatch.detectors.alarms import RULES
from latentwatch.pipeline.times import iso


def reading_sources(valid, msg_of, pos, rows) -> list[tuple[str, int, int, int]]:
    """(topic, partition, offset, index in its message) of the readings `rows`, for the records
    that name them: indices converted once per column, not as numpy scalars per record."""
    msgs = [valid[k][0] for k in msg_of[rows].tolist()]
    return [(m.topic(), m.partition(), m.offset(), i) for m, i in zip(msgs, pos[rows].tolist())]


def top_channels(channel_error: np.ndarray, channels: list[str], k: int = 3) -> list[list[dict]]:
    """For each row of `[n, channels]`, the `k` channels with the largest share of that reading's
    reconstruction error. A batch's alerts in one pass: numpy's overhead per call, per alert,
    cost more than the sums themselves."""
    err = np.maximum(channel_error.astype(np.float64), 0.0)
    total = err.sum(axis=1, keepdims=True)
    shares = np.divide(err, total, out=np.full_like(err, 1.0 / err.shape[1]), where=total > 0)
    order = np.argsort(-shares, axis=1, kind="stable")[:, :k]
    top = np.round(np.take_along_axis(shares, order, axis=1), 4).tolist()
    return [[{"channel": channels[i], "share": v} for i, v in zip(idx, vals)]
            for idx, vals in zip(order.tolist(), top)]


def alert_records(*, sources: list[tuple[str, int, int, int]], sensor_ids: list[str], ts: list[str],
                  scores: np.ndarray, thresholds: np.ndarray, tops: list[list[dict]], latent: np.ndarray,
                  model_name: str, model_version: str, critical_ratio: float, detected_at: str,
                  parts: dict[str, np.ndarray] | None = None, rules: np.ndarray | None = None,
                  statistics: np.ndarray | None = None, limits: np.ndarray | None = None,
                  baselines: list[str] | None = None, model_group: str | None = None) -> list[dict]:
    """A batch's alerts, one per row: `sources` (topic, partition, offset, index) of each reading,
    `ts` its event time as ISO strings (`times.iso_many`), `tops` its row of `top_channels`, `latent`
    `[n, k]`, `parts` name -> `[n]`. Rounding and conversion are done per column in numpy: per
    alert in Python they were half of the scorer's time at a 2.3 % alert rate (cProfile, the
    bench's frames batches). `rules` (index into `alarms.RULES`), `statistics`, `limits`: what fired
    (default: the instant rule, the score against the threshold); severity follows statistic/limit.
    `baselines`: which baseline judged each reading (own | learned | fleet; a model trained per
    sensor), as `baseline`."""
    score, threshold = np.asarray(scores, np.float64), np.asarray(thresholds, np.float64)
    n = len(score)
    rules = np.zeros(n, np.int8) if rules is None else np.asarray(rules)
    stat = score if statistics is None else np.asarray(statistics, np.float64)
    limit = threshold if limits is None else np.asarray(limits, np.float64)
    with np.errstate(over="ignore"):  # a non-finite score is scored as float64's max: inf here, still critical
        critical = (stat >= critical_ratio * limit).tolist()
    columns = [_round(score, 6).tolist(), _round(threshold, 6).tolist(),
               _round(np.asarray(latent, np.float64), 5).tolist(), [RULES[r] for r in rules.tolist()],
               _round(stat, 6).tolist(), _round(limit, 6).tolist()]
    names = list(parts or {})
    part_rows = (list(zip(*(_round(np.asarray(parts[n], np.float64), 3).tolist() for n in names)))
                 if names else [()] * len(sources))
    model = _model(model_name, model_version, model_group)
    out = []
    for (topic, partition, offset, index), sid, t, sc, thr, lat, rule, st, lim, top, crit, pr in zip(
            sources, sensor_ids, ts, *columns, tops, critical, part_rows):
        record = {
            "kind": "reading", "alert_id": f"{topic}/{partition}/{offset}/{index}", "sensor_id": sid, "ts": t,
            "detected_at": detected_at, "score": sc, "threshold": thr, "rule": rule, "statistic": st, "limit": lim,
            "severity": "critical" if crit else "warning", "top_channels": top, "latent": lat,
            "model": model, "source": _source(topic, partition, offset, index),
        }
        if names:  # which part of the score fired (reconstruction, latent_distance)
            record["parts"] = dict(zip(names, pr))
        out.append(record)
    if baselines is not None:
        for record, b in zip(out, baselines):
            record["baseline"] = b
    return out


def episode_records(events, *, sources: list[tuple[str, int, int, int]], sensor_ids: list[str], ts: np.ndarray,
                    tops: list[list[dict]], model_name: str, model_version: str, critical_ratio: float,
                    detected_at: str, baselines: list[str] | None = None,
                    model_group: str | None = None) -> list[dict]:
    """One record per episode event (`alarms.Decision.events`: (event, reading, key, Episode)),
    row-aligned with `sources`/`sensor_ids`/`ts`/`tops` of the reading that raised it."""
    model = _model(model_name, model_version, model_group)
    out = []
    for (event, _pos, _key, ep), (topic, _p, _o, _i), sid, t, top in zip(events, sources, sensor_ids,
                                                                       np.asarray(ts, np.float64).tolist(), tops):
        partition, offset, index = ep.ref
        record = {
            "kind": "episode", "event": event, "episode_id": f"{topic}/{partition}/{offset}/{index}",
            "sensor_id": sid, "started_at": iso(ep.started_ts), "ts": iso(t), "detected_at": detected_at,
            "rule": RULES[ep.rule], "readings": ep.count, "peak_score": _round(np.array([ep.peak_score]), 6).item(),
            "peak_margin": round(ep.peak, 4), "peak_at": iso(ep.peak_ts),
            "severity": "critical" if ep.peak >= critical_ratio else "warning",
            "top_channels": top, "model": model, "source": _source(topic, partition, offset, index),
        }
        if event == "close":
            record["ended_at"] = iso(t)
        out.append(record)
    if baselines is not None:
        for record, b in zip(out, baselines):
            record["baseline"] = b
    return out


def evicted_close_records(evicted, *, topic: str, model_name: str, model_version: str, critical_ratio: float,
                          detected_at: str, model_group: str | None = None) -> list[dict]:
    """Close records of episodes whose sensor's state was evicted (`StateStore.take_evicted_open`:
    (key, entry) pairs), `reason: "evicted"`: at the event time of the sensor's last reading, named
    by the episode's first reading like any close. No reading raised them, so no top channels."""
    rows = [(key, entry, entry.alarm.episode) for key, entry in evicted]
    out = episode_records([("close", -1, key, ep) for key, _e, ep in rows],
                          sources=[(topic, *ep.ref) for _k, _e, ep in rows], sensor_ids=[k[1] for k, _e, _ep in rows],
                          ts=np.array([e.last_ts for _k, e, _ep in rows], np.float64), tops=[[] for _ in rows],
                          model_name=model_name, model_version=model_version, critical_ratio=critical_ratio,
                          detected_at=detected_at, model_group=model_group)
    for record in out:
        record["reason"] = "evicted"
    return out


def reason_close_records(items, reason: str, *, topic: str, model_name: str, model_version: str,
                         critical_ratio: float, detected_at: str) -> list[dict]:
    """Close records of open episodes closed for `reason` (issue 30: `silent`, `accepted`):
    `items` (key, Episode, event time of the close). No reading raised them: no top channels."""
    out = episode_records([("close", -1, key, ep) for key, ep, _t in items],
                          sources=[(topic, *ep.ref) for _k, ep, _t in items], sensor_ids=[k[1] for k, _e, _t in items],
                          ts=np.array([t for _k, _e, t in items], np.float64), tops=[[] for _ in items],
                          model_name=model_name, model_version=model_version, critical_ratio=critical_ratio,
                          detected_at=detected_at)
    for record in out:
        record["reason"] = reason
    return out


def health_records(events, sources: list, *, topic: str, model_name: str, model_version: str, detected_at: str,
                   channels: list[str]) -> list[dict]:
    """`kind: "health"` records (detectors/health.py `Event`s): `rule` stuck | flatline | silent,
    `event` open | close, `evidence` (open: the channels and values frozen and for how many
    readings; silent: the sensor's last reading and the partition's event time), `source` the
    reading it is at (none for a silence found without one). `episode_id`: `<rule>:` and the
    alert_id of the reading that opened it; a silence: `silent:<topic>/<partition>/<sensor>@<start>`.
    Severity warning: an instrument fault, not a process one."""
    model = {"name": model_name, "version": model_version}
    out = []
    for e, src in zip(events, sources):
        ep = e.episode
        sid = e.key[1] if isinstance(e.key, tuple) else str(e.key)
        if e.rule == "silent":
            eid = f"silent:{topic}/{ep.ref[0]}/{sid}@{iso(ep.started_ts)}"
        else:
            eid = f"{e.rule}:{topic}/{ep.ref[0]}/{ep.ref[1]}/{ep.ref[2]}"
        evidence = dict(e.evidence)
        for k in ("last_reading_at", "partition_event_time", "back_at"):
            if k in evidence:
                evidence[k] = iso(evidence[k])
        record = {"kind": "health", "event": e.event, "rule": e.rule, "episode_id": eid, "sensor_id": sid,
                  "started_at": iso(ep.started_ts), "ts": iso(e.ts), "detected_at": detected_at,
                  "severity": "warning", "evidence": evidence, "model": model}
        if ep.channels and e.rule == "stuck":
            record["channels"] = [channels[c] for c in ep.channels]
        if src is not None:
            record["source"] = _source(*src)
        if e.event == "close":
            record["ended_at"] = iso(e.ts)
        out.append(record)
    return out


def alert_record(*, topic: str, partition: int, offset: int, index: int, sensor_id: str, ts: float | str,
                 score: float, threshold: float, top: list[dict], latent: list[float], model_name: str,
                 model_version: str, critical_ratio: float, detected_at: float | str | None = None,
                 parts: dict | None = None) -> dict:
    """One alert (`alert_records` with one row); `top` is its row of `top_channels`, `latent` its
    latent vector. Times may come as epoch seconds or as ISO strings."""
    return alert_records(
        sources=[(topic, partition, offset, index)], sensor_ids=[sensor_id], ts=[ts if isinstance(ts, str) else iso(ts)],
        scores=np.array([score]), thresholds=np.array([threshold]), tops=[top],
        latent=np.asarray([latent], np.float64).reshape(1, -1), model_name=model_name, model_version=model_version,
        critical_ratio=critical_ratio,
        detected_at=detected_at if isinstance(detected_at, str) else iso(
            detected_at if detected_at is not None else time.time()),
        parts={n: np.array([v]) for n, v in (parts or {}).items()})[0]


def latent_records(sources: list[tuple[str, int, int, int]], sensor_ids: list[str], ts: list[str],
                   scores: np.ndarray, latent: np.ndarray, model_name: str, model_version: str,
                   model_group: str | None = None) -> list[tuple[bytes, bytes]]:
    """(key, value) of one latent record per scored reading, built per column like the alerts."""
    model = _model(model_name, model_version, model_group)
    return [(sid.encode(), encode({"sensor_id": sid, "ts": t, "score": sc, "latent": lat, "model": model,
                                   "source": _source(*src)}))
            for src, sid, t, sc, lat in zip(sources, sensor_ids, ts, np.asarray(scores, np.float64).tolist(),
                                            _round(np.asarray(latent, np.float64), 5).tolist())]


def _model(name: str, version: str, group: str | None) -> dict:
    """A record's `model`: name and version, and with model groups (docs/groups.md) the group's name."""
    return {"name": name, "version": version} if group is None else {"name": name, "version": version, "group": group}


def _source(topic: str, partition: int, offset: int, index: int) -> dict:
    """The reading a record is of: the same four fields in every kind of record."""
    return {"topic": topic, "partition": partition, "offset": offset, "index": index}


def _round(a: np.ndarray, decimals: int) -> np.ndarray:
    """`round()` per element, as Python's: numpy scales by 10**decimals first, which overflows
    for the largest finite floats (a non-finite score is reported as the largest float)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(np.abs(a) < 1e15, np.round(a, decimals), a)


def encode(record: dict) -> bytes:
    """Compact JSON (orjson: ~12x the stdlib's speed on an alert). The same values as json.dumps;
    only the spelling of some floats differs (0.00008, not 8e-05)."""
    return orjson.dumps(record)
