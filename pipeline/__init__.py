"""latentwatch streaming side: Kafka I/O, batching, the run loop, alerts, metrics, config, CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("latentwatch")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+src"
