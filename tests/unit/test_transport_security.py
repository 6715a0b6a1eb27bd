"""Kafka SASL/TLS and Redis TLS/password settings: how they parse, the client options
built from them, and that no secret shows in a repr or an error message."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from services.common.settings import Settings, SettingsError
from services.common.transport_security import kafka_security_kwargs, redis_security_kwargs

SECRET = "jwt-" + "s" * 32
PASSWORD = "kafka-pa55word-not-for-logs"
REDIS_PASSWORD = "redis-pa55word-not-for-logs"


def settings(**env: str) -> Settings:
    return Settings.from_env("inventory", {"LC_JWT_SECRET": SECRET, **env})


def self_signed_ca(directory: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test CA")
    cafile = directory / "ca.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            str(directory / "ca.key"),
            "-out",
            str(cafile),
        ],
        check=True,
        capture_output=True,
    )
    return cafile


def test_plaintext_adds_nothing_to_the_clients() -> None:
    plain = settings()
    assert plain.kafka_security_protocol == "PLAINTEXT"
    assert kafka_security_kwargs(plain) == {}
    assert redis_security_kwargs(plain) == {}


def test_sasl_ssl_builds_credentials_and_a_verifying_context(tmp_path: Path) -> None:
    cafile = self_signed_ca(tmp_path)
    secured = settings(
        LC_KAFKA_SECURITY_PROTOCOL="sasl_ssl",
        LC_KAFKA_SASL_MECHANISM="scram-sha-512",
        LC_KAFKA_SASL_USERNAME="inventory",
        LC_KAFKA_SASL_PASSWORD=PASSWORD,
        LC_KAFKA_SSL_CAFILE=str(cafile),
    )
    kwargs = kafka_security_kwargs(secured)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "inventory"
    assert kwargs["sasl_plain_password"] == PASSWORD
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1


def test_sasl_plaintext_has_no_tls_context() -> None:
    kwargs = kafka_security_kwargs(
        settings(
            LC_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            LC_KAFKA_SASL_MECHANISM="PLAIN",
            LC_KAFKA_SASL_USERNAME="u",
            LC_KAFKA_SASL_PASSWORD=PASSWORD,
        )
    )
    assert "ssl_context" not in kwargs and kwargs["sasl_mechanism"] == "PLAIN"


@pytest.mark.parametrize(
    "url", ["rediss://redis.internal:6380/0", "rediss+cluster://r1.internal:6380,r2.internal:6380"]
)
def test_redis_password_username_and_ca_file(url: str) -> None:
    secured = settings(
        LC_REDIS_URL=url,
        LC_REDIS_USERNAME="inventory",
        LC_REDIS_PASSWORD=REDIS_PASSWORD,
        LC_REDIS_SSL_CAFILE="/etc/ssl/redis-ca.pem",
    )
    assert redis_security_kwargs(secured) == {
        "password": REDIS_PASSWORD,
        "username": "inventory",
        "ssl_ca_certs": "/etc/ssl/redis-ca.pem",
    }


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LC_KAFKA_SECURITY_PROTOCOL": "TLS"}, "LC_KAFKA_SECURITY_PROTOCOL"),
        ({"LC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "LC_KAFKA_SASL_MECHANISM"),
        ({"LC_KAFKA_SASL_MECHANISM": "PLAIN"}, "LC_KAFKA_SECURITY_PROTOCOL"),
        ({"LC_KAFKA_SASL_MECHANISM": "GSSAPI"}, "LC_KAFKA_SASL_MECHANISM"),
        ({"LC_KAFKA_SSL_CAFILE": "/ca.pem"}, "LC_KAFKA_SECURITY_PROTOCOL"),
        ({"LC_REDIS_SSL_CAFILE": "/ca.pem"}, "LC_REDIS_URL is not rediss"),
        ({"LC_TRACE_RETENTION_S": "60"}, "LC_TRACE_RETENTION_S"),
        ({"LC_PICK_RETENTION_S": str(500 * 24 * 3600)}, "LC_PICK_RETENTION_S"),
    ],
)
def test_inconsistent_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        settings(**env)


def test_secrets_never_show_in_the_repr() -> None:
    secured = settings(
        LC_TRACE_SECRET="trace-secret-not-for-logs",
        LC_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        LC_KAFKA_SASL_MECHANISM="PLAIN",
        LC_KAFKA_SASL_USERNAME="u",
        LC_KAFKA_SASL_PASSWORD=PASSWORD,
        LC_REDIS_URL="redis://default:url-pa55word@redis:6379/0",
        LC_REDIS_PASSWORD=REDIS_PASSWORD,
    )
    shown = repr(secured) + str(secured)
    for secret in (SECRET, "trace-secret-not-for-logs", PASSWORD, REDIS_PASSWORD, "url-pa55word"):
        assert secret not in shown
    assert "redis://default:***@redis:6379/0" in shown
    assert "kafka_sasl_username='u'" in shown  # not a secret: shown as it is


def test_a_malformed_secret_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as raised:
        settings(LC_REDIS_URL="http://:url-pa55word@redis")
    assert "url-pa55word" not in str(raised.value) and "LC_REDIS_URL" in str(raised.value)


def test_retention_settings_and_the_replay_window() -> None:
    defaults = settings()
    day_ms = 24 * 3600 * 1000
    assert defaults.replay_window_ms == 7 * day_ms + day_ms + 5 * 60 * 1000
    assert defaults.pick_retention_s == 7 * 24 * 3600
    assert defaults.trace_retention_s == 400 * 24 * 3600
    short = settings(
        LC_TOPIC_RETENTION_MS="30000",
        LC_TOPIC_SEGMENT_MS="86400000",
        LC_REPLAY_SLACK_MS="0",
        LC_TRACE_RETENTION_S="60",
        LC_PICK_RETENTION_S="30",
    )
    # segment.ms is capped at the retention: the window is 30 s + 30 s.
    assert short.segment_ms == 30_000 and short.replay_window_ms == 60_000
