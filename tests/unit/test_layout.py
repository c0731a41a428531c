"""The house rules of the source tree, checked: the streaming core never imports the CLI, the
development tools or the subscribers; detectors/ has no Kafka in it; everything installs under
the one name `latentwatch`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = [p for p in (ROOT / "pipeline").glob("*.py")] + list((ROOT / "pipeline" / "kafka").glob("*.py"))
OUTSIDE_CORE = ("latentwatch.pipeline.cli", "latentwatch.pipeline.devtools", "latentwatch.pipeline.subscribers")


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_the_core_imports_no_cli_devtools_or_subscribers():
    assert len(CORE) >= 10
    bad = {f"{p.relative_to(ROOT)}: {m}" for p in CORE for m in imports(p) if m.startswith(OUTSIDE_CORE)}
    assert not bad, bad


def test_detectors_have_no_kafka_and_no_pipeline():
    bad = {f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / "detectors").glob("*.py") for m in imports(p)
           if m.startswith(("confluent_kafka", "latentwatch.pipeline"))}
    assert not bad, bad


def test_our_code_imports_itself_only_under_the_latentwatch_name():
    bad = set()
    for folder in ("pipeline", "detectors", "bench", "tests"):
        for p in (ROOT / folder).rglob("*.py"):
            for m in imports(p):
                if m.split(".")[0] in ("pipeline", "detectors", "bench"):
                    bad.add(f"{p.relative_to(ROOT)}: {m}")
    assert not bad, bad
