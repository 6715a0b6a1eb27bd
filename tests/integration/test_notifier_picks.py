"""The warehouse pick queue and the leaderboard over the real topics."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from services.common.kafka_topics import Topics
from services.notifier.app import create_app
from tests.conftest import auth, token
from tests.events import data_of
from tests.integration.test_notifier_support import Item, Sale, collect, publisher, stop_task
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def pick_ids(frames: list[tuple[float, dict[str, Any]]]) -> list[str]:
    return [frame["pick_id"] for _, frame in frames if frame["type"] == "pick"]


async def test_every_pick_is_one_task_resent_until_completed(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    sale = Sale(Topics.with_prefix(settings.topic_prefix), "s-picks", "h", {}, warehouse_id="wh-hz")
    staff = auth("warehouse", "staff-1", "wh-hz")
    base = f"{running.url}/v1/warehouses/wh-hz"

    live = await http.ws_connect(f"{base}/picks/live", headers=staff)
    frames, reader = collect(live)
    items: list[Item] = []
    for i in range(30):
        sku, lot, expiry = [
            ("crab-01", "L-CRAB-A", "2030-01-10"),
            ("crab-01", "L-CRAB-B", "2030-01-20"),
            ("rice-02", "L-RICE-A", None),
        ][i % 3]
        items.append(sale.pick_requested(f"order-{i:04d}", sku, lot, 1 + i % 2, expires_on=expiry))
    other = [
        sale.pick_requested(f"order-x{i}", "tea", "L-TEA", 1, warehouse_id="wh-sh")
        for i in range(5)
    ]
    async with publisher(settings) as pub:
        await pub.publish_many(items + other)
        await pub.publish_many(items[:10])  # re-published (same pick_ids, new offsets)

        async def all_arrived() -> bool:
            return len(set(pick_ids(frames.items))) == 30

        await eventually(all_arrived, what="30 pick frames")
        ids = pick_ids(frames.items)
        assert len(ids) == 30, "a pick arrived twice"
        first = next(frame for _, frame in frames.items if frame["type"] == "pick")
        assert {"pick_id", "order_id", "warehouse_id", "sku", "quantity", "lot_code"} <= set(first)
        assert first["warehouse_id"] == "wh-hz" and first["created_at"]
        await live.close()
        await stop_task(reader)

        # The list pages through every open task with a cursor, each exactly once.
        listed: list[str] = []
        cursor: str | None = None
        while True:
            query = "?status=open&limit=7" + (f"&after={cursor}" if cursor else "")
            async with http.get(f"{base}/picks{query}", headers=staff) as response:
                assert response.status == 200
                page = await response.json()
            listed += [pick["pick_id"] for pick in page["picks"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert sorted(listed) == sorted(ids)

        # Complete five; the first one twice (harmless, same answer).
        done = ids[:5]
        answers = []
        for pick_id in [done[0], *done]:
            async with http.post(f"{running.url}/v1/picks/{pick_id}/complete", headers=staff) as r:
                assert r.status == 200
                answers.append(await r.json())
        assert answers[0]["status"] == "done"
        assert answers[0]["completed_at"] == answers[1]["completed_at"]
        for pick_id, headers in (
            (ids[6], auth("warehouse", "staff-9", "wh-sh")),
            ("no-such-pick", staff),
        ):
            async with http.post(
                f"{running.url}/v1/picks/{pick_id}/complete", headers=headers
            ) as r:
                assert r.status == 404

        # A reconnecting console (first-message auth) gets every still-open task again,
        # none of the completed ones, then each new one.
        again = await http.ws_connect(f"{base}/picks/live")
        await again.send_str(
            orjson.dumps({"type": "auth", "token": token("admin", "ops")}).decode()
        )
        frames, reader = collect(again)
        late = sale.pick_requested("order-late", "crab-01", "L-CRAB-A", 3, expires_on="2030-01-10")
        await eventually(lambda: _true(len(pick_ids(frames.items)) >= 25), what="25 open tasks")
        await pub.publish_many([late])
        await eventually(
            lambda: _true(data_of(late[2])["pick_id"] in pick_ids(frames.items)),
            what="the new pick",
        )
        resent = pick_ids(frames.items)
        assert resent[:25] and sorted(resent[:25]) == sorted(ids[5:])
        assert resent[25:] == [data_of(late[2])["pick_id"]]
        await again.close()
        await stop_task(reader)

    async with http.get(f"{base}/picks?status=done", headers=staff) as response:
        assert sorted(p["pick_id"] for p in (await response.json())["picks"]) == sorted(done)
    async with http.get(f"{base}/waves", headers=staff) as response:
        waves = (await response.json())["waves"]
    assert [(w["sku"], w["lot_code"]) for w in waves] == [
        ("crab-01", "L-CRAB-A"),
        ("crab-01", "L-CRAB-B"),
        ("rice-02", "L-RICE-A"),
    ], "soonest expiry first, lots without expiry last"
    assert sum(w["pick_count"] for w in waves) == 26
    assert waves[0]["expires_on"] == "2030-01-10"
    async with http.get(f"{base}/picks?status=maybe", headers=staff) as response:
        assert response.status == 400


async def test_leaderboard_ranks_sessions_by_paid_gmv(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    topics = Topics.with_prefix(settings.topic_prefix)
    live = await http.ws_connect(f"{running.url}/v1/leaderboard/live", headers=auth("buyer", "b"))
    frames, reader = collect(live)
    sales = {
        name: Sale(
            topics,
            f"s-{name}-{uuid.uuid4().hex[:4]}",
            f"host-{name}",
            {f"{name}-sku": 50},
            price_cents=price,
        )
        for name, price in (("low", 1000), ("high", 9900), ("mid", 4500))
    }
    items: list[Item] = []
    for sale in sales.values():
        items += sale.session_updated()
        for _ in range(3):
            items += sale.attempt(next(iter(sale.received)))
        for _ in range(3):
            items += sale.settle("committed")
    async with publisher(settings) as pub:
        await pub.publish_many(items)
    expected = [sales[name].session_id for name in ("high", "mid", "low")]

    async def ranked() -> list[str]:
        async with http.get(f"{running.url}/v1/leaderboard", headers=auth("buyer", "b")) as r:
            assert r.status == 200
            return [entry["session_id"] for entry in (await r.json())["sessions"]]

    await eventually(lambda: _equal(ranked(), expected), what="leaderboard order")

    async def top_entry() -> dict[str, Any]:
        async with http.get(f"{running.url}/v1/leaderboard", headers=auth("host", "h")) as r:
            entry: dict[str, Any] = (await r.json())["sessions"][0]
        # Titles come from the sessions topic, which may be consumed after the payments.
        assert entry["title"], entry
        return entry

    top = await eventually(top_entry, what="top entry with its title")
    assert top["gmv_cents"] == sales["high"].truth.totals["gmv_cents"] == 3 * 9900
    assert top["rank"] == 1 and top["paid_orders"] == 3
    await eventually(
        lambda: _true(
            frames.last and [s["session_id"] for s in frames.last["sessions"]] == expected
        ),
        what="live leaderboard frame",
    )
    assert frames.last is not None and frames.last["type"] == "leaderboard"
    await live.close()
    await stop_task(reader)
    async with http.get(f"{running.url}/v1/leaderboard") as r:
        assert r.status == 401


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _true(value: object) -> bool:
    return bool(value)
