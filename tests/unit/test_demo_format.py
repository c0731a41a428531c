"""`demo --format avro|protobuf` (issue 31): the demo starts a schema registry of its own beside its
broker, the pipeline reads through it, and the simulated sensors write schema'd records."""

from __future__ import annotations

import pytest
from latentwatch.pipeline.config import KafkaSettings
from latentwatch.pipeline.devtools import live_demo


def test_demo_format_avro_is_parsed_into_the_options_and_refused_with_the_drift_scenario(monkeypatch, capsys):
    from latentwatch.pipeline.cli.main import main

    seen: list = []
    monkeypatch.setattr(live_demo, "main_demo", lambda opts, scenario=None: seen.append(opts) or 0)
    assert main(["demo", "--duration", "1"]) == 0 and seen[-1].format == "json"
    assert main(["demo", "--duration", "1", "--format", "avro"]) == 0 and seen[-1].format == "avro"
    assert main(["demo", "--duration", "1", "--format", "avro", "--scenario", "drift"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drift scenario" in err[0]


class FakeRegistry:
    events: list = []

    def __init__(self, state_dir):
        self.state_dir = state_dir

    def start(self):
        self.events.append(("start", self.state_dir))
        return type("Info", (), {"url": "http://127.0.0.1:1/apis/ccompat/v7"})()

    def stop(self):
        self.events.append(("stop", self.state_dir))
        return True


class Started(Exception):
    """Stops the demo once start_live was called (what it was given is kept)."""


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_the_demo_starts_a_registry_and_the_avro_producer_only_for_a_schemad_format(monkeypatch, fmt):
    FakeRegistry.events = []
    monkeypatch.setattr(live_demo, "LocalRegistry", FakeRegistry)
    monkeypatch.setattr(live_demo, "_train", lambda opts, sim, workdir: "model")
    encoders: list = []
    monkeypatch.setattr(live_demo, "schema_encoder",
                        lambda f, url, topic, batch_size=1: encoders.append((f, url, topic)) or f"{f}-encoder")
    given: dict = {}

    def start_live(settings, model, sim, rate, on_truth=None, on_unsent=None, fmt="json"):
        given.update(settings=settings, fmt=fmt)
        raise Started

    monkeypatch.setattr(live_demo, "start_live", start_live)
    opts = live_demo.DemoOptions(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"), format=fmt, metrics_port=0)
    with pytest.raises(Started):
        live_demo.run_demo(opts)
    if fmt == "json":
        assert FakeRegistry.events == [] and encoders == [] and given["fmt"] == "json"
        assert given["settings"].schema_registry.url is None
        return
    assert [e for e, _ in FakeRegistry.events] == ["start", "stop"]  # stopped with the demo
    assert FakeRegistry.events[0][1].startswith(live_demo.tempfile.gettempdir())
    url = "http://127.0.0.1:1/apis/ccompat/v7"
    assert encoders == [("avro", url, given["settings"].topics.input)] and given["fmt"] == "avro-encoder"
    assert given["settings"].schema_registry.url == url  # the pipeline decodes through the same registry
