"""The Docker-free stack's own logic (no servers started here)."""

import os
import socket
from pathlib import Path

import pytest

from deploy.local import stack


def test_a_taken_port_is_a_clear_error_naming_the_variable() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(stack.StackError, match=rf"port {port} for Kafka .* LC_KAFKA_PORT"):
            stack.require_free(port, "Kafka", "LC_KAFKA_PORT")
    stack.require_free(port, "Kafka", "LC_KAFKA_PORT")  # free again: no error


def test_a_missing_tool_says_how_to_install_it() -> None:
    with pytest.raises(stack.StackError, match="no-such-tool-xyz not found on PATH: apt-get"):
        stack.require_tool("no-such-tool-xyz", "apt-get install it")


def test_the_jwt_secret_is_generated_once_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LC_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("LC_JWT_SECRET", raising=False)
    first = stack.stack_env()
    assert len(first["LC_JWT_SECRET"]) >= 32
    (tmp_path / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in first.items()))
    again = stack.stack_env()
    assert again["LC_JWT_SECRET"] == first["LC_JWT_SECRET"]
    for key in (
        "LC_LIVE_ORDERS_URL",
        "LC_INVENTORY_URL",
        "LC_NOTIFIER_URL",
        "LC_KAFKA_BOOTSTRAP",
        "LC_REDIS_URL",
    ):
        assert again[key], key


def test_ports_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("LC_NOTIFIER_PORT", "18083")
    monkeypatch.setenv("LC_REDIS_PORT", "16379")
    env = stack.stack_env()
    assert env["LC_NOTIFIER_URL"] == "http://127.0.0.1:18083"
    assert env["LC_REDIS_URL"] == "redis://127.0.0.1:16379/0"


def test_a_dead_pid_file_reads_as_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_RUN_DIR", str(tmp_path))
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "redis.pid").write_text("999999999\n")
    assert stack._read_pid("redis") is None
    (tmp_path / "pids" / "redis.pid").write_text(f"{os.getpid()}\n")
    assert stack._read_pid("redis") == os.getpid()
