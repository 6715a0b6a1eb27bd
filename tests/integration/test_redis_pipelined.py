"""TickPipeline on one PipelinedConnection against the real redis-server: replies in queue
order, a CHUNK written before its tick ends, NOSCRIPT reloaded, a killed connection and a
reply that never comes replaced by a new connection, aclose() closing it for good, and
deferred commands riding along with the next write."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import time
import warnings
from collections.abc import AsyncIterator

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.redis_batch import CHUNK, DEFER_MAX_S, RECONNECT_BACKOFF_S, TickPipeline
from services.common.redis_pipelined import PipelinedConnection
from services.common.redis_scripts import LuaScript, create_redis
from tests.conftest import Backends
from tests.waiting import eventually

pytestmark = pytest.mark.integration


class InlineScript(LuaScript):
    """A script from a string: TickPipeline needs its `sha` (EVALSHA) and `source` (to load
    it on NOSCRIPT), no `.lua` file."""

    def __init__(self, source: str) -> None:
        self.name = "inline"
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# KEYS[1]: a string key. Returns its value.
READ = InlineScript("-- KEYS[1]: the key read\nreturn redis.call('GET', KEYS[1])")
# KEYS[1]: a string key; ARGV[1]: a suffix. Returns the value with the suffix appended.
READ_WITH_SUFFIX = InlineScript(
    "-- KEYS[1]: the key read; ARGV[1]: appended\n"
    "return (redis.call('GET', KEYS[1]) or '') .. ARGV[1]"
)


@pytest.fixture
async def redis(backends: Backends) -> AsyncIterator[Redis]:
    client = create_redis(backends.redis_url)
    assert isinstance(client, Redis)
    yield client
    await client.aclose()


@pytest.fixture
async def pipeline(redis: Redis) -> AsyncIterator[TickPipeline]:
    pipeline = TickPipeline(redis)
    yield pipeline
    await pipeline.aclose()


async def client_ids(redis: Redis) -> set[int]:
    """The ids of the connections Redis has open now."""
    return {int(client["id"]) for client in await redis.client_list()}


def wait_blocking_for(url: str, key: str, expected: bytes) -> None:
    """Poll `key` with a blocking client: the event loop cannot run meanwhile, so only what
    was written before the test last yielded can reach Redis."""
    deadline = time.monotonic() + 5
    with SyncRedis.from_url(url) as sync:
        while (value := sync.get(key)) != expected:
            assert time.monotonic() < deadline, f"{key} is {value!r}, not {expected!r}"


async def test_a_tick_of_commands_answers_in_queue_order_a_chunk_at_a_time(
    pipeline: TickPipeline, backends: Backends, prefix: str
) -> None:
    await pipeline.command("PING")  # connected: a full CHUNK is now written at once
    counter = f"{prefix}counter"
    increments = [pipeline.command("INCR", counter) for _ in range(CHUNK)]
    wait_blocking_for(backends.redis_url, counter, str(CHUNK).encode())

    reads, expected_reads = [], []
    for i in range(CHUNK, 1000):
        increments.append(pipeline.command("INCR", counter))
        if i % 97 == 0:  # a script reading the key its `before` sets, among the INCRs
            key = f"{prefix}set-just-before-{i}"
            reads.append(pipeline.script(READ, [key], [], before=("SET", key, i)))
            expected_reads.append(str(i).encode())
    assert await asyncio.gather(*increments) == list(range(1, 1001))
    assert await asyncio.gather(*reads) == expected_reads


async def test_a_script_flushed_from_redis_is_loaded_and_run_again(
    pipeline: TickPipeline, redis: Redis, prefix: str
) -> None:
    assert await pipeline.script(READ, [f"{prefix}none"], []) is None  # loaded, then:
    await redis.script_flush()

    counter, value = f"{prefix}counter", f"{prefix}value"
    read = pipeline.script(READ, [value], [], before=("SET", value, "set-first"))
    suffixed = pipeline.script(READ_WITH_SUFFIX, [value], ["+"])
    increments = [pipeline.command("INCR", counter) for _ in range(40)]

    assert await read == b"set-first"
    assert await suffixed == b"set-first+"
    assert await asyncio.gather(*increments) == list(range(1, 41))
    assert await redis.script_exists(READ.sha, READ_WITH_SUFFIX.sha) == [True, True]


async def kill_then_increment(
    pipeline: TickPipeline, redis: Redis, counter: str
) -> tuple[int, int, list[int]]:
    """Kill the pipelined connection from another client, then queue 100 INCRs and a CLIENT
    ID at once (CHUNKs written to the dead connection, the rest at the end of the tick).
    Returns the killed connection's id, the new one's, and the INCR replies."""
    killed = await pipeline.command("CLIENT", "ID")
    assert await redis.client_kill_filter(_id=str(killed)) == 1
    increments = [pipeline.command("INCR", counter) for _ in range(100)]
    *replies, new_id = await asyncio.gather(*increments, pipeline.command("CLIENT", "ID"))
    return killed, new_id, replies


async def test_a_killed_connection_is_replaced_and_each_command_runs_once(
    pipeline: TickPipeline, redis: Redis, prefix: str
) -> None:
    counter = f"{prefix}counter"
    killed, new_id, replies = await kill_then_increment(pipeline, redis, counter)
    assert new_id != killed
    assert killed not in await client_ids(redis)
    assert replies == list(range(1, 101))  # in queue order, each run once
    assert await redis.get(counter) == b"100"


async def test_commands_keep_their_queue_order_across_a_killed_connection(
    pipeline: TickPipeline, backends: Backends, prefix: str
) -> None:
    killed = await pipeline.command("CLIENT", "ID")
    with SyncRedis.from_url(backends.redis_url) as sync:
        # Killed while the loop is blocked: Redis closed the socket before it answered.
        assert sync.client_kill_filter(_id=str(killed)) == 1
    # Two loop iterations: the first reads the end of the connection, the second runs its
    # connection_lost, after this test resumes and queues the INCRs below: the CHUNKs are
    # written to the dead connection, the end of the tick finds it dead.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    increments = [pipeline.command("INCR", f"{prefix}counter") for _ in range(100)]
    assert await asyncio.gather(*increments) == list(range(1, 101))


async def test_a_reply_that_never_comes_fails_after_the_retries_then_a_new_connection_works(
    redis: Redis, prefix: str
) -> None:
    timeout_s = 0.3
    async with contextlib.aclosing(TickPipeline(redis, read_timeout_s=timeout_s)) as pipeline:
        await pipeline.command("PING")
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Blocks its connection (and only it) on the server for 10 s, past every timeout.
        with pytest.raises(RedisTimeoutError):
            await pipeline.command("BLPOP", f"{prefix}empty", 10)
        waited = loop.time() - started
        # Each retry on a new connection waited its full timeout, and none waited the 10 s.
        assert len(RECONNECT_BACKOFF_S) * timeout_s <= waited < 5

        async def none_blocked() -> bool:
            # The timed out connections were closed: Redis holds none of them in BLPOP.
            return int((await redis.info("clients"))["blocked_clients"]) == 0

        await eventually(none_blocked, timeout=5, what="no client blocked in BLPOP")
        assert await pipeline.command("INCR", f"{prefix}counter") == 1


async def test_aclose_answers_what_is_in_flight_and_closes_the_connection(
    backends: Backends, redis: Redis, prefix: str
) -> None:
    client = create_redis(backends.redis_url)
    pipeline = TickPipeline(client)
    pipelined = await pipeline.command("CLIENT", "ID")
    assert pipelined in await client_ids(redis)

    # A full CHUNK is written at once: in flight when aclose() starts; the 3 after it are
    # still queued for the end of the tick. All are answered before the connection closes.
    increments = [pipeline.command("INCR", f"{prefix}counter") for _ in range(CHUNK + 3)]
    await pipeline.aclose()
    assert [increment.result() for increment in increments] == list(range(1, CHUNK + 4))

    async def closed() -> bool:
        return pipelined not in await client_ids(redis)

    await eventually(closed, timeout=5, what=f"connection {pipelined} closed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with asyncio.timeout(5):
            await client.aclose()
        gc.collect()  # an unclosed socket or transport warns when collected
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_a_deferred_command_rides_ahead_of_the_next_flush_in_the_same_write(
    pipeline: TickPipeline, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await pipeline.command("PING")  # connected
    writes: list[int] = []
    send = PipelinedConnection.send

    def counted(self: PipelinedConnection, packed: bytes, count: int, token: object) -> None:
        writes.append(count)
        send(self, packed, count, token)

    monkeypatch.setattr(PipelinedConnection, "send", counted)
    key = f"{prefix}deferred"
    pipeline.defer("SET", key, "deferred")
    # Queued after it in the same tick: runs after it, and both go out in one write.
    assert await pipeline.command("GET", key) == b"deferred"
    assert writes == [2]


async def test_a_deferred_command_alone_goes_out_after_its_wait(
    pipeline: TickPipeline, redis: Redis, prefix: str
) -> None:
    key = f"{prefix}deferred"
    loop = asyncio.get_running_loop()
    started = loop.time()
    pipeline.defer("SET", key, "alone")

    async def written() -> bool:
        return await redis.get(key) == b"alone"

    await eventually(written, timeout=5, what="the deferred SET ran")
    assert loop.time() - started >= DEFER_MAX_S


async def test_aclose_sends_what_was_deferred(redis: Redis, prefix: str) -> None:
    pipeline = TickPipeline(redis)
    key = f"{prefix}deferred"
    pipeline.defer("SET", key, "before-close")
    await pipeline.aclose()
    assert await redis.get(key) == b"before-close"


async def test_a_deferred_command_that_fails_is_logged(
    pipeline: TickPipeline, redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = f"{prefix}not-a-number"
    await redis.set(key, "text")
    pipeline.defer("INCR", key)
    assert await pipeline.command("GET", key) == b"text"  # answered after the INCR's error

    async def logged() -> bool:
        return any("a deferred Redis command failed" in r.getMessage() for r in caplog.records)

    await eventually(logged, timeout=5, what="the failed INCR logged")
