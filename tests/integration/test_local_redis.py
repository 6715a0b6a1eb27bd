"""The redis-server `make up` and the tests start (deploy/local/stack.py) runs with the
persistence the services' guarantees and the bench's figures assume."""

from __future__ import annotations

from redis import Redis

from deploy.local.stack import REDIS_AOF_REWRITE_ARGS
from tests.conftest import Backends


def test_redis_keeps_an_append_only_file_rewritten_rarely(backends: Backends) -> None:
    client = Redis(port=backends.redis_port)
    try:
        config = client.config_get("appendonly", "appendfsync", "auto-aof-rewrite-*")
    finally:
        client.close()
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    wanted = dict(zip(REDIS_AOF_REWRITE_ARGS[::2], REDIS_AOF_REWRITE_ARGS[1::2], strict=True))
    assert config["auto-aof-rewrite-percentage"] == wanted["--auto-aof-rewrite-percentage"]
    assert config["auto-aof-rewrite-min-size"] == str(512 * 1024 * 1024)
    assert wanted["--auto-aof-rewrite-min-size"] == "512mb"
