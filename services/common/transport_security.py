"""Client options for Kafka SASL/TLS and Redis TLS/password, built from the settings.

Every Kafka client (producer, consumers, the topic admin) and the Redis client take their
security options from here, so one set of `LC_*` variables secures all of them. Nothing
here opens a connection; the values are passed to the client constructors.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from services.common.settings import Settings


def kafka_security_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer/Consumer/AdminClient: none for PLAINTEXT
    (the clients' defaults), else the protocol, the SASL credentials and a TLS context."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        kwargs["ssl_context"] = kafka_ssl_context(settings)
    if protocol.startswith("SASL_"):
        # aiokafka takes SCRAM credentials under the same names as PLAIN ones.
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password
    return kwargs


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the brokers (against LC_KAFKA_SSL_CAFILE, else the system's CAs) and
    presents a client certificate when LC_KAFKA_SSL_CERTFILE is set (mutual TLS)."""
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.kafka_ssl_cafile or None,
        certfile=settings.kafka_ssl_certfile or None,
        keyfile=settings.kafka_ssl_keyfile or None,
    )
    return context


def redis_security_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for redis-py's `from_url` (they override what the URL says).
    TLS itself comes from the scheme: `rediss://` verifies the server's certificate,
    against LC_REDIS_SSL_CAFILE when set."""
    kwargs: dict[str, Any] = {}
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    if settings.redis_ssl_cafile:
        kwargs["ssl_ca_certs"] = settings.redis_ssl_cafile
    return kwargs
