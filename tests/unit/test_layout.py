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


TEST_PACKAGES = ("tests.unit", "tests.system", "tests.integration", "tests.artifacts")


def imports_of_test_modules(path: Path, source: str | None = None) -> set[str]:
    """`line: module` for each import in `path` (top level or inside a function, relative ones
    made absolute) that names a test module or a test package."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    out = set()
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{module}" if module else base
            names = [module, *(f"{module}.{a.name}" for a in node.names)]
        else:
            continue
        hits = [m for m in names if m in TEST_PACKAGES or m.startswith(tuple(f"{t}." for t in TEST_PACKAGES))]
        if hits:
            out.add(f"{node.lineno}: {hits[0]}")
    return out


def test_no_test_module_imports_another():
    """tests/conftest.py's rule: shared code lives in tests/support/ (plugins or plain modules),
    so no module under tests/ imports a test module."""
    here = ROOT / "tests" / "unit" / "test_x.py"
    assert imports_of_test_modules(here, "def f():\n    from tests.unit.test_scorer import reading\n")  # the check can fail
    assert imports_of_test_modules(here, "from .test_scorer import reading\n")
    assert imports_of_test_modules(here, "from ..system import test_swap\n")
    assert not imports_of_test_modules(here, "from tests.support.fakes import messages\nimport tests.support.skab\n")
    bad = {f"{p.relative_to(ROOT)}:{hit}" for p in (ROOT / "tests").rglob("*.py") for hit in imports_of_test_modules(p)}
    assert not bad, "\n".join(sorted(bad))
