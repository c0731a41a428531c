"""A pipeline with JSON output and no schema registry does not import the Avro and Schema
Registry libraries: importing the run loop (and `run`'s CLI module) leaves them out. Measured
2026-12-06 (python -X importtime, b91509a vs main): fastavro was the one of them imported
eagerly (through pipeline/avro_out.py), ~13 ms and ~3 MiB at every start."""

from __future__ import annotations

import json
import subprocess
import sys

LAZY = ("fastavro", "confluent_kafka.schema_registry", "httpx", "authlib", "jsonschema")


def _imported_by(module: str) -> list[str]:
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({LAZY!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_run_loop_imports_no_avro_or_registry_library():
    assert _imported_by("latentwatch.pipeline.runner") == []


def test_the_run_command_and_the_scorer_import_none_either():
    assert _imported_by("latentwatch.pipeline.cli.run") == []
    assert _imported_by("latentwatch.pipeline.scorer") == []
