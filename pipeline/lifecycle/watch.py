"""Notice a new model version and load it off the hot path, for the run loop to swap in between
batches.

    watcher = ModelWatcher(settings.model.path, model, device=..., metrics=metrics)
    signal.signal(signal.SIGHUP, lambda *_: watcher.request_check())
    ...
    # between two batches (never inside one):
    new = watcher.poll(sample=lambda: recent_values)   # never blocks: None, or a validated model
    if new is not None:
        swap(new)                                         # see Pipeline._swap / metrics.set_model

`poll` costs a clock read on most calls. At most every `interval_s` (and at once after
`request_check`, e.g. on SIGHUP) it hands a check to one background thread, which reads the
`current` pointer (a versioned directory, detectors/versions.py; for a plain model directory
the files' inode/mtime/size), and when it names something new, loads that version and
validates it: same channels in the same order, a finite threshold, what the running process
requires of any model (`fits`: the run loop's is that a sensor's state record fits the
producer's limit, pipeline/budget.py), finite scores on a sample of
recent readings (`sample`, [n, channels] in the model's channel order; without one, a reading
at the training means). A later `poll` returns the validated model once, or refuses it with one
ERROR line and `latentwatch_model_reloads_total{outcome=...}`; a refused version is not tried
again until the pointer moves or `request_check` is called. The loaded model keeps running
either way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from latentwatch.detectors import sliding_windows, versions
from latentwatch.detectors.checkpoint import CheckpointError, LoadedModel, load

log = logging.getLogger("latentwatch.model")

# `outcome` label of latentwatch_model_reloads_total
RELOAD_OUTCOMES = ("success", "corrupt", "incompatible", "non_finite")
SAMPLE_WINDOWS = 256  # at most this many windows of the caller's sample are scored


@dataclass
class Check:
    """What one background check found: a new model (`outcome` success) or why not."""

    key: str
    outcome: str
    model: LoadedModel | None = None
    message: str = ""


class ModelWatcher:
    def __init__(self, path: str | Path, current: LoadedModel, *, device: str = "cpu",
                 interval_s: float = 5.0, metrics=None, clock: Callable[[], float] = time.monotonic,
                 loader: Callable[..., LoadedModel] = load,
                 fits: Callable[[LoadedModel], str | None] | None = None):
        self.path = Path(path)
        self.fits = fits  # why a model cannot run in this process (None: it can); refused as incompatible
        self.current = current
        self.device = device
        self.interval_s = interval_s
        self.metrics = metrics
        self.clock = clock
        self.loader = loader
        self.last_outcome: str | None = None
        self._known = self._key_of_loaded(current)
        self._refused: str | None = None
        self._next = clock() + interval_s
        self._requested = threading.Event()
        self._future: Future | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-watch")

    # -- the loop's side ---------------------------------------------------------------------
    def request_check(self) -> None:
        """Check at the next `poll` and retry a refused version (safe from a signal handler)."""
        self._requested.set()

    def poll(self, sample: np.ndarray | Callable[[], np.ndarray | None] | None = None) -> LoadedModel | None:
        """Never blocks. Returns a validated new model once, else None. `sample` (or a callable
        giving it, called only when a check starts) is recent readings [n, channels]."""
        if self._future is not None:
            if not self._future.done():
                return None
            future, self._future = self._future, None
            try:
                found = future.result()
            except Exception as exc:  # noqa: BLE001 - a bug in a check must not stop the loop
                found = Check(self._known, "corrupt", message=f"checking {self.path} failed: {exc!r}")
            return self._hand_over(found)
        forced = self._requested.is_set()
        if not forced and self.clock() < self._next:
            return None
        self._requested.clear()
        self._next = self.clock() + self.interval_s
        values = sample() if callable(sample) else sample
        if values is not None:
            values = np.array(values, dtype=np.float32, copy=True)  # the loop may reuse its buffer
        self._future = self._pool.submit(self._check, values, forced)
        return None

    def wait(self, timeout: float = 30.0) -> None:
        """Block until a check in flight has finished (tests, and a shutdown that wants it)."""
        if self._future is not None:
            self._future.exception(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the background thread ---------------------------------------------------------------
    def _check(self, sample: np.ndarray | None, forced: bool) -> Check | None:
        try:
            key, target = self._identify()
        except (OSError, versions.VersionError) as exc:
            return Check(f"error:{exc}", "corrupt", message=str(exc))
        if key == self._known or (key == self._refused and not forced):
            return None
        try:
            model = self.loader(target, device=self.device)
        except CheckpointError as exc:
            return Check(key, "corrupt", message=str(exc))
        except Exception as exc:  # noqa: BLE001 - anything else a broken file makes torch raise
            return Check(key, "corrupt", message=f"{target}: could not be loaded ({exc!r:.200})")
        if same_model(model, self.current):
            return Check(key, "unchanged")  # the same model under another name (an adopted directory)
        outcome, message = validate(model, self.current, sample, self.fits)
        return Check(key, outcome, model if outcome == "success" else None, message)

    def _identify(self) -> tuple[str, Path]:
        if versions.is_versioned(self.path):
            version = versions.read_pointer(self.path).version
            return f"version:{version}", self.path / versions.VERSIONS / version
        return _stat_key(self.path), self.path

    def _key_of_loaded(self, model: LoadedModel) -> str:
        if versions.is_versioned(self.path):
            return f"version:{model.version}"
        try:
            return _stat_key(self.path)
        except OSError:
            return "missing"

    def _hand_over(self, found: Check | None) -> LoadedModel | None:
        if found is None:
            return None
        if found.outcome == "unchanged":
            self._known = found.key
            log.info("model %s: %s holds the model already loaded (version %s, same model.json); nothing to swap",
                     self.path, found.key, self.current.version)
            return None
        self.last_outcome = found.outcome
        if self.metrics is not None:
            self.metrics.model_reloads.labels(outcome=found.outcome).inc()
        if found.outcome != "success":
            self._refused = found.key
            log.error("model %s refused (%s), still scoring with version %s: %s", self.path, found.outcome,
                      self.current.version, found.message)
            return None
        self._known, self._refused = found.key, None
        log.info("model %s: version %s loaded and validated (was %s); swapping it in after this batch",
                 self.path, found.model.version, self.current.version)
        self.current = found.model
        return found.model


def same_model(a: LoadedModel, b: LoadedModel) -> bool:
    """The whole model.json is equal (it holds weights_sha256): a directory adopted as a version.
    Equal weights alone are not enough: training is seeded, so a new false-alarm rate, EWMA weight
    or --threshold on the same data gives the same weights with another threshold or alarm rule."""
    return bool(a.metadata.get("weights_sha256")) and a.metadata == b.metadata


def validate(new: LoadedModel, old: LoadedModel, sample: np.ndarray | None,
             fits: Callable[[LoadedModel], str | None] | None = None) -> tuple[str, str]:
    """("success", "") or (outcome, why) for a model about to replace `old`. `fits` is checked
    here, before the hand-over, so a model the process cannot run is refused like any other
    (metric, one line, not retried) rather than counted a success and then not swapped in."""
    if list(new.detector.channels) != list(old.detector.channels):
        return "incompatible", (f"version {new.version} has channels {list(new.detector.channels)}, the running "
                                f"model {list(old.detector.channels)} (same names in the same order needed)")
    value = getattr(new.threshold, "value", None)
    if value is None or not np.isfinite(value):
        return "incompatible", f"version {new.version} has no usable threshold ({value!r})"
    why = fits(new) if fits is not None else None
    if why is not None:
        return "incompatible", f"version {new.version} cannot run here: {why}"
    windows = _sample_windows(new, sample)
    b = getattr(new, "baselines", None)
    if b is not None:  # its shared model sees readings standardised by a baseline: the fleet's here
        windows = ((windows - b.fleet_center) / b.fleet_scale).astype(np.float32)
    try:
        scores = new.detector.score(windows)
    except Exception as exc:  # noqa: BLE001
        return "non_finite", f"version {new.version} failed to score a sample of recent readings ({exc!r:.200})"
    bad = int(np.count_nonzero(~np.isfinite(scores.score)))
    if bad or not np.all(np.isfinite(scores.latent)):
        return "non_finite", (f"version {new.version} gave {bad} non-finite scores on {len(windows)} windows "
                              "of recent readings")
    return "success", ""


def _sample_windows(model: LoadedModel, sample: np.ndarray | None) -> np.ndarray:
    w, c = model.detector.window, len(model.detector.channels)
    if sample is None or sample.ndim != 2 or sample.shape[1] != c or len(sample) == 0:
        means = model.metadata.get("training", {}).get("channels", {})
        row = [float(means.get(ch, {}).get("mean", 0.0)) for ch in model.detector.channels]
        sample = np.asarray([row], dtype=np.float32)
    if len(sample) < w:  # too short for one window: repeat the first reading in front
        sample = np.concatenate([np.repeat(sample[:1], w - len(sample), axis=0), sample])
    return sliding_windows(sample, w)[-SAMPLE_WINDOWS:]


def _stat_key(path: Path) -> str:
    parts = []
    for name in (versions.METADATA, versions.WEIGHTS):
        st = os.stat(path / name)
        parts.append(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
    return "files:" + "/".join(parts)
