"""`latentwatch bench`: the throughput / latency / memory benchmark (see bench/)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from latentwatch.bench.cli import add_arguments

    p = sub.add_parser("bench", help="benchmark the pipeline on a real broker (results in bench/results/)",
                       description="Pre-produces the workloads and measures ceilings, the pipeline end to end, "
                                   "a naive baseline, latency, the model stage alone and peak RSS.")
    add_arguments(p)
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from latentwatch.bench.cli import run

    return run(args)
