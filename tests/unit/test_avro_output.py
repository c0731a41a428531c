"""Schema'd output (issue 31 item 2): alerts, episode events and latent records as Avro records in
the Confluent wire format, from the repo's .avsc schemas (pipeline/schemas/). The registry itself
(registration, BACKWARD compatibility) is tested in tests/integration/test_avro_output.py."""

from __future__ import annotations

import io
import struct

import fastavro
import numpy as np
import orjson
import pytest
from latentwatch.detectors.alarms import Episode
from latentwatch.pipeline import budget, cloudevents, records
from latentwatch.pipeline.avro_out import AvroOutput, load_schema

SRC = [("in", 3, 1234, 0), ("in", 3, 1235, 1)]


def decode(value: bytes, name: str) -> tuple[int, dict]:
    magic, schema_id = struct.unpack(">bI", value[:5])
    assert magic == 0
    buf = io.BytesIO(value[5:])
    record = fastavro.schemaless_reader(buf, fastavro.parse_schema(load_schema(name)), None)
    assert buf.tell() == len(value) - 5
    return schema_id, _without_nulls(record)


def _without_nulls(record: dict) -> dict:
    """The JSON record: the schema's optional fields (null when absent), left out at every level."""
    return {k: (_without_nulls(v) if isinstance(v, dict) else v) for k, v in record.items() if v is not None}


def alerts(baselines=None, parts=True):
    return records.alert_records(
        sources=SRC, sensor_ids=["s1", "s2"], ts=["2026-11-21T10:00:00.250Z", "2026-11-21T10:00:01.000Z"],
        scores=np.array([12.5, 1e308]), thresholds=np.array([3.0, 3.0]),
        tops=[[{"channel": "a", "share": 0.9}, {"channel": "b", "share": 0.1}], [{"channel": "c", "share": 1.0}]],
        latent=np.array([[0.1, -2.0], [3.0, 4.5]]), model_name="m", model_version="7", critical_ratio=2.0,
        detected_at="2026-11-21T10:00:02.000Z",
        parts={"reconstruction": np.array([10.0, 2.0]), "latent_distance": np.array([2.5, 1.0])} if parts else None,
        rules=np.array([0, 1], np.int8), baselines=baselines)


def episodes(baselines=None):
    ep = Episode((3, 1234, 0), 1.7e9, 0, 4.2, 12.5, 1.7e9 + 1, 5, 5, 1.7e9 + 1)
    return records.episode_records(
        [("open", 0, 0, ep), ("close", 1, 0, ep)], sources=SRC, sensor_ids=["s1", "s1"], ts=np.array([1.7e9, 1.7e9 + 9]),
        tops=[[{"channel": "a", "share": 1.0}]] * 2, model_name="m", model_version="7", critical_ratio=2.0,
        detected_at="2026-11-21T10:00:02.000Z", baselines=baselines)


@pytest.mark.parametrize("baselines", [None, ["own", "fleet"]])
@pytest.mark.parametrize("parts", [True, False])
def test_alert_records_round_trip_through_the_avro_schema_equal_to_the_json(baselines, parts):
    out = AvroOutput(alerts_id=41, latent_id=None)
    for r in alerts(baselines, parts):
        schema_id, back = decode(out.alert(r), "alert")
        assert schema_id == 41
        assert back == orjson.loads(records.encode(r))


@pytest.mark.parametrize("baselines", [None, ["learned", "own"]])
def test_episode_records_round_trip_equal_to_the_json_open_and_close(baselines):
    out = AvroOutput(alerts_id=41, latent_id=None)
    got = [decode(out.alert(r), "alert")[1] for r in episodes(baselines)]
    assert got == [orjson.loads(records.encode(r)) for r in episodes(baselines)]
    assert "ended_at" in got[1] and "ended_at" not in got[0]


def test_latent_records_round_trip_with_their_own_schema_id():
    out = AvroOutput(alerts_id=41, latent_id=42)
    for _key, value in records.latent_records(SRC, ["s1", "s2"], ["2026-11-21T10:00:00.250Z"] * 2,
                                              np.array([0.5, 1.5]), np.array([[0.1, 0.2], [0.3, 0.4]]), "m", "7"):
        schema_id, back = decode(out.latent(orjson.loads(value)), "latent")
        assert schema_id == 42 and back == orjson.loads(value)


def test_a_record_with_a_field_the_schema_lacks_is_refused_not_silently_dropped():
    """The schema must follow records.py: a new field in the JSON record without one in the
    schema fails here (and in the round trips above) rather than vanish from the Avro output."""
    r = dict(alerts()[0], brand_new=1)
    with pytest.raises(ValueError, match="brand_new"):
        AvroOutput(alerts_id=1, latent_id=None).alert(r)


def test_avro_records_stay_within_the_json_worst_case_the_budget_sizes():
    """Bounded output: budget.py sizes a reading's records by their JSON worst case; the Avro
    encoding of the same worst-case records (plus its 5-byte header) is never larger."""
    from types import SimpleNamespace

    model = SimpleNamespace(name="m" * 64, version=3,
                            detector=SimpleNamespace(latent_dim=16, channels=[f"ch{i}" for i in range(40)]))
    latent = np.full((1, 16), budget._BIG)
    with np.errstate(over="ignore"):
        record, episode = budget._worst_records(model, sorted(model.detector.channels, key=len, reverse=True),
                                                "t" * 249, ["reconstruction", "latent_distance"], latent)
    episode["ended_at"] = episode["ts"]
    record["baseline"] = episode["baseline"] = "learned"
    out = AvroOutput(alerts_id=2**31 - 1, latent_id=2**31 - 1)
    for r in (record, episode):
        assert len(out.alert(r)) <= len(records.encode(r))
    ((_k, value),) = records.latent_records([("t" * 249, 2**31 - 1, 2**63 - 1, 2**31 - 1)], [budget._WORST_ID],
                                            ["2026-11-21T10:00:00.250Z"], np.array([budget._BIG]), latent, "m", "3")
    assert len(out.latent(orjson.loads(value))) <= len(value)


def test_cloudevents_headers_of_an_avro_record_say_application_avro_and_keep_the_ids():
    r = alerts()[0]
    h = dict(cloudevents.headers_of(r, b"/latentwatch/g", cloudevents.CONTENT_TYPES["avro"]))
    assert h["content-type"] == b"application/avro"
    assert h["ce_id"] == r["alert_id"].encode() and h["ce_subject"] == b"s1"
    assert dict(cloudevents.headers(records.encode(r), b"/latentwatch/g")) == dict(
        cloudevents.headers_of(r, b"/latentwatch/g", cloudevents.CONTENT_TYPES["json"]))


def test_alerts_format_defaults_to_json_and_avro_without_a_registry_is_one_clear_line():
    from latentwatch.pipeline.avro_out import for_settings
    from latentwatch.pipeline.config import load_settings
    from latentwatch.pipeline.errors import UserError

    assert load_settings(None, {}).alerts.format == "json"
    assert for_settings(load_settings(None, {})) is None
    with pytest.raises(UserError) as err:
        for_settings(load_settings(None, {"alerts.format": "avro"}))
    assert "schema_registry.url" in str(err.value) and "\n" not in str(err.value)
