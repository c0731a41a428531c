"""A producer nobody here wrote (issue 31): a Java program using Apache Avro's GenericRecord and the
Kafka Java client, the Confluent wire format written by hand (tests/java/), built with Maven once
per session. Its stream gives the same alerts as the same readings in JSON."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import counter, read_topic
from tests.support.schema_streams import as_json, outcome, produce, readings, run_until_scored

JAVA_SRC = Path(__file__).resolve().parents[1] / "java"


@pytest.fixture(scope="session")
def java_producer(tmp_path_factory) -> list[str]:
    """The command that runs the producer (built in a copy of tests/java: workers do not share a
    target/; the jars come from ~/.m2, fetched from Maven Central the first time)."""
    mvn, java = shutil.which("mvn"), shutil.which("java")
    if mvn is None or java is None:
        pytest.skip("needs Maven and a JDK (mvn, java on PATH): CI has JDK 17 + Maven")
    build = tmp_path_factory.mktemp("java") / "producer"
    shutil.copytree(JAVA_SRC, build, ignore=shutil.ignore_patterns("target"))
    done = subprocess.run([mvn, "-q", "-B", "compile", "dependency:build-classpath",
                           "-Dmdep.outputFile=target/classpath.txt"], cwd=build, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    classpath = f"{build / 'target' / 'classes'}:{(build / 'target' / 'classpath.txt').read_text().strip()}"
    return [java, "-cp", classpath, "com.acme.plant.SensorProducer"]


def test_a_java_generic_record_producer_gives_the_same_alerts_as_the_same_readings_in_json(
        java_producer, kafka_bootstrap, make_topic, registry_url):
    rs = readings(120)
    json_topic, java_topic = make_topic(), make_topic()
    produce(kafka_bootstrap, json_topic, as_json(rs))
    lines = "".join(f"{s}\t{round(ts * 1000)}\t{','.join(f'{k}={v!r}' for k, v in vals.items())}\n"
                    for s, ts, vals in rs)
    done = subprocess.run(java_producer + [kafka_bootstrap, java_topic, registry_url], input=lines,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sent {len(rs)} records" in done.stdout
    msgs = read_topic(kafka_bootstrap, java_topic)
    assert len(msgs) == len(rs) and all(m.value()[0] == 0 for m in msgs)

    s_json, _ = run_until_scored(kafka_bootstrap, json_topic, len(rs))
    s_java, m_java = run_until_scored(kafka_bootstrap, java_topic, len(rs), **{"schema_registry.url": registry_url})
    alerts_json = read_topic(kafka_bootstrap, s_json.topics.alerts)
    alerts_java = read_topic(kafka_bootstrap, s_java.topics.alerts)
    assert len(alerts_java) >= 7
    assert outcome(alerts_java) == outcome(alerts_json)
    assert read_topic(kafka_bootstrap, s_java.topics.dead_letter) == []
    assert counter(m_java, "latentwatch_readings_scored_total") == len(rs)
