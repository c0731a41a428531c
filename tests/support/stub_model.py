"""A tiny numpy detector with the real interface, for run-loop tests that must not depend on
training: score = mean squared z-score of the window's last reading."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from latentwatch.detectors.alarms import AlarmRule
from latentwatch.detectors.base import Detector, Scores


class ZScoreDetector(Detector):
    kind = "zscore-stub"

    def __init__(self, channels: list[str], window: int = 1):
        self.channels = channels
        self.window = window
        self.latent_dim = 2
        self.mean = np.zeros(len(channels), np.float32)
        self.std = np.ones(len(channels), np.float32)
        self.calls = 0

    def fit(self, X, **options):
        self.mean, self.std = X.mean(0), X.std(0) + 1e-6
        return self

    def score(self, windows):
        self.calls += 1
        z = (windows[:, -1, :] - self.mean) / self.std
        err = (z ** 2).astype(np.float32)
        latent = np.stack([z.mean(1), windows.mean((1, 2))], 1).astype(np.float32)
        return Scores(latent=latent, channel_error=err, score=err.mean(1))


@dataclass
class StaticThreshold:
    value: float

    def thresholds(self, scores, keys=None):
        return np.full(len(scores), self.value)


@dataclass
class StubModel:
    detector: ZScoreDetector
    threshold: StaticThreshold
    name: str = "stub"
    version: str = "0"
    metadata: dict = field(default_factory=dict)
    alarm: AlarmRule | None = None  # None: the threshold alone (no EWMA), as a checkpoint without one

    def __post_init__(self):
        if self.alarm is None:
            self.alarm = AlarmRule.instant_only(self.threshold.value)


def stub_model(channels=("a", "b", "c"), window: int = 1, threshold: float = 9.0) -> StubModel:
    return StubModel(ZScoreDetector(list(channels), window), StaticThreshold(threshold))
