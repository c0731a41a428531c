"""What a batch's outputs can cost, by construction: every record we produce fits the producer's
limit, and a batch's records fit `batch.max_output_bytes`.

- A record's size is bounded through its sensor id (decode.MAX_SENSOR_ID_BYTES, 256) and the
  model (latent size, channel names, window): `per_reading_bytes` is the largest alert plus the
  largest episode event (a reading raises at most one: it opens or updates an episode when it
  alarms, closes one when it is the last quiet reading of the hysteresis) plus, with the latent
  topic on, the largest latent record one reading can make, measured by building them
  with the real record code from worst-case values (the longest id, every character escaped in
  JSON, the longest float spellings, the largest offsets).
- The changelog record of a sensor holds two tails ((W-1) x channels float32 each) and two
  alarm states (fixed size: the EWMA and an open episode): a model
  whose record cannot fit the producer's limit is refused (`changelog_fits`), at start and at a
  swap, instead of failing every batch.
- A batch takes at most `readings_cap` readings, where max_readings x per_reading_bytes would pass
  the budget (the reading cap, lowered); one message is always taken alone, so a message holding
  more readings than the budget allows is a dead letter ("too_large") rather than gigabytes of
  records held in one ScoredBatch.
"""

from __future__ import annotations

import numpy as np

from latentwatch.detectors.alarms import Episode, SensorAlarm
from latentwatch.pipeline import records, state
from latentwatch.pipeline.decode import MAX_SENSOR_ID_BYTES

_WORST_ID = '"' * MAX_SENSOR_ID_BYTES  # each one escaped in JSON: twice the bytes
_BIG = -1.7976931348623157e308  # the longest spelling of a float
_KEY_AND_FRAMING = MAX_SENSOR_ID_BYTES + 512  # the record's key, and Kafka's per-record framing
_WORST_EPISODE = Episode((2**31 - 1, 2**63 - 1, 2**31 - 1), 4e9, 1, _BIG, _BIG, 4e9, 2**62, 2**62, 4e9)


def per_reading_bytes(model, topics, latent_topic: bool) -> int:
    """The most bytes of records one scored reading can make (alert + latent record)."""
    d = model.detector
    k = int(getattr(d, "latent_dim", 0) or 0)
    channels = sorted(d.channels, key=len, reverse=True)
    topic = max((topics.input, topics.alerts), key=len)
    names = list(getattr(d, "score_parts", None) or ("reconstruction", "latent_distance"))
    latent = np.full((1, max(k, 1)), _BIG)
    with np.errstate(over="ignore"):  # critical_ratio x the largest float is inf: by design, not a warning
        record, episode = _worst_records(model, channels, topic, names, latent)
    episode["ended_at"] = episode["ts"]  # a close carries one more time
    size = len(records.encode(record)) + len(records.encode(episode)) + 2 * (256 + _KEY_AND_FRAMING)
    if latent_topic:  # the latent record, built as the scorer builds it (records.latent_records)
        ((_key, value),) = records.latent_records([(topic, 2**31 - 1, 2**63 - 1, 2**31 - 1)], [_WORST_ID],
                                                  ["2026-11-21T10:00:00.250Z"], np.array([_BIG]), latent,
                                                  model.name, str(model.version))
        size += len(value) + _KEY_AND_FRAMING
    return size


def _worst_records(model, channels, topic, names, latent) -> tuple[dict, dict]:
    """The largest alert and episode records one reading can make, built by the real record code."""
    record = records.alert_records(
        sources=[(topic, 2**31 - 1, 2**63 - 1, 2**31 - 1)], sensor_ids=[_WORST_ID], ts=["2026-11-21T10:00:00.250Z"],
        scores=np.array([_BIG]), thresholds=np.array([_BIG]),
        tops=[[{"channel": c, "share": 0.3333} for c in channels[:3]]], latent=latent,
        model_name=model.name, model_version=str(model.version), critical_ratio=2.0,
        detected_at="2026-11-21T10:00:00.250Z", parts={n: np.array([_BIG]) for n in names},
        rules=np.array([1], np.int8), statistics=np.array([_BIG]), limits=np.array([_BIG]))[0]
    episode = records.episode_records(
        [("update", 0, 0, _WORST_EPISODE)], sources=[(topic, 2**31 - 1, 2**63 - 1, 2**31 - 1)],
        sensor_ids=[_WORST_ID], ts=np.array([4e9]), tops=[[{"channel": c, "share": 0.3333} for c in channels[:3]]],
        model_name=model.name, model_version=str(model.version), critical_ratio=2.0,
        detected_at="2026-11-21T10:00:00.250Z")[0]
    return record, episode


def changelog_record_bytes(window: int, channels: int, cold: bool = False) -> int:
    """A sensor's changelog record at most: the entry and the one before it, each a full tail, an
    adaptive threshold's statistics, the alarm rule's state with an open episode and a cold start
    holding all it keeps and a learned baseline (never both at once; counted together here) when
    the model has per-sensor baselines (`cold`)."""
    from latentwatch.detectors.baselines import COLD_KEEP

    cold_start = state.Baseline(1, np.zeros((COLD_KEEP, channels), np.float32), np.zeros(channels, np.float32),
                          np.ones(channels, np.float32))
    from latentwatch.detectors.health import HealthEpisode, SensorHealth

    every = tuple(range(channels))
    worst_ep = HealthEpisode(0, (0, 0, 0), 0.0, every, (0.0,) * channels)  # every channel, each rule
    health = SensorHealth(np.zeros(channels, np.float32), np.zeros(channels, np.int32), worst_ep, worst_ep, worst_ep)
    full = state.Entry(0.0, np.zeros((max(window - 1, 0), channels), np.float32), (0.0, 0.0), 0,
                       SensorAlarm(0.0, _WORST_EPISODE), cold_start if cold else None, health,
                       state.Control(by="x" * state.CONTROL_TEXT, why="x" * state.CONTROL_TEXT))
    return len(state.pack(full, full)) + _KEY_AND_FRAMING


def changelog_fits(window: int, channels: int, producer_limit: int, cold: bool = False) -> str | None:
    """None when a W x channels model's state records fit the producer's limit, else why not."""
    need = changelog_record_bytes(window, channels, cold)
    if need <= producer_limit:
        return None
    return (f"its per-sensor state record is {need:,} bytes (window {window} x {channels} channels, two tails"
            f"{', two cold starts' if cold else ''}) "
            f"and the producer's message.max.bytes is {producer_limit:,}: raise it (kafka.producer."
            "message.max.bytes, and the state topic's max.message.bytes) or use a smaller window")


def readings_cap(max_readings: int, max_output_bytes: int, per_reading: int) -> int:
    """The reading cap that keeps a batch's records under `max_output_bytes`."""
    return max(1, min(max_readings, max_output_bytes // max(per_reading, 1)))
