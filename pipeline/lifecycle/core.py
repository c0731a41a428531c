"""The model lifecycle as the run loop sees it: hot swap and latent drift in three calls.

    life = Lifecycle(model, metrics, path=settings.model.path, device=settings.model.device)
    # (cli/run.py) signal.signal(signal.SIGHUP, lambda *_: life.request_check())
    ...
    # a listener of the run loop's events (events.py): after a batch committed, drift and the
    # shadow model when there is one; on a revoke or a rewind, the shadow forgets those partitions
    life.on_batch_committed(events.Committed(batch, ...))
    # between two batches (the batch in hand has finished on the old model)
    new = life.between_batches()
    if new is not None:
        ...  # pipeline.runner.Pipeline._swap: a new scorer; per-sensor state kept or re-windowed

`between_batches` never blocks: loading and validating happen on the watcher's thread
(watch.py). With a `shadow` (shadow.py, `run --shadow DIR`), a committed batch also has the
candidate score the batch and count agreement, and `forget` drops its state of partitions that
moved or were rewound. On a swap it exports the new model's info, threshold and age and starts a new
drift window against the new model's training data.
"""

from __future__ import annotations

import numpy as np
from latentwatch.detectors.checkpoint import LoadedModel
from latentwatch.pipeline.lifecycle.drift import LatentDrift
from latentwatch.pipeline.events import Committed, Listener
from latentwatch.pipeline.lifecycle.watch import ModelWatcher
from latentwatch.pipeline.lifecycle.shadow import Shadow

__all__ = ["Lifecycle"]
SAMPLE_READINGS = 512  # recent readings a new version is validated on


class Lifecycle(Listener):
    def __init__(self, model: LoadedModel, metrics, *, path: str | None = None, device: str = "cpu",
                 interval_s: float = 5.0, drift_window_s: float = 120.0, watcher: ModelWatcher | None = None,
                 shadow: Shadow | None = None, fits=None):
        self.model, self.metrics, self.drift_window_s, self.shadow = model, metrics, drift_window_s, shadow
        metrics.set_model(model)
        self.watcher = watcher or (ModelWatcher(path, model, device=device, interval_s=interval_s, metrics=metrics,
                                                fits=fits) if path else None)
        self.drift = LatentDrift.from_model(model, metrics=metrics, **self._drift_window())
        self._recent: np.ndarray | None = None

    @classmethod
    def for_settings(cls, model: LoadedModel, metrics, settings, shadow: LoadedModel | None = None,
                     fits=None) -> Lifecycle:
        """The run loop's: watch `model.path`, drift over `model.drift_window_s`, `shadow` beside;
        `fits(model)`: why a new version cannot run in this process (refused by the watcher)."""
        s = settings.model
        return cls(model, metrics, path=s.path, device=s.device, drift_window_s=s.drift_window_s,
                   shadow=Shadow(shadow, metrics, settings) if shadow is not None else None, fits=fits)

    def on_batch_committed(self, done: Committed) -> None:
        """One committed batch of the loaded model (after the batch's own timings are taken)."""
        batch = done.batch
        if batch.latent is not None:
            self.scored(batch.values, batch.latent, batch.flagged)
        if self.shadow is not None:
            self.shadow.observe(batch)

    def on_revoked(self, partitions) -> None:
        self.forget({tp.partition for tp in partitions})

    def on_reloaded(self, partitions) -> None:
        self.forget({tp.partition for tp in partitions})  # the shadow's state: warms up again

    def forget(self, partitions: set[int]) -> None:
        if self.shadow is not None:
            self.shadow.forget(partitions)

    def scored(self, values: np.ndarray, latent: np.ndarray, exceeded: np.ndarray) -> None:
        """One batch: its readings [n, channels] (kept by reference, copied only when a check
        needs a sample), the latent vectors of its scored readings and which exceeded."""
        if len(values):
            self._recent = values
        if self.drift is not None:
            self.drift.observe(latent, exceeded)

    def between_batches(self) -> LoadedModel | None:
        if self.watcher is None:
            return None
        new = self.watcher.poll(sample=self._sample)
        if new is None:
            return None
        self.model = new
        self.metrics.set_model(new)
        self.drift = LatentDrift.from_model(new, metrics=self.metrics, **self._drift_window())
        return new

    def request_check(self) -> None:
        """SIGHUP: look at the pointer now (and retry a refused version)."""
        if self.watcher is not None:
            self.watcher.request_check()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()

    def _drift_window(self) -> dict:
        return {"window_s": self.drift_window_s, "bucket_s": min(10.0, self.drift_window_s / 4)}

    def _sample(self) -> np.ndarray | None:
        return None if self._recent is None else self._recent[-SAMPLE_READINGS:]
