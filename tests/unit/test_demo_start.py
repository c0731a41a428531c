"""The live demo starts its simulated sensors only once the pipeline holds partitions.

Sensors produced into a topic nobody consumes yet: the group's first join (and the state
restore) is a start-up backlog, and the demo's end-to-end p99 was that backlog (measured at
400 readings/s: p99 416 ms, p50 19 ms), not the steady state it means to show.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from latentwatch.pipeline import runner
from latentwatch.pipeline.devtools import live_demo
from latentwatch.pipeline.health import Health


class FakePipeline:
    """Joins the group `join_s` after run() starts; records what happened in what order."""

    def __init__(self, settings, model, events: list, join_s: float = 0.3):
        self.health = Health()
        self.health.model_loaded("m")
        self.events, self.join_s = events, join_s
        self.metrics_server = SimpleNamespace(server_port=1)
        self.stopped = threading.Event()

    def start(self):
        self.events.append("start")

    def run(self):
        time.sleep(self.join_s)
        self.events.append("assigned")
        self.health.on_assigned([object(), object()])
        self.stopped.wait(5)


class FakeStream:
    def __init__(self, events):
        self.events = events

    def __call__(self, *args, **kwargs):
        return self

    def start(self):
        self.events.append("stream")
        return self


@pytest.fixture
def fakes(monkeypatch):
    events: list = []
    made: list = []

    def make(settings, model):
        made.append(FakePipeline(settings, model, events))
        return made[-1]

    monkeypatch.setattr(runner, "Pipeline", make)
    monkeypatch.setattr(live_demo, "_create_input_topic", lambda settings, partitions: None)
    monkeypatch.setattr(live_demo, "Producer", lambda conf: object())
    monkeypatch.setattr(live_demo, "BackgroundStream", FakeStream(events))
    monkeypatch.setattr(live_demo.clients, "tool_producer_config", lambda settings, props: {})
    yield events, made
    for p in made:
        p.stopped.set()


def test_the_stream_starts_after_the_pipeline_is_assigned(fakes):
    events, made = fakes
    settings = SimpleNamespace(metrics=SimpleNamespace(host="127.0.0.1"), topics=SimpleNamespace(input="in"))
    live_demo.start_live(settings, SimpleNamespace(version="1"), sim=None, rate=10)
    assert events == ["start", "assigned", "stream"]


def test_a_group_that_never_answers_still_starts_the_stream_after_the_wait(fakes, monkeypatch):
    events, made = fakes
    monkeypatch.setattr(live_demo, "ASSIGNMENT_WAIT_S", 0.2)
    monkeypatch.setattr(FakePipeline, "run", lambda self: self.stopped.wait(5))
    settings = SimpleNamespace(metrics=SimpleNamespace(host="127.0.0.1"), topics=SimpleNamespace(input="in"))
    t0 = time.monotonic()
    live_demo.start_live(settings, SimpleNamespace(version="1"), sim=None, rate=10)
    assert events == ["start", "stream"] and 0.2 <= time.monotonic() - t0 < 3
