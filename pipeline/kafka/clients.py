"""Kafka client configurations and cluster/topic checks, for every command that talks to Kafka.

Beside it in kafka/: `txn_id.py` (the run loop's transactional.id, claimed through a file lock),
`logs.py` (librdkafka's logger and its repeat filter); dead-letter headers are built with the dead
letters, in pipeline/sink.py."""

from __future__ import annotations

import logging
import os
import socket
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.kafka.logs import LIBRDKAFKA_LOG
from latentwatch.pipeline.kafka.txn_id import fallback_transactional_id

log = logging.getLogger("latentwatch.kafka")


# ----------------------------------------------------------------------------- client configs
# The one place that turns the `kafka` settings tree into librdkafka configurations, for every
# command that talks to Kafka: `run` (consumer_config, producer_config), the subscribers and
# the development tools (tool_consumer_config, tool_producer_config), topic creation and checks
# (admin_config). Connection and security properties come from `settings.kafka` alone, so TLS
# and SASL reach every client alike.

def client_config(settings: Settings) -> dict:
    """Connection and security properties (secrets revealed: for clients only, never log it)
    and our logger."""
    conf = settings.kafka.client_config()
    conf["logger"] = LIBRDKAFKA_LOG
    return conf


def admin_config(settings: Settings) -> dict:
    """An AdminClient's configuration."""
    return client_config(settings)


def tool_consumer_config(settings: Settings, props: dict) -> dict:
    """A consumer of a command other than `run` (alerts tail/forward, demo, bench): the shared
    connection, then `kafka.consumer`, then the command's own `props`, which win (a tail's
    throw-away group id, read_committed...)."""
    conf = client_config(settings)
    conf.update(settings.kafka.consumer)
    conf.update(props)
    return conf


def tool_producer_config(settings: Settings, props: dict | None = None) -> dict:
    """A producer of a command other than `run` (simulate, replay, demo, bench): the shared
    connection, idempotent with acks=all, then `kafka.producer` (a transactional.id there is
    `run`'s and is not taken over), then the command's own `props`."""
    conf = client_config(settings)
    conf.update({"enable.idempotence": True, "acks": "all", "linger.ms": 5})
    conf.update({k: v for k, v in settings.kafka.producer.items() if not k.startswith("transaction")})
    conf.update(props or {})
    return conf


def create_topics(admin: AdminClient, specs: dict[str, tuple[int, dict] | int], replication: int = -1,
                  exist_ok: bool = True, timeout: float = 30.0) -> list[str]:
    """Create topics {name: partitions or (partitions, topic config)} and wait for them; returns
    the names created. Replication -1: the cluster's default (RF 3 on `broker start --nodes 3`).
    A topic that already exists is fine with `exist_ok`; any other failure
    raises KafkaException."""
    new = []
    for name, spec in specs.items():
        partitions, config = spec if isinstance(spec, tuple) else (spec, {})
        new.append(NewTopic(name, partitions, replication, config=config or {}))
    created = []
    for name, fut in admin.create_topics(new).items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if not (exist_ok and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise
    return created


def consumer_config(settings: Settings, on_stats=None, on_error=None, on_commit=None) -> dict:
    """The consumer of `run`."""
    conf = client_config(settings)
    conf.update({
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "isolation.level": "read_committed",
        "statistics.interval.ms": 5000,
        "fetch.wait.max.ms": 50,
        "queued.max.messages.kbytes": 65536,
        "client.id": f"latentwatch-{socket.gethostname()}-{os.getpid()}",
    })
    conf.update(settings.kafka.consumer)
    if on_stats is not None:
        conf["stats_cb"] = on_stats
    if on_error is not None:
        conf["error_cb"] = on_error
    if on_commit is not None:
        conf["on_commit"] = on_commit
    conf["logger"] = LIBRDKAFKA_LOG
    return conf


def producer_config(settings: Settings, on_error=None, transactional_id: str | None = None) -> dict:
    """The producer of `run`."""
    conf = client_config(settings)
    conf.update({
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        # A deleted output topic must not come back behind the user's back with the broker's
        # defaults (auto.create.topics.enable): topics are made by an admin or --create-topics.
        "allow.auto.create.topics": False,
        "client.id": f"latentwatch-{socket.gethostname()}-{os.getpid()}",
    })
    if settings.delivery == "exactly-once":
        # See txn_id.TransactionalId; kafka.producer may still set its own. A transaction lasts
        # one batch, so a short timeout bounds how long a dead process's transaction can hold
        # readers back when no restart takes its id over.
        conf["transactional.id"] = transactional_id or fallback_transactional_id(settings.group_id)
        conf["transaction.timeout.ms"] = 10_000
    conf.update(settings.kafka.producer)
    if on_error is not None:
        conf["error_cb"] = on_error
    conf["logger"] = LIBRDKAFKA_LOG
    return conf


def check_cluster(settings: Settings):
    """Fail with one clear line when Kafka is unreachable or a topic is missing (unless we create
    it). Returns the cluster's metadata (topics as they are now)."""
    conf = admin_config(settings)
    conf["log_level"] = 3
    refused: list[str] = []  # authentication / TLS failures: retrying will not help
    conf["error_cb"] = lambda err: refused.append(err.str()) if err.code() in _REFUSED else None
    try:
        admin = AdminClient(conf)
    except KafkaException as exc:  # e.g. an ssl.ca.location that cannot be read
        raise UserError(f"invalid Kafka client settings: {exc.args[0].str()}: check the kafka.ssl_* "
                        "and kafka.sasl_* settings") from None
    deadline = time.monotonic() + settings.startup_timeout_s
    metadata = None
    while metadata is None:
        try:
            metadata = admin.list_topics(timeout=min(5.0, settings.startup_timeout_s))
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            if refused:
                raise UserError(
                    f"Kafka at {settings.kafka.bootstrap_servers} refused us ({refused[0]}): check "
                    "kafka.security_protocol, kafka.sasl_mechanism/sasl_username/sasl_password and "
                    "kafka.ssl_ca_location") from None
            if time.monotonic() >= deadline:
                raise UserError(
                    f"cannot reach Kafka at {settings.kafka.bootstrap_servers} after "
                    f"{settings.startup_timeout_s:.0f} s ({exc.args[0].str()}): check --bootstrap, the security "
                    "settings, or start a local broker with 'latentwatch broker start'") from None
            log.warning("Kafka at %s not reachable yet, retrying", settings.kafka.bootstrap_servers)
    t = settings.topics
    missing = [name for name in t.names() if name not in metadata.topics]
    if not missing:
        return metadata
    if not settings.create_topics:
        raise UserError(f"topic(s) {', '.join(missing)} do not exist on {settings.kafka.bootstrap_servers}: "
                        "create them, or pass --create-topics (LATENTWATCH_CREATE_TOPICS=true)")
    partitions = len(metadata.topics[t.input].partitions) if t.input in metadata.topics else 8
    try:
        created = create_topics(admin, dict.fromkeys(missing, partitions))
    except KafkaException as exc:
        raise UserError(f"could not create topic(s) {', '.join(missing)}: {exc.args[0].str()}") from None
    for name in created:
        log.info("created topic %s (%d partitions)", name, partitions)
    for _ in range(50):  # created topics show in metadata a moment later
        metadata = admin.list_topics(timeout=min(5.0, settings.startup_timeout_s))
        if all(name in metadata.topics for name in settings.topics.names()):
            break
        time.sleep(0.1)
    return metadata


# Errors that may mean a topic was deleted. librdkafka reports a subscribed topic gone (through
# error_cb) only after topic.metadata.propagation.max.ms (30 s) without it in the metadata; a
# metadata request decides (missing_topics), as it does after any failed batch.
TOPIC_GONE = {KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART,
              KafkaError.UNKNOWN_TOPIC_ID}


def missing_topics(client, names: list[str], timeout: float = 10.0) -> list[str] | None:
    """Which of `names` the cluster does not have; None when it does not answer."""
    try:
        metadata = client.list_topics(timeout=timeout)  # all topics: a request that creates none
    except KafkaException:
        return None
    return [name for name in names if name not in metadata.topics]


def bootstrap_reachable(servers: str, timeout: float = 2.0) -> bool:
    """Whether any bootstrap server accepts a TCP connection (a dead broker refuses at once)."""
    for server in servers.split(","):
        address = server.strip().split("://")[-1]  # librdkafka allows [proto://]host[:port]
        host, colon, port = address.rpartition(":")
        if not colon or "]" in port:  # no port: librdkafka's default
            host, port = address, "9092"
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def topics_gone_message(settings: Settings, missing: list[str]) -> str:
    """One line for topics deleted while running: what happened, what was kept, how to fix it."""
    t = settings.topics
    roles = {t.input: "input", t.alerts: "alerts", t.dead_letter: "dead-letter", t.latent: "latent"}
    it = "it" if len(missing) == 1 else "them"
    text = (" and ".join(f"{roles.get(name, 'the')} topic {name}" for name in missing)
            + f" {'was' if len(missing) == 1 else 'were'} deleted from Kafka at "
            f"{settings.kafka.bootstrap_servers} while running: stopped without committing anything "
            "whose outputs were not acknowledged")
    if any(name != t.input for name in missing):
        text += " (the batch in hand is redone after a restart, not lost)"
    text += (f". Recreate {it} (or restart with --create-topics) and find what deleted {it} "
             "(a clean-up script, topic automation)")
    if t.input in missing:
        text += (f"; the group's committed offsets were deleted with {t.input}, so group {settings.group_id} "
                 f"reads the new topic from auto_offset_reset ({settings.auto_offset_reset})")
    return text


# librdkafka errors that mean "you may not connect like this" rather than "not reachable yet".
_REFUSED = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
            KafkaError._UNSUPPORTED_FEATURE}
