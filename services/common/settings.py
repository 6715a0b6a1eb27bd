"""Settings read once from `LC_*` environment variables into a frozen dataclass.

Every service calls `Settings.from_env(service)` in its `__main__` and nowhere else: nothing
reads the environment at import time, and a missing or malformed variable stops the process
at start with the variable's name in the message.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

DEFAULT_PORTS = {"live_orders": 8081, "inventory": 8082, "notifier": 8083}


class SettingsError(ValueError):
    """A required `LC_*` variable is missing or cannot be parsed."""


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _read(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T | None) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise SettingsError(f"{name} is required but not set")
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        # The value itself is shown unless it is (or may carry) a secret.
        shown = MASK if name in SECRET_VARIABLES else repr(raw)
        raise SettingsError(f"{name}={shown} is malformed: {exc}") from None


@dataclass(frozen=True, slots=True)
class Settings:
    service: str
    jwt_secret: str
    http_host: str = "0.0.0.0"
    http_port: int = 8081
    kafka_bootstrap: str = "localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    # Redis Cluster: LC_REDIS_CLUSTER=1, or a `redis+cluster://host:port[,host:port]` URL.
    # The URL then names seed nodes; the client learns the rest from CLUSTER SLOTS.
    redis_cluster: bool = False
    topic_prefix: str = "lc."
    topic_partitions: int = 12
    topic_replication_factor: int = 1
    # min.insync.replicas of every topic this deployment creates; 0: the broker's default
    # (none is set), unless the replication factor is above 1, where 2 is the default.
    kafka_min_insync_replicas: int = 0
    topic_retention_ms: int = 7 * 24 * 3600 * 1000
    reservation_ttl_s: float = 900.0
    # Key prefix for every Redis key this deployment writes, so that test runs and
    # several stacks can share one Redis without seeing each other's data.
    redis_prefix: str = "lc:"
    max_body_bytes: int = 64 * 1024
    # How long a request body may take to arrive once its handler reads it (408 after): a
    # client trickling bytes must not hold a connection and a handler for minutes.
    body_read_timeout_s: float = 5.0
    consumer_batch_max: int = 500
    # Buyer token bucket: a human pressing buy a few times never reaches it; a bot does.
    rate_limit_burst: int = 10
    rate_limit_per_s: float = 5.0
    order_wait_default_s: float = 2.0
    publish_timeout_s: float = 5.0
    order_retention_s: int = 30 * 24 * 3600
    push_interval_s: float = 0.25
    sweep_interval_s: float = 1.0
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    instance_id: str = ""
    # uvloop (libuv) runs the same asyncio code with less CPU per socket event; "asyncio"
    # keeps the standard loop (to compare, or where uvloop cannot be installed).
    event_loop: str = "uvloop"
    # How long the producer holds a batch open for more events. Batches form anyway while
    # a request to the broker is in flight (aiokafka keeps one per broker), so this only
    # adds latency to the first event after a quiet spell.
    kafka_linger_ms: int = 0
    # How long the broker holds a fetch with no new data. It bounds a stall in aiokafka:
    # a partition whose records the handler holds for over 100 ms is left out of the next
    # fetch, and cannot be fetched again until that fetch returns. Shorter also means more
    # polls from idle consumers (each costs the broker CPU).
    kafka_fetch_max_wait_ms: int = 50
    # How long a Redis reply may take before the command counts as failed (the connection
    # is then dropped, never reused with a reply in flight, and the call retried).
    redis_timeout_s: float = 5.0
    # How long a consumer's batch handler may run before it is cancelled and the batch
    # retried (kafka_consumer.ConsumerRunner).
    handler_timeout_s: float = 30.0
    # The secret trace codes are derived from (inventory); "" means LC_JWT_SECRET, under a
    # key of its own (see inventory.domain.trace_key). Changing it changes the code of
    # every task re-sent afterwards: set it once and keep it.
    trace_secret: str = ""
    # -- retention of what grows per order or per pick (docs/operations.md "Retention")
    # Kafka deletes a whole segment once its newest record is past retention.ms, so a
    # record stays readable up to retention + segment.ms + the broker's retention check
    # interval (log.retention.check.interval.ms, 5 min by default): that sum is the replay
    # window every dedup and decision entry is kept for (`replay_window_ms`). New topics
    # get segment.ms = min(LC_TOPIC_SEGMENT_MS, LC_TOPIC_RETENTION_MS).
    topic_segment_ms: int = 24 * 3600 * 1000
    replay_slack_ms: int = 5 * 60 * 1000
    # A completed pick stays in its warehouse's `done` list this long.
    pick_retention_s: int = 7 * 24 * 3600
    # A box's trace (the pick task, its code, the order's picks and buyer) stays readable
    # this long after the pick was completed: longer than anyone keeps a box of crabs,
    # a bag of rice or a tin of tea around to scan it, with room for a complaint.
    trace_retention_s: int = 400 * 24 * 3600
    # -- transport security (docs/operations.md "Transport security")
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    redis_username: str = ""
    redis_password: str = ""
    redis_ssl_cafile: str = ""

    def __repr__(self) -> str:
        # Settings get printed (a debugger, a failed test, a log line): never the secrets.
        shown = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.name in SECRET_FIELDS and value:
                value = MASK
            elif spec.name == "redis_url":
                value = mask_url_password(value)
            shown.append(f"{spec.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def replay_window_ms(self) -> int:
        """How long after an event Kafka may still deliver it (see topic_segment_ms):
        dedup and decision entries are kept this long after the last event needing them."""
        return self.topic_retention_ms + self.segment_ms + self.replay_slack_ms

    @property
    def segment_ms(self) -> int:
        """segment.ms of the topics this process creates."""
        return min(self.topic_segment_ms, self.topic_retention_ms)

    @property
    def trace_key_secret(self) -> str:
        """What trace codes are keyed by: LC_TRACE_SECRET, else LC_JWT_SECRET."""
        return self.trace_secret or self.jwt_secret

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings of `service` from `env` (default: `os.environ`)."""
        if service not in DEFAULT_PORTS:
            raise SettingsError(f"unknown service {service!r}")
        env = os.environ if env is None else env
        port_var = f"LC_{service.upper()}_PORT"
        redis_url = _read(env, "LC_REDIS_URL", _redis_url, "redis://localhost:6379/0")
        return cls(
            service=service,
            jwt_secret=_read(env, "LC_JWT_SECRET", _secret, None),
            http_host=_read(env, "LC_HTTP_HOST", str, "0.0.0.0"),
            http_port=_read(env, port_var, _positive_int, DEFAULT_PORTS[service]),
            kafka_bootstrap=_read(env, "LC_KAFKA_BOOTSTRAP", str, "localhost:9092"),
            redis_url=redis_url,
            redis_cluster=_read(env, "LC_REDIS_CLUSTER", _flag, False) or is_cluster_url(redis_url),
            topic_prefix=_read(env, "LC_TOPIC_PREFIX", str, "lc."),
            topic_partitions=_read(env, "LC_TOPIC_PARTITIONS", _positive_int, 12),
            topic_replication_factor=_read(env, "LC_TOPIC_REPLICATION_FACTOR", _positive_int, 1),
            kafka_min_insync_replicas=_read(
                env, "LC_KAFKA_MIN_INSYNC_REPLICAS", _non_negative_int, 0
            ),
            topic_retention_ms=_read(
                env, "LC_TOPIC_RETENTION_MS", _positive_int, 7 * 24 * 3600 * 1000
            ),
            reservation_ttl_s=_read(env, "LC_RESERVATION_TTL_S", _non_negative_float, 900.0),
            redis_prefix=_read(env, "LC_REDIS_PREFIX", str, "lc:"),
            max_body_bytes=_read(env, "LC_MAX_BODY_BYTES", _positive_int, 64 * 1024),
            body_read_timeout_s=_read(env, "LC_BODY_READ_TIMEOUT_S", _positive_float, 5.0),
            consumer_batch_max=_read(env, "LC_CONSUMER_BATCH_MAX", _positive_int, 500),
            rate_limit_burst=_read(env, "LC_RATE_LIMIT_BURST", _positive_int, 10),
            rate_limit_per_s=_read(env, "LC_RATE_LIMIT_PER_S", _non_negative_float, 5.0),
            order_wait_default_s=_read(env, "LC_ORDER_WAIT_DEFAULT_S", _non_negative_float, 2.0),
            publish_timeout_s=_read(env, "LC_PUBLISH_TIMEOUT_S", _positive_float, 5.0),
            order_retention_s=_read(env, "LC_ORDER_RETENTION_S", _positive_int, 30 * 24 * 3600),
            push_interval_s=_read(env, "LC_PUSH_INTERVAL_S", _non_negative_float, 0.25),
            sweep_interval_s=_read(env, "LC_SWEEP_INTERVAL_S", _non_negative_float, 1.0),
            allowed_origins=_read(env, "LC_ALLOWED_ORIGINS", _csv, ()),
            log_level=_read(env, "LC_LOG_LEVEL", _log_level, "INFO"),
            instance_id=_read(env, "LC_INSTANCE_ID", str, f"{service}-{os.getpid()}"),
            event_loop=_read(env, "LC_EVENT_LOOP", _event_loop, "uvloop"),
            kafka_linger_ms=_read(env, "LC_KAFKA_LINGER_MS", _non_negative_int, 0),
            kafka_fetch_max_wait_ms=_read(env, "LC_KAFKA_FETCH_MAX_WAIT_MS", _positive_int, 50),
            redis_timeout_s=_read(env, "LC_REDIS_TIMEOUT_S", _positive_float, 5.0),
            handler_timeout_s=_read(env, "LC_HANDLER_TIMEOUT_S", _positive_float, 30.0),
            trace_secret=_read(env, "LC_TRACE_SECRET", _secret, ""),
            topic_segment_ms=_read(env, "LC_TOPIC_SEGMENT_MS", _positive_int, 24 * 3600 * 1000),
            replay_slack_ms=_read(env, "LC_REPLAY_SLACK_MS", _non_negative_int, 5 * 60 * 1000),
            pick_retention_s=_read(env, "LC_PICK_RETENTION_S", _positive_int, 7 * 24 * 3600),
            trace_retention_s=_read(env, "LC_TRACE_RETENTION_S", _positive_int, 400 * 24 * 3600),
            kafka_security_protocol=_read(
                env, "LC_KAFKA_SECURITY_PROTOCOL", _kafka_protocol, "PLAINTEXT"
            ),
            kafka_sasl_mechanism=_read(env, "LC_KAFKA_SASL_MECHANISM", _sasl_mechanism, ""),
            kafka_sasl_username=_read(env, "LC_KAFKA_SASL_USERNAME", str, ""),
            kafka_sasl_password=_read(env, "LC_KAFKA_SASL_PASSWORD", str, ""),
            kafka_ssl_cafile=_read(env, "LC_KAFKA_SSL_CAFILE", str, ""),
            kafka_ssl_certfile=_read(env, "LC_KAFKA_SSL_CERTFILE", str, ""),
            kafka_ssl_keyfile=_read(env, "LC_KAFKA_SSL_KEYFILE", str, ""),
            redis_username=_read(env, "LC_REDIS_USERNAME", str, ""),
            redis_password=_read(env, "LC_REDIS_PASSWORD", str, ""),
            redis_ssl_cafile=_read(env, "LC_REDIS_SSL_CAFILE", str, ""),
        )._checked()

    def _checked(self) -> Settings:
        """Rules between settings, each naming the variable to change."""
        if self.trace_retention_s * 1000 < self.replay_window_ms:
            raise SettingsError(
                f"LC_TRACE_RETENTION_S={self.trace_retention_s} is shorter than the topics' "
                f"replay window ({self.replay_window_ms // 1000} s): a replayed "
                "pick.requested would reopen a forgotten task"
            )
        if self.trace_retention_s < self.pick_retention_s:
            raise SettingsError(
                f"LC_TRACE_RETENTION_S={self.trace_retention_s} is shorter than "
                f"LC_PICK_RETENTION_S={self.pick_retention_s}: a listed pick would lose its task"
            )
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username):
            raise SettingsError(
                f"LC_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "LC_KAFKA_SASL_MECHANISM and LC_KAFKA_SASL_USERNAME"
            )
        if self.kafka_sasl_mechanism and not sasl:
            raise SettingsError(
                "LC_KAFKA_SASL_MECHANISM is set but LC_KAFKA_SECURITY_PROTOCOL="
                f"{self.kafka_security_protocol} is not SASL_PLAINTEXT or SASL_SSL"
            )
        tls_files = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if any(tls_files) and not self.kafka_security_protocol.endswith("SSL"):
            raise SettingsError(
                "LC_KAFKA_SSL_* is set but LC_KAFKA_SECURITY_PROTOCOL="
                f"{self.kafka_security_protocol} is not SSL or SASL_SSL"
            )
        if self.redis_ssl_cafile and not self.redis_url.startswith(
            ("rediss://", "rediss+cluster://")
        ):
            raise SettingsError(
                "LC_REDIS_SSL_CAFILE is set but LC_REDIS_URL is not rediss:// or rediss+cluster://"
            )
        return self

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests and the bench build variants this way)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# Fields whose values never appear in a repr, a log line or an error message.
SECRET_FIELDS = frozenset({"jwt_secret", "trace_secret", "kafka_sasl_password", "redis_password"})
SECRET_VARIABLES = frozenset(
    {
        "LC_JWT_SECRET",
        "LC_TRACE_SECRET",
        "LC_KAFKA_SASL_PASSWORD",
        "LC_REDIS_PASSWORD",
        "LC_REDIS_URL",
    }
)
MASK = "***"
_URL_PASSWORD = re.compile(r"^(?P<head>[a-z]+://[^:@/]*:)[^@/]*@")


def mask_url_password(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:***@host` (other URLs unchanged)."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", url)


def _kafka_protocol(raw: str) -> str:
    value = raw.upper()
    if value not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
        raise ValueError("must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    return value


def _sasl_mechanism(raw: str) -> str:
    value = raw.upper()
    if value not in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}:
        raise ValueError("must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    return value


def _secret(raw: str) -> str:
    # Any non-empty secret is accepted (operators choose theirs); `serve` warns when it is
    # shorter than the 32 bytes HS256 wants.
    if not raw.strip():
        raise ValueError("must not be blank")
    return raw


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url: str) -> bool:
    """`redis+cluster://h1:p1,h2:p2` (or `rediss+cluster://` for TLS): Redis Cluster seeds."""
    return url.startswith(CLUSTER_SCHEMES)


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)):
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://"
        )
    return raw


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0 (true/false, yes/no, on/off)")


def _event_loop(raw: str) -> str:
    if raw not in ("uvloop", "asyncio"):
        raise ValueError("must be uvloop or asyncio")
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level
