"""Per-sensor state of the stream, bounded, and how it survives restarts and rebalances.

What a sensor needs to be scored: for windowed models the last `window - 1` readings (its
*tail*), for per-sensor (adaptive) thresholds its score statistics; for the late policy the
event time of its last reading; for the alarm rule (detectors/alarms.py) its EWMA and its open
episode; for a sensor the model has no baseline of, its *cold start* (`Baseline`: how many
readings it has sent, every `stride`-th of its first `cold_start` ones, at most 64 rows, then
the center and scale learned from them; detectors/baselines.py); for the health rules
(detectors/health.py) its last values, runs of unchanged readings and open health episodes
(`SensorHealth`: 8 C + ~120 bytes); for the operator's commands (pipeline/control.py) its mute,
the last command applied, who and why (64 bytes each) and the alarms a mute held back
(`Control`). Entries are keyed by (input partition, sensor id).

Three rules keep it right and bounded:

1. **Changed only at commit.** The scorer reads a `StateStore` and returns the batch's new
   entries; the pipeline applies them only once the batch's outputs are acknowledged and its
   offsets committed (or its transaction committed). A failed, rewound or redone batch
   therefore never moves state twice, and the in-memory state always matches the committed
   offsets.
2. **Recoverable at the committed offset.** When state is needed to score (window > 1, or a
   per-sensor threshold), each batch also writes the new entries of the sensors it touched to a
   compacted *changelog* topic (partition = input partition, key = sensor id), with the batch's
   other outputs (in its transaction under exactly-once). A record carries the input offset it
   is valid from and the entry before it; on assignment a process reads its partitions'
   changelog and keeps, per sensor, the newest entry valid at the committed offset. Under
   at-least-once at most one batch can have written its changelog but not committed its
   offsets, so "this entry or the one before it" is always enough. This is Kafka Streams'
   design for its state stores; re-reading the input's tail instead cannot know how far back
   a rarely reporting sensor's last readings are.
3. **Bounded.** At most `state.max_sensors` entries per process (least recently seen evicted
   first) and none idle longer than `state.idle_ttl_s` (wall clock). Evictions are counted;
   an evicted sensor that comes back starts again like a new one (warms up its window). An
   evicted entry is deleted from the changelog (a tombstone) so a restore cannot bring it back.

State that enters the store from outside a batch (a restore from the changelog, a model swap) is
**checked against the model loaded now** (`expect`, `check`): an entry whose tail has another
length or channel count than the model needs, or that holds values the model cannot take, is
dropped (counted by reason in `latentwatch_state_dropped_total`) and its sensor warms up like a
new one. A model change (W=16 -> W=8, a channel added) therefore never feeds an old tail to the
scorer, on this process or on the one a rebalance hands the partition to.
"""

from __future__ import annotations

import math
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from latentwatch.detectors import health as _health
from latentwatch.detectors.alarms import Episode, SensorAlarm
from latentwatch.detectors.baselines import COLD_KEEP
from latentwatch.detectors.health import HealthEpisode, SensorHealth

Key = tuple[int, str]  # (input partition, sensor id)


@dataclass(frozen=True, slots=True)
class Baseline:
    """A cold-start sensor's baseline: `seen` readings since its cold start began; `first` [<= COLD_KEEP, channels]
    float32, every stride-th of its first `cold_start` readings, kept until the baseline is
    learned; then `center` and `scale` [channels] (and `first` empty)."""

    seen: int
    first: np.ndarray
    center: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def learned(self) -> bool:
        return self.center is not None


@dataclass(frozen=True, slots=True)
class Entry:
    """One sensor's state. `tail` [<= window-1, channels] float32 (empty for window 1)."""

    last_ts: float
    tail: np.ndarray
    threshold: tuple[float, float] | None = None  # adaptive threshold (mean, var) of normal scores
    valid_at: int = -1  # input offset from which this entry is the sensor's state (changelog only)
    alarm: SensorAlarm | None = None  # the alarm rule's EWMA and open episode (None: a new sensor)
    baseline: Baseline | None = None  # cold start of a sensor the model has no baseline of (None: it has)
    health: SensorHealth | None = None  # sensor health (detectors/health.py): runs, last values, open episodes
    control: "Control | None" = None  # the operator's commands in effect (mute, accept; pipeline/control.py)


@dataclass(frozen=True, slots=True)
class Control:
    """The operator's commands in effect for a sensor: muted until `mute_until` (event time; 0:
    not muted), `suppressed` alarms counted while muted, and `applied` the event time of the
    last command applied (an older or equal one is a repeat: idempotent)."""

    mute_until: float = 0.0
    applied: float = float("-inf")
    suppressed: int = 0
    accepted: float = 0.0  # event time of the accept in effect (0: none): its baseline is a re-learnt one
    by: str = ""  # who gave the last command applied, and why (sensors show); kept to CONTROL_TEXT bytes each
    why: str = ""


@dataclass(frozen=True, slots=True)
class Fit:
    """What the model loaded now needs of a sensor's state."""

    window: int
    channels: int
    max_future_s: float = float("inf")  # batch.max_future_s: no accepted reading is later than now + this


def _check_tail(e: Entry, fit: Fit) -> str | None:
    t = e.tail
    if len(t) == 0:  # nothing to feed the model (a window-1 model's entry, a sensor warming up)
        return None
    if t.ndim != 2 or t.shape[1] != fit.channels:
        return "channels"
    if len(t) > max(fit.window - 1, 0):
        return "window"
    if t.dtype != np.float32:
        return "dtype"
    if not np.isfinite(t).all():
        return "non_finite"
    return None


def _check_threshold(e: Entry, fit: Fit) -> str | None:
    if e.threshold is None:
        return None
    mean, var = e.threshold
    return None if np.isfinite(mean) and np.isfinite(var) and var >= 0 else "threshold"


def _check_alarm(e: Entry, fit: Fit) -> str | None:
    """The alarm rule's state: an EWMA that is a number (NaN: restart at the rule's center; the
    rule treats any non-finite z so) and an episode whose counts and times make sense."""
    a = e.alarm
    if a is None or a.episode is None:
        return None
    ep = a.episode
    ok = (ep.count >= 1 and ep.below >= 0 and 0 <= ep.rule <= 1 and min(ep.ref) >= 0
          and all(np.isfinite(v) for v in (ep.started_ts, ep.peak, ep.peak_score, ep.peak_ts, ep.last_event_ts)))
    return None if ok else "alarm"


def _check_baseline(e: Entry, fit: Fit) -> str | None:
    """A cold start: a count, at most COLD_KEEP first readings of the model's channels, finite; a
    learned center and a positive scale of the model's channels."""
    b = e.baseline
    if b is None:
        return None
    f = b.first
    ok = (b.seen >= 0 and f.ndim == 2 and len(f) <= COLD_KEEP and (len(f) == 0 or f.shape[1] == fit.channels)
          and bool(np.isfinite(f).all()))
    if ok and b.center is not None:
        ok = (b.scale is not None and b.center.shape == (fit.channels,) and b.scale.shape == (fit.channels,)
              and bool(np.isfinite(b.center).all()) and bool(np.isfinite(b.scale).all()) and bool((b.scale > 0).all()))
    return None if ok else "baseline"


def _check_last_ts(e: Entry, fit: Fit) -> str | None:
    """The last event time: finite and no later than the scorer could have accepted (now +
    max_future_s). One at inf, or days ahead, made every later reading of the sensor `late`."""
    ok = np.isfinite(e.last_ts) and e.last_ts <= time.time() + fit.max_future_s
    return None if ok else "last_ts"


# One check per kind of per-sensor state: (entry, fit) -> the reason it cannot be used, or None.
# A new kind of state adds its own here; its reason becomes a label value.
def _check_health(e: Entry, fit: Fit) -> str | None:
    """Sensor health: last values and runs of the model's channels, episodes that make sense."""
    return None if _health.check(e.health, fit.channels) else "health"


def _check_control(e: Entry, fit: Fit) -> str | None:
    c = e.control
    ok = c is None or (np.isfinite(c.mute_until) and c.mute_until >= 0 and c.suppressed >= 0
                       and not np.isnan(c.applied))
    return None if ok else "control"


ENTRY_CHECKS: list[Callable[[Entry, Fit], str | None]] = [_check_tail, _check_threshold, _check_alarm, _check_last_ts,
                                                          _check_baseline, _check_health, _check_control]
DROP_REASONS = ("window", "channels", "dtype", "non_finite", "threshold", "alarm", "last_ts", "baseline", "health",
                "control")


def check(entry: Entry, fit: Fit | None) -> str | None:
    """Why `entry` cannot be used by a model needing `fit` (None: it can, or no model is known)."""
    if fit is None:
        return None
    for one in ENTRY_CHECKS:
        reason = one(entry, fit)
        if reason is not None:
            return reason
    return None


@dataclass
class Loaded:
    """What `StateStore.load` did: entries dropped by reason, keys evicted by reason."""

    dropped: dict[str, int] = field(default_factory=dict)
    evicted: dict[str, list] = field(default_factory=dict)


class StateStore:
    """The entries of the assigned partitions, in least-recently-seen order."""

    def __init__(self, max_sensors: int = 100_000, idle_ttl_s: float = 86_400.0):
        self.max_sensors = max_sensors
        self.idle_ttl_s = idle_ttl_s
        self.fit: Fit | None = None  # what the loaded model needs (None: entries are not checked)
        self.fit_of: Callable[[Key], Fit | None] | None = None  # per key instead (model groups, groups.py)
        self.max_future_s = float("inf")  # batch.max_future_s (the runner's): restored last_ts is checked
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._seen: dict[Key, float] = {}  # wall time last updated, for the idle TTL
        self._last_sweep = time.monotonic()
        self._cold = Counter()  # entries by baseline_state(): kept as entries change, read per batch
        self._evicted_open: list[tuple[Key, Entry]] = []  # evicted with an episode open: to be closed
        self._wm: dict[int, float] = {}  # per partition: the newest event time of its entries (silent rule)
        self._min_last: dict[int, float] = {}  # per partition: a lower bound of its not-silent entries' last_ts
        self._muted: dict[Key, float] = {}  # entries with a mute (its end, event time): the muted-sensors gauge

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Entry | None:
        return self._entries.get(key)

    def watermark(self, partition: int) -> float:
        """The partition's newest event time as of the committed state (detectors/health.py, silent)."""
        return self._wm.get(partition, float("-inf"))

    def silent_due(self, partition: int, watermark: float, silent_s: float) -> list[tuple[Key, Entry]]:
        """The partition's entries not yet silent whose last reading is more than `silent_s` before
        `watermark`. A full scan only when the partition's oldest not-silent reading may be that old
        (a cached lower bound): about once per reporting interval, not per batch. Read only, but for
        that cache (a lower bound stays one whatever is committed or rewound)."""
        if watermark - silent_s <= self._min_last.get(partition, float("-inf")):
            return []
        due, low = [], float("inf")
        for key, e in self._entries.items():
            if key[0] != partition or (e.health is not None and e.health.silent is not None):
                continue
            low = min(low, e.last_ts)
            if watermark > e.last_ts + silent_s:
                due.append((key, e))
        self._min_last[partition] = low
        return due

    def muted_count(self) -> int:
        """Entries muted at their partition's newest event time (a mute in the past is forgotten)."""
        for key in [k for k, until in self._muted.items() if until <= self.watermark(k[0]) or k not in self._entries]:
            del self._muted[key]
        return len(self._muted)

    def _note_times(self, key: Key, entry: Entry) -> None:
        p = key[0]
        if entry.control is not None and entry.control.mute_until > 0:
            self._muted[key] = entry.control.mute_until
        else:
            self._muted.pop(key, None)
        if entry.last_ts > self._wm.get(p, float("-inf")):
            self._wm[p] = entry.last_ts
        if (entry.health is None or entry.health.silent is None) and entry.last_ts < self._min_last.get(p, float("inf")):
            self._min_last[p] = entry.last_ts

    def baseline_counts(self) -> dict[str, int]:
        """Entries by baseline state: `fleet` (cold start, still learning), `learned`, and `own`
        (the model has a baseline of the sensor, or none of any: the rest)."""
        fleet, learned = self._cold["fleet"], self._cold["learned"]
        return {"own": len(self._entries) - fleet - learned, "learned": learned, "fleet": fleet}

    def _count(self, entry: Entry | None, sign: int) -> None:
        if entry is not None and entry.baseline is not None:
            self._cold["learned" if entry.baseline.learned else "fleet"] += sign

    def _recount(self) -> None:
        self._cold = Counter()
        for e in self._entries.values():
            self._count(e, 1)

    def apply(self, updates: dict[Key, Entry], now: float | None = None) -> dict[str, list[Key]]:
        """Take a committed batch's new entries; evict over the bounds. Returns the evicted keys
        by reason ("capacity", "idle")."""
        now = time.monotonic() if now is None else now
        for key, entry in updates.items():
            self._count(self._entries.get(key), -1)
            self._count(entry, 1)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._seen[key] = now
            self._note_times(key, entry)
        evicted: dict[str, list[Key]] = {"capacity": [], "idle": []}
        while len(self._entries) > self.max_sensors:
            key, gone = self._entries.popitem(last=False)
            self._count(gone, -1)
            self._seen.pop(key, None)
            evicted["capacity"].append(key)
            self._note_evicted(key, gone)
        if now - self._last_sweep >= min(60.0, self.idle_ttl_s):
            self._last_sweep = now
            # oldest first: stop at the first one seen recently enough
            for key in list(self._entries):
                if now - self._seen.get(key, now) <= self.idle_ttl_s:
                    break
                gone = self._entries.pop(key)
                self._count(gone, -1)
                self._note_evicted(key, gone)
                self._seen.pop(key, None)
                evicted["idle"].append(key)
        return evicted

    def _note_evicted(self, key: Key, entry: Entry) -> None:
        """An evicted entry's open episode must still be closed (issue 29.4): a returning sensor's
        next `open` would otherwise follow an episode that never closed."""
        if entry.alarm is not None and entry.alarm.episode is not None:
            self._evicted_open.append((key, entry))

    def take_evicted_open(self) -> list[tuple[Key, Entry]]:
        """The entries evicted with an open episode since the last call (the run loop closes them
        with its next batch, beside their changelog tombstones)."""
        out, self._evicted_open = self._evicted_open, []
        return out

    def expect(self, window: int, channels: int) -> None:
        """The model loaded now: entries that enter the store from outside a batch are checked
        against it."""
        self.fit = Fit(window, channels, self.max_future_s)

    def load(self, entries: dict[Key, Entry], now: float | None = None,
             seen: dict[Key, float] | None = None) -> Loaded:
        """Restored entries (from the changelog), before any batch of their partitions: those
        that do not fit the model are dropped (a new sensor). `seen`: the wall time each was
        last updated (its record's), so the idle clock and the recency order go on from where
        they were, not from the restore; entries idle past the TTL already are evicted now."""
        now = time.monotonic() if now is None else now
        wall, seen = time.time(), seen or {}
        dropped: Counter = Counter()
        keep = {}
        for key, entry in entries.items():
            reason = check(entry, self.fit if self.fit_of is None else self.fit_of(key))
            if reason is None:
                keep[key] = entry
            else:
                dropped[reason] += 1
        idle = []
        for key in sorted(keep, key=lambda k: seen.get(k, wall)):  # least recently seen first
            ago = max(0.0, wall - seen.get(key, wall))
            if ago > self.idle_ttl_s:
                idle.append(key)
                self._note_evicted(key, keep[key])
                continue
            self._entries[key] = keep[key]
            self._entries.move_to_end(key)
            self._seen[key] = now - ago
            self._note_times(key, keep[key])
            self._min_last[key[0]] = float("-inf")  # rescan restored partitions
        self._recount()
        evicted = self.apply({}, now)
        evicted["idle"] = idle + evicted["idle"]
        return Loaded(dict(dropped), evicted)

    def drop_partitions(self, partitions: set[int]) -> None:
        for p in partitions:
            self._wm.pop(p, None)
            self._min_last.pop(p, None)
        for key in [k for k in self._entries if k[0] in partitions]:
            self._count(self._entries.pop(key), -1)
            self._seen.pop(key, None)

    def for_model(self, window: int, channels: int, only: Callable[[Key], bool] | None = None) -> None:
        """A model swap: tails cut to the new window's last `window - 1` readings (a longer window
        warms up the difference); other channels or thresholds start afresh (last times kept). An
        open alarm episode is kept (the new model continues and closes it); the EWMA, in the old
        model's units, restarts at the new rule's center (NaN here). A cold start is kept where the
        channel count allows (a sensor the new model has a baseline of ignores it). `only`: the keys
        the model scores (a model group's, groups.py); the others are left as they are."""
        for key, e in self._entries.items():
            if only is not None and not only(key):
                continue
            same = e.tail.ndim == 2 and e.tail.shape[1] == channels
            tail = e.tail[max(0, len(e.tail) - (window - 1)):] if same and window > 1 else \
                np.empty((0, channels), np.float32)
            alarm = SensorAlarm(float("nan"), e.alarm.episode) if e.alarm is not None else None
            baseline = e.baseline if e.baseline is not None and _check_baseline(e, Fit(window, channels)) is None \
                else None
            health = e.health if e.health is not None and _health.check(e.health, channels) else None
            self._entries[key] = Entry(e.last_ts, tail, None, e.valid_at, alarm, baseline, health, e.control)
        self.expect(window, channels)
        self._recount()


# -- the changelog record -------------------------------------------------------------------------
# Binary, little-endian: magic b"LWS2", valid_at (q), last_ts (d), has_threshold (B), mean, var
# (dd), rows, channels (II), tail float32[rows*channels], then the alarm state: has_alarm (B), z (d),
# has_episode (B) and the episode (ref qqq, started_ts d, rule b, peak, peak_score, peak_ts ddd,
# count, below qq, last_event_ts d); then the same again for the entry before (rows == 0xFFFFFFFF:
# none); then the wall time it was written (d). Compact (a W=32, 16-channel tail is 2 KB) and read
# by this module only. b"LWS3" adds, after each entry's alarm state, whether its last reading was
# over the instant limit (B, the alarm rule's `hot`) and its cold start: has_baseline
# (B), seen (q), rows, channels (II), first float32[rows*channels], learned (B), center and scale
# float32[channels] each. b"LWS4" adds, after the cold start, the sensor's health (has (B); channels
# (I), last float32[C], run int32[C]; per rule stuck, flatline, silent: has (B), ref qqq, started_ts
# d, n (I), channels uint32[n], values float64[n]) and the operator's control (has (B), mute_until d,
# applied d, suppressed q, accepted d, then who and why: lengths HH and UTF-8 bytes, 64 at most each). b"LWS3" records are read without them; b"LWS2" records (before per-sensor baselines) and b"LWS1" ones (before the
# alarm rule: a persistence int where the alarm state is now; with or without the wall time) are
# still read, without the state they did not have.
# b"LWS5" adds, at the end of an entry with an open episode, its re-baselining span (issue 30,
# `baseline.adapt_after`): seen q, s1 s2 mean var dddd (mean -inf: none); LWS4 records are read with none.
_MAGIC, _MAGIC4, _MAGIC3, _MAGIC2, _MAGIC1 = b"LWS5", b"LWS4", b"LWS3", b"LWS2", b"LWS1"
_SPAN = struct.Struct("<qdddd")
_HEP = struct.Struct("<BqqqdI")
_CONTROL = struct.Struct("<Bddqd")
_BASE = struct.Struct("<BqII")
_HEAD = struct.Struct("<qdBddII")
_HEAD1 = struct.Struct("<qdBddqII")
_ALARM = struct.Struct("<BdB")
_EPISODE = struct.Struct("<qqqdbdddqqd")
_NONE = 0xFFFFFFFF
_WRITTEN = struct.Struct("<d")  # at the end: the wall time the record was written (for the idle TTL)


def _pack_one(e: Entry | None) -> bytes:
    if e is None:
        return _HEAD.pack(-1, 0.0, 0, 0.0, 0.0, _NONE, 0)
    t = np.ascontiguousarray(e.tail, dtype="<f4")
    rows, channels = (t.shape[0], t.shape[1]) if t.ndim == 2 else (0, 0)
    mean, var = e.threshold if e.threshold is not None else (0.0, 0.0)
    a, ep = e.alarm, (e.alarm.episode if e.alarm is not None else None)
    out = _HEAD.pack(e.valid_at, e.last_ts, e.threshold is not None, mean, var, rows, channels) + t.tobytes() \
        + _ALARM.pack(a is not None, a.z if a is not None else 0.0, ep is not None)
    if ep is not None:
        out += _EPISODE.pack(*ep.ref, ep.started_ts, ep.rule, ep.peak, ep.peak_score, ep.peak_ts, ep.count,
                             ep.below, ep.last_event_ts)
    out += bytes([bool(a is not None and a.hot)])
    b = e.baseline
    if b is None:
        out += _BASE.pack(0, 0, 0, 0)
    else:
        f = np.ascontiguousarray(b.first, dtype="<f4")
        rows, ch = (f.shape[0], f.shape[1]) if f.ndim == 2 else (0, 0)
        out += _BASE.pack(1, b.seen, rows, ch) + f.tobytes() + bytes([b.center is not None])
        if b.center is not None:
            c = np.ascontiguousarray(b.center, dtype="<f4")
            out += struct.pack("<I", len(c)) + c.tobytes() + np.ascontiguousarray(b.scale, dtype="<f4").tobytes()
    out += _pack_health(e.health) + _pack_control(e.control)
    return out + (_SPAN.pack(ep.seen, ep.s1, ep.s2, ep.mean, ep.var) if ep is not None else b"")


def _pack_health(h: SensorHealth | None) -> bytes:
    if h is None:
        return b"\x00"
    last = np.ascontiguousarray(h.last, dtype="<f4")
    out = b"\x01" + struct.pack("<I", len(last)) + last.tobytes() + np.ascontiguousarray(h.run, dtype="<i4").tobytes()
    for ep in (h.stuck, h.flat, h.silent):
        if ep is None:
            out += _HEP.pack(0, 0, 0, 0, 0.0, 0)
            continue
        n = len(ep.channels)
        values = tuple(ep.value) + (0.0,) * (n - len(ep.value)) if len(ep.value) <= n else tuple(ep.value)[:n]
        out += _HEP.pack(1, *ep.ref, ep.started_ts, n) + np.asarray(ep.channels, "<u4").tobytes() \
            + np.asarray(values, "<f8").tobytes()
    return out


CONTROL_TEXT = 64  # bytes of who and why a sensor's state keeps (the control topic has them whole)


def _cut(text: str) -> bytes:
    return text.encode()[:CONTROL_TEXT].decode("utf-8", "ignore").encode()


def _pack_control(c: "Control | None") -> bytes:
    if c is None:
        return _CONTROL.pack(0, 0.0, 0.0, 0, 0.0)
    by, why = _cut(c.by), _cut(c.why)
    return _CONTROL.pack(1, c.mute_until, c.applied, c.suppressed, c.accepted) + struct.pack("<HH", len(by), len(why)) \
        + by + why


def pack(entry: Entry, before: Entry | None, written_at: float | None = None) -> bytes:
    """The record; it ends with the wall time it is written (`written_at`, default now)."""
    return _MAGIC + _pack_one(entry) + _pack_one(before) + _WRITTEN.pack(time.time() if written_at is None
                                                                          else written_at)


def _unpack_baseline(buf: memoryview, pos: int) -> tuple[Baseline | None, int]:
    has, seen, rows, ch = _BASE.unpack_from(buf, pos)
    pos += _BASE.size
    if not has:
        return None, pos
    n = rows * ch * 4
    if rows > 1 << 16 or ch > 1 << 16 or pos + n + 1 > len(buf):
        raise ValueError("cold start runs past the record")
    first = np.frombuffer(bytes(buf[pos:pos + n]), dtype="<f4").astype(np.float32).reshape(rows, ch)
    pos += n
    learned = buf[pos]
    pos += 1
    center = scale = None
    if learned:
        (c,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if c > 1 << 16 or pos + 8 * c > len(buf):
            raise ValueError("baseline runs past the record")
        center = np.frombuffer(bytes(buf[pos:pos + 4 * c]), dtype="<f4").astype(np.float32)
        scale = np.frombuffer(bytes(buf[pos + 4 * c:pos + 8 * c]), dtype="<f4").astype(np.float32)
        pos += 8 * c
    return Baseline(int(seen), first, center, scale), pos


def _unpack_health(buf: memoryview, pos: int) -> tuple[SensorHealth | None, int]:
    has = buf[pos]
    pos += 1
    if not has:
        return None, pos
    (c,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    if c > 1 << 16 or pos + 8 * c > len(buf):
        raise ValueError("health runs past the record")
    last = np.frombuffer(bytes(buf[pos:pos + 4 * c]), dtype="<f4").astype(np.float32)
    run = np.frombuffer(bytes(buf[pos + 4 * c:pos + 8 * c]), dtype="<i4").astype(np.int32)
    pos += 8 * c
    eps = []
    for rule in range(3):
        has_ep, p, o, i, started, n = _HEP.unpack_from(buf, pos)
        pos += _HEP.size
        if not has_ep:
            eps.append(None)
            continue
        if n > 1 << 16 or pos + 12 * n > len(buf):
            raise ValueError("health episode runs past the record")
        channels = tuple(np.frombuffer(bytes(buf[pos:pos + 4 * n]), dtype="<u4").tolist())
        values = tuple(np.frombuffer(bytes(buf[pos + 4 * n:pos + 12 * n]), dtype="<f8").tolist())
        pos += 12 * n
        eps.append(HealthEpisode(rule, (p, o, i), started, channels, values))
    return SensorHealth(last, run, *eps), pos


def _unpack_control(buf: memoryview, pos: int) -> tuple["Control | None", int]:
    has, mute_until, applied, suppressed, accepted = _CONTROL.unpack_from(buf, pos)
    pos += _CONTROL.size
    if not has:
        return None, pos
    nb, nw = struct.unpack_from("<HH", buf, pos)
    pos += 4
    if pos + nb + nw > len(buf):
        raise ValueError("control runs past the record")
    by, why = bytes(buf[pos:pos + nb]).decode("utf-8", "replace"), bytes(buf[pos + nb:pos + nb + nw]).decode(
        "utf-8", "replace")
    return Control(mute_until, applied, suppressed, accepted, by, why), pos + nb + nw


def _unpack_one(buf: memoryview, pos: int, v1: bool, v3: bool = False, v4: bool = False,
                v5: bool = False) -> tuple[Entry | None, int]:
    if v1:
        valid_at, last_ts, has_thr, mean, var, _persist, rows, channels = _HEAD1.unpack_from(buf, pos)
        pos += _HEAD1.size
    else:
        valid_at, last_ts, has_thr, mean, var, rows, channels = _HEAD.unpack_from(buf, pos)
        pos += _HEAD.size
    if rows == _NONE:
        return None, pos
    n = rows * channels * 4
    if pos + n > len(buf):
        raise ValueError("tail runs past the record")
    tail = np.frombuffer(bytes(buf[pos:pos + n]), dtype="<f4").astype(np.float32).reshape(rows, channels)
    pos += n
    alarm = None
    if not v1:
        has_alarm, z, has_ep = _ALARM.unpack_from(buf, pos)
        pos += _ALARM.size
        episode = None
        if has_ep:
            f = _EPISODE.unpack_from(buf, pos)
            pos += _EPISODE.size
            episode = Episode(tuple(f[:3]), *f[3:])
        alarm = SensorAlarm(z, episode) if has_alarm else None
    baseline = None
    if v3:
        hot = bool(buf[pos])
        pos += 1
        if alarm is not None and hot:
            alarm = SensorAlarm(alarm.z, alarm.episode, True)
        baseline, pos = _unpack_baseline(buf, pos)
    health = control = None
    if v4:
        health, pos = _unpack_health(buf, pos)
        control, pos = _unpack_control(buf, pos)
    if v5 and alarm is not None and alarm.episode is not None:
        seen, s1, s2, m, v = _SPAN.unpack_from(buf, pos)
        pos += _SPAN.size
        if seen < 0 or not all(math.isfinite(x) and x >= 0 for x in (s1, s2, v)) or not (
                math.isfinite(m) or m == -math.inf):
            raise ValueError("an episode's re-baselining span is out of range")
        alarm = SensorAlarm(alarm.z, replace(alarm.episode, seen=seen, s1=s1, s2=s2, mean=m, var=v), alarm.hot)
    return Entry(last_ts, tail, (mean, var) if has_thr else None, valid_at, alarm, baseline, health, control), pos


def unpack(value: bytes) -> tuple[Entry, Entry | None]:
    """(entry, the entry before it); ValueError when it is not a changelog record of ours."""
    entry, before, _ = unpack_record(value)
    return entry, before


def unpack_record(value: bytes) -> tuple[Entry, Entry | None, float | None]:
    """(entry, the entry before it, the wall time it was written or None for a record of a
    version before that was kept: readers of either version read both)."""
    if not value or value[:4] not in (_MAGIC, _MAGIC4, _MAGIC3, _MAGIC2, _MAGIC1):
        raise ValueError("not a latentwatch state record")
    v1, v5 = value[:4] == _MAGIC1, value[:4] == _MAGIC
    v4 = v5 or value[:4] == _MAGIC4
    v3 = v4 or value[:4] == _MAGIC3
    buf = memoryview(value)
    try:
        entry, pos = _unpack_one(buf, 4, v1, v3, v4, v5)
        before, pos = _unpack_one(buf, pos, v1, v3, v4, v5)
    except (struct.error, ValueError, IndexError) as exc:
        raise ValueError(f"corrupt state record: {exc}") from None
    if entry is None:
        raise ValueError("state record without an entry")
    written = _WRITTEN.unpack_from(buf, pos)[0] if len(value) == pos + _WRITTEN.size else None
    return entry, before, written


def written_at(value: bytes) -> float | None:
    """The wall time a record was written (None: an older record, or not one of ours)."""
    try:
        return unpack_record(value)[2]
    except ValueError:
        return None


def as_of(entry: Entry, before: Entry | None, committed: int) -> Entry | None:
    """The sensor's state at input offset `committed`: the entry, or the one before it when the
    entry's batch was written but not committed (at-least-once, a crash between the two)."""
    if entry.valid_at <= committed:
        return entry
    if before is not None and before.valid_at <= committed:
        return before
    return None  # nothing of it is committed: a new sensor


def approx_entry_bytes(window: int, channels: int) -> int:
    """What one entry costs in memory (measured by tests/system/test_state_bound.py with
    tracemalloc): the tail's array plus ~600 bytes of Python objects and dict slots (measured:
    2,488 bytes an entry for W=32, 16 channels; so 100,000 sensors, the default bound, hold
    ~260 MB)."""
    return max(window - 1, 0) * channels * 4 + 600
