"""The pipeline's configuration: one pydantic-settings tree.

Precedence: command-line flags > `LATENTWATCH_*` environment variables (nested with `__`, e.g.
`LATENTWATCH_KAFKA__BOOTSTRAP_SERVERS`) > the YAML config file > defaults. `kafka.consumer` and
`kafka.producer` pass librdkafka properties straight through. Secrets are `SecretStr`: they never
appear in `repr`, logs or `config show`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from latentwatch.pipeline.errors import UserError

ENV_PREFIX = "LATENTWATCH_"
_config_file: ContextVar[str | None] = ContextVar("latentwatch_config_file", default=None)


# Our field name -> librdkafka's property.
_LIBRDKAFKA_KEYS = {
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
    "ssl_ca_location": "ssl.ca.location",
    "ssl_certificate_location": "ssl.certificate.location",
    "ssl_key_location": "ssl.key.location",
    "ssl_key_password": "ssl.key.password",
}


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_endpoint_identification_algorithm: Literal["https", "none"] = "https"
    consumer: dict[str, Any] = Field(default_factory=dict, description="librdkafka consumer properties")
    producer: dict[str, Any] = Field(default_factory=dict, description="librdkafka producer properties")

    def client_config(self) -> dict[str, Any]:
        """Common librdkafka properties (dotted keys), secrets revealed: for clients only."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers,
                                "security.protocol": self.security_protocol}
        for field_name, key in _LIBRDKAFKA_KEYS.items():
            value = getattr(self, field_name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                conf[key] = value
        if self.security_protocol in ("SSL", "SASL_SSL"):
            conf["ssl.endpoint.identification.algorithm"] = self.ssl_endpoint_identification_algorithm
        return conf


class TopicSettings(BaseModel):
    input: str = "sensor-readings"
    alerts: str = "anomaly-alerts"
    dead_letter: str = "sensor-readings.dlq"
    latent: str | None = Field(None, description="optional topic with every reading's latent vector and score")
    state: str | None = Field(None, description="compacted changelog of per-sensor state (windowed models, "
                              "per-sensor thresholds); default <group_id>-state, created when missing")

    control: str | None = Field(None, description="compacted topic of operator commands (accept, mute, unmute) "
                                "keyed by sensor id; every member reads all of it; default <input>.control, "
                                "created when missing")

    def names(self) -> list[str]:
        """Every topic the pipeline reads or writes (the latent one when set)."""
        return [self.input, self.alerts, self.dead_letter] + ([self.latent] if self.latent else [])


class BatchSettings(BaseModel):
    # 32768, not 4096: each batch pays a produce/acknowledge round trip and an offset commit.
    # Bench, two back-to-back pairs (bench/results/s2-batch*.md, s3-*.md): pipeline /
    # consume+decode 0.67 -> 0.89 and 0.51 -> 0.70 (batch), 0.66 -> 0.95 and 0.83 -> 0.82
    # (single). In steady traffic max_wait_ms closes batches
    # long before the cap; the cap bounds a backlog's batches (~64 MiB of W=32 windows).
    max_readings: int = Field(32768, ge=1, description="score when this many readings are in hand")
    # 5, not 20: at low rates a batch waits all of it, which was most of the latency. Bench, warm
    # broker, alternating twice (MLP, 10 s at a fixed rate): p50 / p99 batch 10k readings/s
    # 34-36 / 47-49 ms -> 17-18 / 24-55 ms, single 2k/s 25-26 / 43-49 -> 14-15 / 25-30 ms, at
    # 0.17-0.29 -> 0.21-0.44 of a core (more, smaller batches). Under load batches fill first.
    max_wait_ms: float = Field(5.0, ge=0, description="... or when the first of them waited this long")
    # Off by default: see pipeline/pacing.py and pipeline/README.md for the measured trade-off.
    max_latency_ms: float | None = Field(None, gt=0, description="... or when scoring them would take longer "
                                         "than this, by the model's measured cost per reading (pipeline/pacing.py)")
    max_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="... or when this many bytes of messages are in hand")
    max_message_bytes: int = Field(1_000_000, ge=64, description="larger messages are dead letters")
    max_output_bytes: int = Field(128 * 1024 * 1024, ge=1024 * 1024, description="bound on the records one batch "
                                  "makes (alerts, latent); lowers max_readings for models whose records are large, "
                                  "and a message whose readings alone could pass it is a dead letter (too_large)")
    max_future_s: float = Field(86_400.0, ge=0, description="event times further ahead are dead letters")


class StateSettings(BaseModel):
    max_sensors: int = Field(100_000, ge=1, description="per-sensor state entries kept per process; the least "
                             "recently seen is evicted first (see pipeline/state.py for the bytes per entry)")
    idle_ttl_s: float = Field(86_400.0, gt=0, description="a sensor silent this long (wall clock) is evicted")


class ModelSettings(BaseModel):
    path: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    drift_window_s: float = Field(120.0, gt=0, description="seconds of live latent vectors the drift metric "
                                                           "(latentwatch_latent_drift_psi) compares with the training data")
    shadow: str | None = Field(None, description="a candidate model directory scored beside `path` on every batch "
                                                 "(no alerts from it; agreement metrics latentwatch_shadow_*)")


class GroupSettings(BaseModel):
    """One model group (pipeline/groups.py, docs/groups.md): sensors whose id matches `match` are
    scored by the model in `model`, with its own lifecycle (hot swap, drift, shadow)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the group's name: the `group` label of "
                      "its metrics and `model.group` of its alerts")
    match: str = Field(description="a glob on the sensor id (`pump-*`; a prefix is `pump-*`), or `re:<regex>` "
                       "(the whole id must match)")
    model: str = Field(description="its model directory, watched for new versions like model.path")
    shadow: str | None = Field(None, description="a candidate model directory scored beside the group's model")

    @field_validator("match")
    @classmethod
    def _rule(cls, v: str) -> str:
        from latentwatch.pipeline.routing import compile_rule  # the one place rules are read

        compile_rule(v)
        return v


class MetricsSettings(BaseModel):
    host: str = Field("127.0.0.1", description="address /metrics binds to; 0.0.0.0 to expose it")
    port: int = Field(9464, ge=0, le=65535, description="0 picks a free port")


class HealthSettings(BaseModel):
    stall_after_s: float = Field(
        120.0, gt=0, description="/healthz fails when the run loop has not iterated for this long; above "
                                 "the longest a Kafka call may block (a transaction: shutdown_timeout_s + 5)")


class SensorHealthSettings(BaseModel):
    """Sensor health rules (issue 30, docs/sensor-health.md): the model's own (model.json "health",
    set at train from each channel's normal steps) unless given here for this model group."""

    enabled: bool = Field(True, description="judge sensor health (stuck, flatline, silent) when the model has "
                          "the step statistics for it (every model trained since issue 30)")
    stuck_n: int | None = Field(None, ge=2, description="readings a noisy channel must repeat to be stuck (default 30; "
                                "a channel that repeats in normal data needs more: its stuck_after in model.json)")
    flatline_n: int | None = Field(None, ge=2, description="readings every channel must repeat (default 30)")
    silent_s: float | None = Field(None, gt=0, description="seconds of event time without a reading, while the "
                                   "partition moves on, before a sensor is silent (default 300)")

    def overrides(self) -> dict:
        return {"stuck_n": self.stuck_n, "flatline_n": self.flatline_n, "silent_s": self.silent_s}


class BaselineSettings(BaseModel):
    adapt_after: int | None = Field(None, ge=4, description="automatic re-baselining (issue 30, docs/sensor-health.md): "
                                    "a process episode this many readings long whose score has settled (its last two "
                                    "half-spans' mean log scores within log 2) becomes the sensor's new normal, as an "
                                    "operator's accept; null (default): never. Risk: a slow fault that levels off is "
                                    "learnt as normal")


class AlertSettings(BaseModel):
    critical_ratio: float = Field(2.0, gt=1.0, description="statistic >= ratio x its limit is critical")
    cloudevents: bool = Field(True, description="CloudEvents Kafka binding, binary mode: ce_* headers on every "
                              "alert and episode record (the body is unchanged)")
    cloudevents_source: str | None = Field(None, description="ce_source of the alerts; default "
                                           "/latentwatch/<group_id>")
    per_reading: bool = Field(True, description="publish a record per alarmed reading (kind 'reading') beside "
                                                "the episode events (kind 'episode'); false: episodes only")
    format: Literal["json", "avro"] = Field("json", description="the records of the alerts and latent topics: "
                                            "json, or avro (Confluent wire format, schemas pipeline/schemas/*.avsc "
                                            "registered under <topic>-value; needs schema_registry.url)")


class RegistrySettings(BaseModel):
    """The Schema Registry schema'd input is read through (Confluent's API; Apicurio's ccompat too)."""

    url: str | None = Field(None, repr=False, description="Schema Registry URL, e.g. http://registry:8080/apis/ccompat/v7; "
                            "unset: a Confluent wire-format message is a dead letter (unknown_schema)")
    basic_auth_user_info: SecretStr | None = Field(None, description="user:password for HTTP basic auth")
    bearer_token: SecretStr | None = Field(None, description="a static bearer token (Authorization: Bearer)")
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    timeout_s: float = Field(5.0, gt=0, description="per request; an unanswered request is an outage")
    backoff_max_s: float = Field(10.0, gt=0, description="the longest wait between retries while the "
                                 "registry cannot be reached (0.5 s doubling up to this)")


class InputMapping(BaseModel):
    """Which fields of a schema'd record give a reading (pipeline/decode/wire.py); the defaults
    read a record shaped like our JSON contract."""

    sensor_id: str = Field("sensor_id", description="field with the sensor id (else the message key)")
    time: str = Field("ts", description="field with the event time: Avro timestamp-millis/-micros, "
                      "Protobuf google.protobuf.Timestamp, ISO-8601 string, or a number in time_unit")
    time_unit: Literal["s", "ms", "us"] = Field("s", description="unit of a plain-number event time")
    channels: str | None = Field("values", description="field holding the channels (map, array in the "
                                 "model's order, or record / nested message); null or absent: top-level fields "
                                 "named like them")
    rename: dict[str, str] = Field(default_factory=dict, description="model channel -> field name")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    group_id: str = "latentwatch"
    instance_id: str | None = Field(None, description="unique per live process, stable across its restarts (the "
                                    "Helm chart passes <namespace>/<pod name>); names its transactional.id instead "
                                    "of the hostname")
    model: ModelSettings = Field(default_factory=ModelSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    sensors: SensorHealthSettings = Field(default_factory=SensorHealthSettings)
    baseline: BaselineSettings = Field(default_factory=BaselineSettings)
    schema_registry: RegistrySettings = Field(default_factory=RegistrySettings)
    input_mapping: InputMapping = Field(default_factory=InputMapping)
    groups: list[GroupSettings] = Field(default_factory=list, description="model groups, in order: the first "
                                        "whose `match` fits a sensor id scores it (pipeline/groups.py, docs/groups.md)")
    groups_fallback: str | None = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="with groups: "
                                        "the name of the group model.path scores (sensors no group matches); "
                                        "none (or null): such sensors are dead letters (no_group)")
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    late_policy: Literal["dead-letter", "score"] = Field(
        "dead-letter", description="a reading not newer than its sensor's last one: dead-letter or score anyway")
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    create_topics: bool = Field(False, description="create missing topics at start instead of failing")
    startup_timeout_s: float = Field(30.0, gt=0, description="give up if Kafka is unreachable this long at start")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="bound on finishing the batch in hand at exit")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @model_validator(mode="after")
    def _group_names(self) -> "Settings":
        names = [g.name for g in self.groups] + ([self.groups_fallback] if self.fallback_group else [])
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"group name {twice[0]!r} is used twice (groups[].name and groups_fallback)")
        return self

    @property
    def fallback_group(self) -> str | None:
        """The name of the group model.path scores when groups are configured (None: no fallback)."""
        fb = self.groups_fallback
        return None if fb is None or fb.lower() == "none" else fb

    def masked(self) -> dict[str, Any]:
        """The effective configuration with secrets masked, for `config show` and logs."""
        data = self.model_dump(mode="json")  # SecretStr dumps as '**********'
        for section in ("consumer", "producer"):
            for key in data["kafka"][section]:
                # sasl.oauthbearer.config and .extensions carry clientSecret= / tokens in free text
                if any(word in key for word in ("password", "secret", "key", "token", "jaas", "oauthbearer.config",
                                                "extensions", "credential")):
                    data["kafka"][section][key] = "**********"
        data["schema_registry"]["url"] = mask_url(data["schema_registry"]["url"])
        return data


def mask_url(url: str | None) -> str | None:
    """`url` with user info (user:password@) masked, for showing and logging."""
    if not url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc = rest.split("/", 1)[0]
    if "@" not in netloc:
        return url
    return f"{scheme}{sep}**********@{netloc.rsplit('@', 1)[1]}{rest[len(netloc):]}"


def load_settings(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from defaults, `config_file`, the environment and `overrides` (flags)."""
    config_file = config_file or os.environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file {config_file} does not exist: fix --config or {ENV_PREFIX}CONFIG")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"config file {config_file}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    init = _nest({k: v for k, v in (overrides or {}).items() if v is not None})
    alias = os.environ.get(ENV_PREFIX + "BOOTSTRAP")  # the short name other commands use too
    if alias and not os.environ.get(ENV_PREFIX + "KAFKA__BOOTSTRAP_SERVERS"):
        init.setdefault("kafka", {}).setdefault("bootstrap_servers", alias)
    token = _config_file.set(config_file)
    try:
        return Settings(**init)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        source = f" (from {config_file}, the environment or a flag)" if config_file else ""
        msg = err["msg"].removeprefix("Value error, ")  # a validator's own sentence
        raise UserError(f"invalid configuration: {where + ': ' if where else ''}{msg}{source}") from None
    finally:
        _config_file.reset(token)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"kafka.bootstrap_servers": x} -> {"kafka": {"bootstrap_servers": x}}."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
