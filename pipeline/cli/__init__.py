"""The `latentwatch` command, one module per command group (`main.py` wires them)."""

from latentwatch.pipeline.cli.main import main  # noqa: F401
