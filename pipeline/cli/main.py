"""The `latentwatch` command. Each subcommand lives in the module that owns its concern and
registers itself here through `register(subparsers)`; this file only wires them and turns
`UserError` into one clear line."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from latentwatch.pipeline import __version__
from latentwatch.pipeline.errors import UserError

# Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "latentwatch.pipeline.cli.broker",  # broker start|stop|status
    "latentwatch.pipeline.cli.run",  # run, config show, schema
    "latentwatch.pipeline.cli.detect",  # train, score, evaluate
    "latentwatch.pipeline.cli.models",  # models list|show|promote|rollback|groups
    "latentwatch.pipeline.cli.sim",  # simulate, replay, report
    "latentwatch.pipeline.cli.alerts",  # alerts tail|forward
    "latentwatch.pipeline.cli.sensors",  # sensors accept|mute|unmute|show
    "latentwatch.pipeline.cli.demo",  # demo
    "latentwatch.pipeline.cli.bench",  # bench
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentwatch",
        description="Streaming anomaly detection for sensor data on Kafka.",
        # one line per subcommand in --help, whatever the terminal width
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=16, width=140),
    )
    parser.add_argument("--version", action="version", version=f"latentwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def without_triton() -> None:
    """Make PyTorch see no Triton in this process.

    PyTorch imports Triton (the GPU kernel compiler of torch.compile) merely to probe for it as
    soon as anything loads torch._dynamo, and torch.optim does on an optimizer's first parameter
    group (`train`, the demo). Nothing here compiles kernels, and at exit Triton's nanobind
    bindings printed about 30 lines of `nanobind: leaked ... triton ...` warnings under the
    demo's summary. A None entry in sys.modules makes `import triton` fail, so torch's
    has_triton_package() is False, as on a machine without Triton. `bench` keeps Triton: it
    measures torch.compile on a GPU.
    """
    sys.modules.setdefault("triton", None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "bench":
        without_triton()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        rc = args.func(args)
    except UserError as exc:
        print(f"latentwatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
