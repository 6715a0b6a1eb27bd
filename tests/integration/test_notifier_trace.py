"""Traceability (DESIGN 4.6) over the real topics: the trace of a box label, an order's
traces, pick.completed, pavilions and the pavilion leaderboard."""

from __future__ import annotations

import secrets
import string
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from services.common.events import decode
from services.common.kafka_topics import Topics
from services.common.settings import Settings
from services.common.web_app import METRICS
from services.notifier.app import create_app
from tests.conftest import auth
from tests.events import event
from tests.integration.test_notifier_support import Item, Sale, collect, publisher, stop_task
from tests.waiting import eventually

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def new_trace_code() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(20))


def lot_updated(
    topics: Topics, sku: str, lot_code: str, seq: int, *, origin: str, warehouse_id: str = "wh-1"
) -> Item:
    data = {
        "sku": sku,
        "lot_code": lot_code,
        "warehouse_id": warehouse_id,
        "quantity": 100,
        "allocated": seq,
        "expires_on": "2030-11-30",
        "origin": origin,
        "producer": "阳澄湖蟹业合作社",
        "harvested_on": "2030-10-20",
        "inspection": "CNAS L1234 · 合格",
        "journal_seq": seq,
        "journal_head": f"{seq:064x}",
    }
    return (topics.inventory, sku, event("lot.updated", data, dedup_key=f"{sku}:{lot_code}:{seq}"))


def consumed_so_far(app: web.Application, topics: Topics) -> float:
    """Events the notifier's handlers took (applied or skipped as seen before)."""
    registry = app[METRICS].registry
    return sum(
        registry.get_sample_value(f"lc_notifier_events_{outcome}_total", {"topic": topic}) or 0.0
        for outcome in ("applied", "skipped")
        for topic in (topics.orders, topics.inventory, topics.sessions, topics.picks)
    )


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str, Any]:
    async with http.get(url, headers=headers or {}) as response:
        text = await response.text()
        body = await response.json(content_type=None) if "json" in response.content_type else text
        return response.status, response.content_type, body


async def pick_completions(settings: Settings, topics: Topics) -> list[dict[str, Any]]:
    """Every pick.completed on the picks topic so far (event id and data)."""
    consumer = AIOKafkaConsumer(
        topics.picks,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            if not batches:
                return found
            for records in batches.values():
                for record in records:
                    assert record.value is not None
                    envelope = decode(record.value)
                    if envelope.message.TYPE == "pick.completed":
                        found.append(
                            {"event_id": envelope.event_id, "key": record.key, "data": envelope}
                        )
    finally:
        await consumer.stop()


async def test_a_box_label_traces_to_its_lot_and_session_and_nobody_else(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    topics = Topics.with_prefix(settings.topic_prefix)
    sale = Sale(
        topics, f"s-{uuid.uuid4().hex[:8]}", "host-1", {"crab-001": 10}, pavilion="阳澄湖馆"
    )
    code, unpaid_code = new_trace_code(), new_trace_code()
    items: list[Item] = sale.session_updated()
    items += sale.attempt("crab-001", quantity=2)
    paid = sale.holds[0]
    items += sale.settle("committed", trace_code=code)
    items += sale.attempt("crab-001")  # reserved, never paid
    unpaid = sale.holds[0]
    lot = "LOT-001-A"
    newer = lot_updated(topics, "crab-001", lot, 3, origin="江苏苏州阳澄湖")
    older = lot_updated(topics, "crab-001", lot, 2, origin="stale origin")
    items += [newer, older]  # the older journal_seq arrives last and must not win
    async with publisher(settings) as pub:
        await pub.publish_many(items)

        async def trace_known() -> dict[str, Any]:
            status, _, body = await get(http, f"{running.url}/v1/trace/{code}")
            assert status == 200, body
            assert body["lot"]["origin"] == "江苏苏州阳澄湖" and body["session"]["title"]
            return dict(body)

        trace = await eventually(trace_known, what="the trace with its lot and session")
        assert trace == {
            "trace_code": code,
            "sku": "crab-001",
            "quantity": 2,
            "lot": {
                "lot_code": lot,
                "warehouse_id": "wh-1",
                "origin": "江苏苏州阳澄湖",
                "producer": "阳澄湖蟹业合作社",
                "harvested_on": "2030-10-20",
                "expires_on": "2030-11-30",
                "inspection": "CNAS L1234 · 合格",
            },
            "session": {
                "session_id": sale.session_id,
                "title": trace["session"]["title"],
                "pavilion": "阳澄湖馆",
            },
            "paid_at": sale.picks[0]["created_at"],
            "picked_at": None,
            "journal_head": f"{3:064x}",
        }
        status, _, raw = await get(http, f"{running.url}/v1/trace/{code}")
        text = str(raw)
        for secret in (paid.order_id, paid.buyer, f"pay-{paid.order_id[:8]}", "buyer", "order"):
            assert secret not in text, f"{secret!r} leaked into the trace"

        # Unknown and malformed codes: one and the same 404, revealing nothing.
        answers = []
        for probe in (new_trace_code(), "short", "x" * 65, "abc-def-ghi-jkl-mno", "%E6%BA%AF" * 16):
            status, content_type, body = await get(http, f"{running.url}/v1/trace/{probe}")
            assert status == 404 and content_type == PROBLEM, (probe, body)
            answers.append(body)
        assert all(answer == answers[0] for answer in answers), answers
        assert answers[0]["status"] == 404 and answers[0]["title"]
        status, _, _ = await get(http, f"{running.url}/v1/trace/{unpaid_code}")
        assert status == 404

        # The order's traces: its buyer and admins; anyone else learns nothing.
        order_url = f"{running.url}/v1/orders/{paid.order_id}/trace"
        for who in (auth("buyer", paid.buyer), auth("admin", "ops")):
            status, _, body = await get(http, order_url, who)
            assert status == 200, body
            assert body == {"order_id": paid.order_id, "traces": [trace]}
        for who in (
            auth("buyer", "someone-else"),
            auth("host", "host-1"),
            auth("warehouse", "staff-1", "wh-1"),
        ):
            status, content_type, body = await get(http, order_url, who)
            assert status == 404 and content_type == PROBLEM, body
        status, content_type, _ = await get(http, order_url)
        assert status == 401 and content_type == PROBLEM
        for order_id in (unpaid.order_id, "no-such-order"):
            status, _, _ = await get(
                http, f"{running.url}/v1/orders/{order_id}/trace", auth("admin", "ops")
            )
            assert status == 404
        status, _, _ = await get(
            http, f"{running.url}/v1/orders/{unpaid.order_id}/trace", auth("buyer", unpaid.buyer)
        )
        assert status == 404

        # The mobile page: no token, 200 for a known code, a 404 page for the rest.
        status, content_type, page = await get(http, f"{running.url}/trace/{code}")
        assert status == 200 and content_type == "text/html" and "产地" in page
        for probe in (new_trace_code(), "nope"):
            status, content_type, page = await get(http, f"{running.url}/trace/{probe}")
            assert status == 404 and content_type == "text/html" and "未找到" in page

        # Completing the pick: picked_at, and pick.completed published once, also when the
        # staff member presses twice.
        staff = auth("warehouse", "staff-1", "wh-1")
        pick_id = sale.picks[0]["pick_id"]
        for _ in range(2):
            async with http.post(f"{running.url}/v1/picks/{pick_id}/complete", headers=staff) as r:
                assert r.status == 200
                completed = await r.json()
        assert completed["trace_code"] == code
        status, _, picked = await get(http, f"{running.url}/v1/trace/{code}")
        assert picked["picked_at"] == completed["completed_at"]
        assert picked == {**trace, "picked_at": completed["completed_at"]}
        completions = await pick_completions(settings, topics)
        assert len(completions) == 1
        (published,) = completions
        assert published["key"] == b"wh-1"
        message = published["data"].message
        assert (message.pick_id, message.trace_code, message.completed_by) == (
            pick_id,
            code,
            "staff-1",
        )
        assert message.completed_at == completed["completed_at"]

        # A replay of every event (same ids, new offsets) changes nothing.
        before = consumed_so_far(running.app, topics)
        await pub.publish_many(items)

        # order.placed is passed over unread (its decision counts the attempt).
        handled = [item for item in items if item[2].type != "order.placed"]

        async def replay_consumed() -> bool:
            return consumed_so_far(running.app, topics) >= before + len(handled)

        await eventually(replay_consumed, what="the replay consumed")

        async def unchanged() -> bool:
            status, _, after = await get(http, f"{running.url}/v1/trace/{code}")
            status_o, _, order = await get(http, order_url, auth("buyer", paid.buyer))
            status_b, _, board_after = await get(
                http, f"{running.url}/v1/leaderboard?pavilion=阳澄湖馆", auth("buyer", "b")
            )
            assert after == picked and order["traces"] == [picked], (after, order)
            assert [row["gmv_cents"] for row in board_after["sessions"]] == [paid.total_cents], (
                board_after
            )
            return status == status_o == status_b == 200

        await eventually(unchanged, what="nothing changed by the replay")
        status, _, body = await get(http, f"{running.url}/v1/warehouses/wh-1/picks", staff)
        assert body["picks"] == [], "a completed task was reopened by the replay"
        assert len(await pick_completions(settings, topics)) == 1


async def test_pavilions_list_their_sessions_and_filter_the_leaderboard(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    topics = Topics.with_prefix(settings.topic_prefix)
    pavilion, other = f"Tea-{uuid.uuid4().hex[:4]}", f"Rice-{uuid.uuid4().hex[:4]}"
    buyer = auth("buyer", "b")

    def sale(name: str, price: int, pavilion_: str | None) -> Sale:
        return Sale(
            topics,
            f"s-{name}-{uuid.uuid4().hex[:6]}",
            f"host-{name}",
            {f"{name}-sku": 50},
            price_cents=price,
            pavilion=pavilion_,
        )

    sales = {
        "live": sale("live", 1000, pavilion),
        "big": sale("big", 9000, pavilion),
        "soon": sale("soon", 500, pavilion),
        "ended": sale("ended", 3000, pavilion),
        "elsewhere": sale("elsewhere", 99000, other),
        "none": sale("none", 50000, None),
    }
    status_of = {"live": "live", "big": "live", "soon": "scheduled", "ended": "ended"}
    items: list[Item] = []
    for name, one in sales.items():
        items += one.session_updated(status_of.get(name, "live"))
        if name != "soon":
            items += one.attempt(next(iter(one.received)))
            items += one.settle("committed")
    live_ws = await http.ws_connect(
        f"{running.url}/v1/leaderboard/live?pavilion={pavilion}", headers=buyer
    )
    frames, reader = collect(live_ws)
    async with publisher(settings) as pub:
        await pub.publish_many(items)
    ids = {name: one.session_id for name, one in sales.items()}

    async def listed(query: str = "") -> list[dict[str, Any]]:
        status, _, body = await get(
            http, f"{running.url}/v1/pavilions/{pavilion}/sessions{query}", buyer
        )
        assert status == 200, body
        assert body["pavilion"] == pavilion
        return list(body["sessions"])

    async def current() -> bool:
        return sorted(s["session_id"] for s in await listed()) == sorted(
            [ids["big"], ids["live"], ids["soon"]]
        )

    await eventually(current, what="the pavilion's live and scheduled sessions")
    sessions = await listed()
    assert [s["status"] for s in sessions] == ["live", "live", "scheduled"]
    assert set(sessions[0]) == {"session_id", "title", "host_id", "status"}
    by_id = {s["session_id"]: s for s in sessions}
    assert by_id[ids["soon"]]["host_id"] == "host-soon" and by_id[ids["soon"]]["title"]
    assert [s["session_id"] for s in await listed("?status=ended")] == [ids["ended"]]
    assert len(await listed("?status=all")) == 4
    assert [s["session_id"] for s in await listed("?status=scheduled")] == [ids["soon"]]
    status, content_type, _ = await get(
        http, f"{running.url}/v1/pavilions/{pavilion}/sessions?status=bogus", buyer
    )
    assert status == 400 and content_type == PROBLEM
    status, _, body = await get(http, f"{running.url}/v1/pavilions/nobody-here/sessions", buyer)
    assert status == 200 and body == {"pavilion": "nobody-here", "sessions": []}
    status, _, _ = await get(http, f"{running.url}/v1/pavilions/{'p' * 101}/sessions", buyer)
    assert status == 400
    status, _, _ = await get(http, f"{running.url}/v1/pavilions/{pavilion}/sessions")
    assert status == 401

    async def board(query: str = "") -> list[dict[str, Any]]:
        status, _, body = await get(http, f"{running.url}/v1/leaderboard{query}", buyer)
        assert status == 200, body
        return list(body["sessions"])

    async def filtered() -> bool:
        rows = await board(f"?pavilion={pavilion}")
        return [r["session_id"] for r in rows] == [ids["big"], ids["ended"], ids["live"]]

    await eventually(filtered, what="the pavilion's leaderboard")
    rows = await board(f"?pavilion={pavilion}")
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["pavilion"] == pavilion for r in rows)
    assert rows[0]["gmv_cents"] == 9000 and rows[0]["paid_orders"] == 1

    async def whole_board() -> list[dict[str, Any]]:
        rows = await board()
        assert len(rows) == 5 and all(r["title"] for r in rows), rows
        return rows

    everyone = await eventually(whole_board, what="the whole board with titles")
    pavilions = {r["session_id"]: r["pavilion"] for r in everyone}
    assert pavilions[ids["none"]] is None and pavilions[ids["elsewhere"]] == other
    assert [r["session_id"] for r in await board(f"?pavilion={other}")] == [ids["elsewhere"]]
    status, content_type, _ = await get(
        http, f"{running.url}/v1/leaderboard?pavilion={'p' * 101}", buyer
    )
    assert status == 400 and content_type == PROBLEM

    await eventually(
        lambda: _true(
            frames.last
            and [s["session_id"] for s in frames.last["sessions"]]
            == [ids["big"], ids["ended"], ids["live"]]
        ),
        what="the pavilion's live leaderboard frame",
    )
    assert frames.last is not None
    assert all(s["pavilion"] == pavilion for s in frames.last["sessions"])
    await live_ws.close()
    await stop_task(reader)


async def _true(value: object) -> bool:
    return bool(value)
