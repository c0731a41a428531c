"""Bad input, generated: the decoder's contract as properties (thousands of examples), then a
seeded corpus of a few thousand fuzzed messages, JSON and binary frames (tests/support/frames.py;
the frame properties are in test_fuzz_frames.py), through a running `latentwatch run` process.

Properties of `Decoder.decode`: whatever it raises is a ContractError whose reason is one of
`DEAD_LETTER_REASONS`; what it returns is finite float32 [readings, channels] with one finite
event time per reading. `LATENTWATCH_FUZZ_EXAMPLES` scales the number of examples (default 2000
per property, derandomized so CI is reproducible).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import unicodedata
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from latentwatch.detectors.checkpoint import load
from latentwatch.pipeline.decode import (
    DEAD_LETTER_REASONS,
    MAX_SENSOR_ID_BYTES,
    ContractError,
    Decoder,
)
from latentwatch.pipeline.scorer import MAX_Z

from tests.support.frames import FRAME_KINDS, fuzzed_frame
from tests.support.harness import read_topic
from tests.support.processes import start_pipeline, stop_process, wait_drained, wait_url
from tests.support.streams import Stream, wait_metric

EXAMPLES = int(os.environ.get("LATENTWATCH_FUZZ_EXAMPLES", "2000"))
FUZZ_MESSAGES = int(os.environ.get("LATENTWATCH_FUZZ_MESSAGES", "4000"))  # through the running pipeline
FUZZ_WARMUP = 1000
FIGURES: dict = {}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("LATENTWATCH_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)
CH = ["c0", "c1", "c2", "c3"]
NOW = time.time()
MAX_BYTES = 16_384
DECODERS = {n: Decoder(CH[:n], MAX_BYTES, 86_400.0) for n in (1, 4)}

# -- strategies ----------------------------------------------------------------------------------
huge_ints = st.tuples(st.sampled_from([1, -1]), st.integers(0, 420)).map(lambda t: t[0] * 10**t[1])

weird_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    huge_ints,
    st.sampled_from([0, -0.0, 1e-320, 3.4028235e38, 3.4028236e38, -3.5e38, 1e308, 2**63, 2**64, -(2**63) - 1]),
)
scalars = st.one_of(st.none(), st.booleans(), weird_numbers, st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                           st.dictionaries(st.text(max_size=5), inner, max_size=5)),
                           max_leaves=20)
timestamps = st.one_of(
    weird_numbers,
    st.floats(min_value=-1e12, max_value=1e12),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)),
                                            timezone(timedelta(hours=-12))])).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # naive: UTC
    st.sampled_from(["", "now", "nan", "inf", "-inf", "1e400", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59-01:00", "2026-02-30T00:00:00Z", "+1_000", " 1700000000 "]),
    st.text(max_size=30),
)
channel_values = st.one_of(
    st.lists(weird_numbers, min_size=0, max_size=7),
    st.dictionaries(st.sampled_from(CH + ["extra", "C0", ""]), weird_numbers, max_size=6),
    st.dictionaries(st.sampled_from(CH), json_values, max_size=4),
    json_values,
)
readings = st.fixed_dictionaries({"ts": timestamps, "values": channel_values},
                                 optional={"extra": json_values})
near_valid = st.one_of(
    st.fixed_dictionaries({"values": channel_values, "ts": timestamps},
                          optional={"sensor_id": st.one_of(st.text(max_size=10), json_values)}),
    st.fixed_dictionaries({"readings": st.one_of(st.lists(readings, max_size=6), json_values)},
                          optional={"sensor_id": st.one_of(st.text(max_size=10), json_values)}),
    st.dictionaries(st.sampled_from(["sensor_id", "ts", "values", "readings", "x"]), json_values, max_size=5),
)


def deep(n: int, kind: str) -> bytes:
    return {"list": b"[" * n + b"]" * n, "dict": b'{"a":' * n + b"1" + b"}" * n,
            "open": b"[" * n, "values": b'{"sensor_id":"s","ts":1.7e9,"values":' + b"[" * n + b"]" * n + b"}"}[kind]


def mutate_bytes(raw: bytes, data) -> bytes:
    """Flip, cut or splice bytes of an encoded message (truncation, invalid UTF-8, noise)."""
    op = data.draw(st.sampled_from(["truncate", "flip", "insert", "none"]))
    if op == "truncate" and raw:
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if op == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([data.draw(st.integers(0, 255))]) + raw[i + 1:]
    if op == "insert":
        i = data.draw(st.integers(0, len(raw)))
        return raw[:i] + data.draw(st.binary(min_size=1, max_size=8)) + raw[i:]
    return raw


def encode(obj, data=None) -> bytes:
    """JSON text of `obj`, which may hold NaN/Infinity literals and integers beyond float range."""
    return json.dumps(obj, allow_nan=True).encode()


# -- the property --------------------------------------------------------------------------------
def check(value: bytes | None, key: bytes | None, n_channels: int = 4):
    """Decode; assert the contract's promise either way. Returns the reason or None (valid)."""
    try:
        d = DECODERS[n_channels].decode(value, key, NOW)
    except ContractError as err:
        assert err.reason in DEAD_LETTER_REASONS, err.reason
        assert err.detail
        return err.reason
    assert isinstance(d.sensor_id, str) and d.sensor_id
    assert len(d.sensor_id.encode("utf-8")) <= MAX_SENSOR_ID_BYTES  # the key of what the pipeline produces
    assert not any(unicodedata.category(ch) == "Cc" for ch in d.sensor_id)
    assert d.values.dtype == np.float32 and d.values.ndim == 2 and d.values.shape[1] == n_channels
    assert d.ts.shape == (d.values.shape[0],) and d.values.shape[0] >= 1
    assert np.all(np.isfinite(d.values)) and np.all(np.isfinite(d.ts))
    assert np.all(d.ts <= NOW + 86_400) and np.all(d.ts >= datetime(2000, 1, 1, tzinfo=UTC).timestamp())
    return None


@FUZZ
@given(st.one_of(st.binary(max_size=2000), st.none()), st.one_of(st.none(), st.binary(max_size=20)),
       st.sampled_from([1, 4]))
def test_random_bytes(value, key, n):
    check(value, key, n)


@FUZZ
@given(json_values, st.one_of(st.none(), st.binary(max_size=10)), st.sampled_from([1, 4]))
def test_arbitrary_json(obj, key, n):
    check(encode(obj), key, n)


@FUZZ
@given(near_valid, st.one_of(st.none(), st.binary(max_size=10)), st.sampled_from([1, 4]), st.data())
def test_near_valid_messages_and_their_mutations(obj, key, n, data):
    raw = encode(obj)
    check(raw, key, n)
    check(mutate_bytes(raw, data), key, n)


@FUZZ
@given(st.sampled_from(["list", "dict", "open", "values"]), st.integers(1, 200_000))
def test_deeply_nested_json(kind, depth):
    raw = deep(depth, kind)
    reason = check(raw, b"k")
    if len(raw) > MAX_BYTES:
        assert reason == "too_large"


valid_ts = st.integers(int(datetime(2000, 1, 2, tzinfo=UTC).timestamp() * 1000), int(NOW * 1000)).map(
    lambda ms: ms / 1000)
finite32 = st.floats(min_value=-3.4e38, max_value=3.4e38, allow_nan=False)


@st.composite
def valid_messages(draw, n_channels):
    channels = CH[:n_channels]
    k = draw(st.integers(1, 5))
    ts = sorted(set(draw(st.lists(valid_ts, min_size=k, max_size=k))))
    rows = []
    for t in ts:
        vals = draw(st.lists(finite32, min_size=n_channels, max_size=n_channels))
        by_name = draw(st.booleans())
        values = dict(zip(channels, vals)) if by_name else vals
        as_iso = draw(st.booleans())
        rows.append({"ts": datetime.fromtimestamp(t, UTC).isoformat() if as_iso else t, "values": values})
    # no control characters: they are out of contract (bad_sensor_id, issue 22)
    sensor = draw(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12))
    if len(rows) == 1 and draw(st.booleans()):
        return {"sensor_id": sensor, **rows[0]}, len(rows)
    return {"sensor_id": sensor, "readings": rows}, len(rows)


@FUZZ
@given(st.sampled_from([1, 4]).flatmap(lambda n: st.tuples(st.just(n), valid_messages(n))))
def test_valid_messages_decode_to_finite_float32(case):
    n, (obj, k) = case
    raw = encode(obj)
    if len(raw) > MAX_BYTES:
        return
    assert check(raw, None, n) is None
    d = DECODERS[n].decode(raw, None, NOW)
    assert d.values.shape == (k, n)


def _one_by_one(decoder: Decoder, items):
    """The reference for decode_many: decode() per message."""
    out = []
    for value, key in items:
        try:
            out.append(decoder.decode(value, key, NOW))
        except ContractError as err:
            out.append(err.reason)
    return out


@st.composite
def one_flaw(draw):
    """A valid message with one number or one time replaced: it parses, then fails (or not) on
    the conversion that decode_many does for the whole batch at once."""
    obj, _ = draw(valid_messages(4))
    readings = obj.get("readings", [obj])
    r = draw(st.sampled_from(readings))
    if draw(st.booleans()):
        r["ts"] = draw(st.one_of(timestamps, st.just(readings[0]["ts"])))  # bad, or out of order
    else:
        vals = r["values"]
        slot = draw(st.sampled_from(list(vals) if isinstance(vals, dict) else list(range(len(vals)))))
        vals[slot] = draw(scalars)
    return encode(obj)


message_mix = st.one_of(
    valid_messages(4).map(lambda t: encode(t[0])),  # mostly valid, so the all-at-once path runs
    valid_messages(4).map(lambda t: encode(t[0])),
    valid_messages(4).map(lambda t: encode(t[0])),
    one_flaw(),
    near_valid.map(encode),
    st.binary(max_size=60),
)


@FUZZ
@given(st.lists(st.tuples(message_mix, st.one_of(st.none(), st.just(b"key"))), max_size=12))
def test_decode_many_agrees_with_decoding_one_by_one(items):
    """The run loop decodes a whole batch at once; each message must fare exactly as it would alone:
    same reason when out of contract, same numbers and times when valid, input order kept."""
    decoder = DECODERS[4]
    expected = _one_by_one(decoder, items)
    got = decoder.decode_many(items, NOW)
    assert [(i, e.reason) for i, e in got.errors] == [(i, r) for i, r in enumerate(expected) if isinstance(r, str)]
    valid = [d for d in expected if not isinstance(d, str)]
    assert got.index == [i for i, r in enumerate(expected) if not isinstance(r, str)]
    assert got.sensor_ids == [d.sensor_id for d in valid]
    assert got.counts.tolist() == [len(d.ts) for d in valid]
    assert got.values.dtype == np.float32 and got.values.shape == (int(got.counts.sum()), 4)
    if valid:
        np.testing.assert_array_equal(got.values, np.concatenate([d.values for d in valid]))
        np.testing.assert_array_equal(got.ts, np.concatenate([d.ts for d in valid]))


def test_decode_many_finds_the_one_bad_message_among_good_ones():
    """A batch whose all-at-once conversion fails falls back to one by one: only the culprit is out."""
    good = [json.dumps({"sensor_id": f"s{i}", "ts": 1.7e9 + i, "values": [i, 1, 2, 3]}).encode() for i in range(5)]
    bad = {
        "non_finite": b'{"sensor_id":"x","ts":1.7e9,"values":[NaN,1,2,3]}',
        "schema": b'{"sensor_id":"x","ts":1.7e9,"values":[true,false,true,false]}',
        "bad_timestamp": b'{"sensor_id":"x","ts":12,"values":[1,2,3,4]}',
        "late": b'{"sensor_id":"x","readings":[{"ts":1.7e9,"values":[1,2,3,4]},{"ts":1.6e9,"values":[1,2,3,4]}]}',
    }
    for reason, raw in bad.items():
        items = [(v, None) for v in good[:2] + [raw] + good[2:]]
        got = DECODERS[4].decode_many(items, NOW)
        assert [(i, e.reason) for i, e in got.errors] == [(2, reason)]
        assert got.index == [0, 1, 3, 4, 5]
        np.testing.assert_array_equal(got.values[:, 0], [0, 1, 2, 3, 4])


def test_known_poison_messages_are_contract_errors():
    """Fixed corpus: each of these once could (or easily could) escape as another exception."""
    corpus = [
        b'{"sensor_id":"s","ts":' + b"1" + b"0" * 400 + b',"values":[1,2,3,4]}',  # int ts beyond float
        b'{"sensor_id":"s","ts":1e400,"values":[1,2,3,4]}',
        b'{"sensor_id":"s","ts":1.7e9,"values":[' + b"9" * 5000 + b",1,2,3]}",  # > int digits limit
        b'{"sensor_id":"s","ts":1.7e9,"values":[1' + b"0" * 300 + b",1,2,3]}",  # int beyond float32/64
        b'{"sensor_id":"s","ts":"0001-01-01T00:00:00+01:00","values":[1,2,3,4]}',
        b'{"sensor_id":"s","ts":"9999-12-31T23:59:59-01:00","values":[1,2,3,4]}',
        b'{"sensor_id":"s","readings":[{"ts":1.7e9,"values":[1,2,3,4]},{"ts":1.7e9,"values":[1,2,3,4]}]}',
        b'{"sensor_id":"s","ts":1.7e9,"values":[[1],[2],[3],[4]]}',
        b'{"sensor_id":"s","ts":1.7e9,"values":{"c0":1,"c1":2,"c2":3,"c3":[4]}}',
        b'{"sensor_id":"s","ts":1.7e9,"values":[true,false,true,false]}',
        b'{"sensor_id":"s","ts":true,"values":[1,2,3,4]}',
        b'{"sensor_id":"\xed\xa0\x80","ts":1.7e9,"values":[1,2,3,4]}',  # UTF-8 encoded surrogate
        b'{"sensor_id":"\\ud800","ts":1.7e9,"values":[1,2,3,4]}',  # lone surrogate escape
        b'{"sensor_id":"s","ts":1.7e9,"values":[NaN,1,2,3]}',
        b'{"sensor_id":"s","ts":1.7e9,"values":[-Infinity,1,2,3]}',
        b"\xef\xbb\xbf{}",  # BOM
        b"", b" ", b"null", b"[]", b'"s"', b"1e999",
        deep(100_000, "list")[:MAX_BYTES], deep(5000, "values"),
    ]
    for raw in corpus:
        assert check(raw, None) is not None, raw[:60]
        assert check(raw, b"key") is not None, raw[:60]


# -- a generated corpus through a running pipeline ---------------------------------------------
def fuzz_corpus(n: int, seed: int, t0: float | None = None) -> list[tuple[bytes, bool]]:
    """`n` (message, is_valid) pairs: mostly bad ones of every kind, valid ones among them.

    Generated with the strategies above (hypothesis `.example()` is not seeded, so the corpus is
    drawn from seeded `random` over the strategies' building blocks instead)."""
    rng = random.Random(seed)
    out: list[tuple[bytes, bool]] = []
    kinds = ["bytes", "truncated", "deep", "wrong_type", "nan", "huge", "channels", "large", "utf8",
             "past", "future", "json", "batch_order", "valid", "valid", "valid", *FRAME_KINDS]
    t_future = NOW + 10 * 86_400
    for i in range(n):
        kind = kinds[i % len(kinds)]
        sensor = f"f{i % 8}"
        ts = (NOW - n if t0 is None else t0) + i
        good = {"sensor_id": sensor, "ts": ts, "values": [rng.gauss(0, 1) for _ in CH]}
        if kind == "valid":
            out.append((json.dumps(good).encode(), True))
            continue
        if kind in FRAME_KINDS:  # binary frames: bit-flipped ones may still be valid, the decoder says
            # (a flipped time may then lie after later messages: a sensor of its own keeps the
            # sensors' histories, and so the late policy, out of it)
            flipped = kind in ("frame_flipped", "frame_word")
            raw = fuzzed_frame(kind, rng, f"x{i}" if flipped else sensor, ts, CH, MAX_BYTES)
            out.append((raw, kind == "frame_valid" or (flipped and check(raw, b"k") is None)))
            continue
        if kind == "bytes":
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            raw = b"\x00" + raw  # never valid JSON
        elif kind == "truncated":
            full = json.dumps(good).encode()
            raw = full[: rng.randrange(1, len(full) - 1)]
        elif kind == "deep":
            raw = deep(rng.randrange(1000, 5000), rng.choice(["list", "dict", "values"]))
        elif kind == "wrong_type":
            field, value = rng.choice([("values", "12"), ("values", None), ("values", [["1"], 2, 3, 4]),
                                       ("ts", [1]), ("ts", {"t": 1}), ("sensor_id", 7), ("values", True),
                                       ("values", {"c0": "x", "c1": 1, "c2": 2, "c3": 3})])
            raw = json.dumps({**good, field: value}).encode()
        elif kind == "nan":
            v = list(good["values"])
            v[rng.randrange(4)] = rng.choice([math.nan, math.inf, -math.inf])
            raw = json.dumps({**good, "values": v}, allow_nan=True).encode()
        elif kind == "huge":
            v = [f"{x:.3f}" for x in good["values"]]
            v[rng.randrange(4)] = rng.choice(["1e39", "-4e38", "1e400", "1" + "0" * 320])
            raw = f'{{"sensor_id":"{sensor}","ts":{good["ts"]!r},"values":[{",".join(v)}]}}'.encode()
        elif kind == "channels":
            k = rng.choice([0, 1, 2, 3, 5, 9])
            raw = json.dumps({**good, "values": good["values"][:k] + [1.0] * max(0, k - 4)}).encode()
        elif kind == "large":
            raw = json.dumps({**good, "pad": "x" * rng.randrange(MAX_BYTES, 3 * MAX_BYTES)}).encode()
        elif kind == "utf8":
            raw = json.dumps(good).encode().replace(sensor.encode(), sensor.encode() + rng.choice(
                [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        elif kind == "past":
            raw = json.dumps({**good, "ts": rng.choice([0, -1e9, 946684799, "1999-12-31T23:59:59Z",
                                                        "0001-01-01T00:00:00Z"])}).encode()
        elif kind == "future":
            raw = json.dumps({**good, "ts": rng.choice([t_future, 1e18, "9999-12-31T00:00:00Z", 10**30])}).encode()
        elif kind == "json":
            raw = rng.choice([b"null", b"[]", b"42", b'"x"', b"{}", b'{"sensor_id":"a"}', b"[1,2,3]"])
        else:  # batch_order: readings out of order
            raw = json.dumps({"sensor_id": sensor, "readings": [
                {"ts": good["ts"], "values": good["values"]}, {"ts": good["ts"] - 1, "values": good["values"]}]}).encode()
        out.append((raw, False))
    return out


def test_fuzz_corpus_is_all_classified_as_expected():
    """The corpus the process test sends: every 'bad' one is a ContractError, every 'good' one decodes."""
    for raw, ok in fuzz_corpus(2000, seed=11):
        assert (check(raw, b"k") is None) == ok, raw[:80]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_fuzzed_messages_through_a_running_pipeline(kafka_bootstrap, make_topic, producer, model_dir,
                                                    tmp_path):
    """A seeded corpus of fuzzed messages (every kind above, a fifth of them valid) through
    `latentwatch run`: every bad one is in the dead-letter topic with the reason the decoder
    gives, every good one is scored, the process never dies, memory stays bounded."""
    s = Stream(make_topic)
    log = tmp_path / "run.log"
    scaler = load(model_dir, device="cpu").detector.scaler

    def live_reason(raw, key):
        """The decoder's reason, or the scorer's out_of_range for a valid reading too far from
        the model's training scale to score in float32 (e.g. the fuzzer's 3.4e38)."""
        reason = check(raw, key)
        if reason is None:
            d = DECODERS[4].decode(raw, key, NOW)
            if (np.abs((d.values.astype(np.float64) - scaler.mean) / scaler.std) > MAX_Z).any():
                return "out_of_range"
        return reason

    proc = start_pipeline(kafka_bootstrap, s, model_dir, log,
                          env={"LATENTWATCH_BATCH__MAX_MESSAGE_BYTES": str(MAX_BYTES)})
    sent: dict[tuple[int, int], tuple[bytes, bool]] = {}

    def send(corpus):
        for raw, ok in corpus:
            key = f"k{len(sent) % 8}".encode()
            ok = ok and live_reason(raw, key) is None  # valid, but maybe out of the model's range

            def on_delivery(err, msg, raw=raw, ok=ok):
                assert err is None, err
                sent[(msg.partition(), msg.offset())] = (raw, ok)
            producer.produce(s.input, raw, key=key, on_delivery=on_delivery)
            producer.poll(0)
        producer.flush(60)

    try:
        url = wait_url(proc, log)
        warm = fuzz_corpus(FUZZ_WARMUP, seed=1, t0=NOW - 20_000)
        send(warm)
        wait_metric(url, "latentwatch_messages_consumed_total", len(warm))
        rss_before = rss_kib(proc.pid)
        corpus = fuzz_corpus(FUZZ_MESSAGES, seed=2, t0=NOW - 10_000)
        send(corpus)
        total = len(warm) + len(corpus)
        wait_metric(url, "latentwatch_messages_consumed_total", total, timeout=180)
        wait_drained(kafka_bootstrap, s, proc=proc)
        rss_after = rss_kib(proc.pid)
        assert proc.poll() is None, "the pipeline died on fuzzed input"
        assert stop_process(proc) == 0
    finally:
        stop_process(proc)
    assert "Traceback" not in log.read_text()

    s.refs = {(p, o, 0) for p, o in sent}
    led = s.ledger(kafka_bootstrap)
    assert not led.uncommitted and not led.lost and led.duplicates == 0
    good = {(p, o) for (p, o), (_, ok) in sent.items() if ok}
    bad = set(sent) - good
    assert {(p, o) for p, o, _ in led.scored} == good
    dlq = read_topic(kafka_bootstrap, s.dead, expected=len(bad), timeout=60)
    reasons = {}
    for m in dlq:
        h = dict(m.headers())
        ref = (int(h["lw-source-partition"]), int(h["lw-source-offset"]))
        reason = h["lw-dlq-reason"].decode()
        assert reason in DEAD_LETTER_REASONS and h["lw-dlq-detail"]
        assert m.value() == sent[ref][0]  # the original bytes
        assert reason == live_reason(sent[ref][0], m.key()), sent[ref][0][:80]  # the decoder's own reason
        reasons[reason] = reasons.get(reason, 0) + 1
    assert {(int(dict(m.headers())["lw-source-partition"]), int(dict(m.headers())["lw-source-offset"]))
            for m in dlq} == bad
    assert set(reasons) >= {"not_json", "invalid_utf8", "schema", "missing_channels", "non_finite", "too_large",
                            "bad_timestamp", "late", "corrupt_frame", "unsupported_version"}
    growth_mib = (rss_after - rss_before) / 1024
    assert growth_mib < 150, f"RSS grew {growth_mib:.0f} MiB over {len(corpus)} fuzzed messages"
    FIGURES.update(messages=total, bad=len(bad), good=len(good), reasons=reasons, lost=len(led.lost),
                   duplicates=led.duplicates, rss_growth_mib=round(growth_mib, 1),
                   rss_mib=round(rss_after / 1024, 1))
    print("\nfuzz figures:", FIGURES)
