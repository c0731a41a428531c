"""The Kafka connection flags of every command that talks to Kafka (`--bootstrap`, `--config`)
and the settings they make.

Every such command reads the same `kafka` settings tree as `run` (pipeline/config.py), with the
same precedence: flags > `LATENTWATCH_*` environment variables (`LATENTWATCH_BOOTSTRAP` or
`LATENTWATCH_KAFKA__BOOTSTRAP_SERVERS`, `LATENTWATCH_KAFKA__SASL_PASSWORD`, ...) > the `--config`
file (or `$LATENTWATCH_CONFIG`) > defaults. So TLS and SASL, configured once, reach every client;
pipeline/kafka/clients.py turns the settings into client configurations.
"""

from __future__ import annotations

import argparse
from typing import Any

from latentwatch.pipeline.config import ENV_PREFIX, Settings, load_settings
from latentwatch.pipeline.errors import UserError

BOOTSTRAP_HELP = (f"Kafka bootstrap servers [env {ENV_PREFIX}BOOTSTRAP or {ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS; "
                  "else kafka.bootstrap_servers of --config]")
CONFIG_HELP = (f"YAML config file; its kafka: section (TLS, SASL, librdkafka properties) applies "
               f"[env {ENV_PREFIX}CONFIG]")
LOCAL_FALLBACK = ", else the local broker of `latentwatch broker start`"


def add_connection_flags(p: argparse.ArgumentParser, *, local_fallback: bool = True,
                         bootstrap_help: str | None = None) -> None:
    """--bootstrap and --config."""
    text = bootstrap_help or BOOTSTRAP_HELP[:-1] + (LOCAL_FALLBACK if local_fallback else "") + "]"
    p.add_argument("--bootstrap", default=None, metavar="HOST:PORT", help=text)
    p.add_argument("--config", default=None, metavar="YAML", help=CONFIG_HELP)


def connection_settings(args: argparse.Namespace, overrides: dict[str, Any] | None = None, *,
                        local_fallback: bool = True) -> Settings:
    """The settings of `args.config`, the environment, `--bootstrap` and `overrides` (dotted
    settings paths, e.g. {"group_id": ...}; None values are left out). When no bootstrap address
    is configured anywhere, the broker of `latentwatch broker start`, when one runs (with
    `local_fallback`), else one clear error."""
    flags = {"kafka.bootstrap_servers": getattr(args, "bootstrap", None), **(overrides or {})}
    settings = load_settings(getattr(args, "config", None), flags)
    if local_fallback and not bootstrap_configured(settings):
        settings.kafka.bootstrap_servers = local_broker_address()
    return settings


def bootstrap_configured(settings: Settings) -> bool:
    """Whether a flag, the environment or the config file named the bootstrap servers."""
    return "bootstrap_servers" in settings.kafka.model_fields_set


def local_broker_address() -> str:
    """The address of the broker `latentwatch broker start` runs; UserError when none runs."""
    from latentwatch.pipeline.devtools.local_kafka import LocalBroker, default_state_dir

    info = LocalBroker(default_state_dir()).status()
    if info is None:
        raise UserError(f"no Kafka address: pass --bootstrap HOST:PORT, set {ENV_PREFIX}BOOTSTRAP, "
                        "give a --config file with kafka.bootstrap_servers, or start a broker with "
                        "`latentwatch broker start`")
    return info.bootstrap
