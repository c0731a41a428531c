"""A Pipeline without a broker for the operator-command and re-baselining tests: an in-memory
sink and committer, batches fed from payloads, and a small trained PCA model."""

from __future__ import annotations

import json
import math

import numpy as np
from latentwatch.detectors.alarms import AlarmRule
from latentwatch.pipeline.config import Settings

from tests.support.fakes import messages
from tests.support.stub_model import stub_model

NOW = 1_800_000_000.0


class _Sink:
    def __init__(self):
        self.alerts, self.changelog, self.truncated = [], [], 0

    def produce_batch(self, batch, state_topic, tombstones):
        self.alerts += [json.loads(v) for _, v in batch.alerts]
        self.changelog += batch.changelog


class _Committer:
    def begin(self):
        pass

    def commit(self, offsets):
        pass


def _pipeline(model=None, commands=()):
    from latentwatch.pipeline.runner import Pipeline

    if model is None:
        model = stub_model(window=1, threshold=30.0)
        model.alarm = AlarmRule(instant=30.0, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=5)
    p = Pipeline(Settings(batch={"max_future_s": 10**9}, topics={"input": "in"}), model)
    p.sink, p.committer, p.state_topic = _Sink(), _Committer(), "changelog"
    for c in commands:
        p.commands.put(c)
    return p


def _feed(p, payloads, batch=9, first=0):
    for i in range(0, len(payloads), batch):
        p.process(messages(payloads[i:i + batch], first_offset=first + i), limit=10**6)



def train_small(tmp_path, now: float, rng) -> None:
    """A window-1 PCA model of 4 sensors' N(0, 1) readings in tmp_path/m, cold start 50 readings."""
    from latentwatch.pipeline.cli.main import main

    with open(tmp_path / "train.csv", "w") as f:
        f.write("timestamp,sensor_id,a,b,c\n")
        for i in range(4000):
            f.write(f"{now - 10_000 + i},s{i % 4}," + ",".join(f"{v:.4f}" for v in rng.normal(0, 1, 3)) + "\n")
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"), "--model", "pca",
                 "--window", "1", "--no-own-models", "--cold-start-readings", "50"]) == 0


def _trained(tmp_path):
    from latentwatch.detectors.checkpoint import load

    train_small(tmp_path, NOW, np.random.default_rng(3))
    return load(tmp_path / "m")
