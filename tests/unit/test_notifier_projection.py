"""The notifier's pure rules: event effects, pick waves, list queries, origins."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from services.common.messages import MESSAGE_TYPES
from services.common.problems import ProblemError
from services.notifier.access import check_origin
from services.notifier.pick_queue import PickTask, group_waves, parse_list_query
from services.notifier.projection import (
    TOTAL_FIELDS,
    AssignIfNewer,
    EventEffect,
    Increment,
    RankAdd,
    effect_of,
    session_payload,
)
from services.notifier.projection_store import session_from_hash, stock_from_json
from services.notifier.redis_keys import NotifierKeys

KEYS = NotifierKeys("lc:")
BASE = {"order_id": "o1", "session_id": "s1", "sku": "crab", "buyer_id": "b1", "quantity": 2}


def effect(type_: str, data: dict[str, Any], offset: int) -> EventEffect:
    """The effect of the typed message that (type_, data) decodes to."""
    return effect_of(MESSAGE_TYPES[(type_, 1)].from_data(data), offset, KEYS)


def totals_after(*events: tuple[str, dict[str, Any]]) -> dict[str, int]:
    """Apply effects the way the Lua step does (guards included), in memory."""
    totals = dict.fromkeys(TOTAL_FIELDS, 0)
    seen: set[str] = set()
    for offset, (type_, data) in enumerate(events):
        applied = effect(type_, data, offset)
        if applied.guard is not None:
            if applied.guard.member in seen:
                continue
            seen.add(applied.guard.member)
        for op in applied.ops:
            if isinstance(op, Increment):
                assert op.key == KEYS.totals("s1")
                totals[op.field] += op.amount
    return totals


def test_a_paid_order_moves_units_from_held_to_sold() -> None:
    totals = totals_after(
        (
            "order.placed",
            {
                **BASE,
                "unit_price_cents": 500,
                "total_cents": 1000,
                "per_user_limit": 2,
                "placed_at": "2030-01-01T00:00:00Z",
            },
        ),
        ("reservation.confirmed", {**BASE, "total_cents": 1000, "expires_at": "x"}),
        (
            "reservation.committed",
            {**BASE, "total_cents": 1000, "payment_ref": "p", "allocations": []},
        ),
    )
    assert totals == {
        **dict.fromkeys(TOTAL_FIELDS, 0),
        "attempts": 1,
        "reserved_orders": 1,
        "paid_orders": 1,
        "units_sold": 2,
        "gmv_cents": 1000,
    }


@pytest.mark.parametrize(
    ("type_", "reason", "expected"),
    [
        ("order.rejected", "sold_out", {"attempts": 1, "rejected_sold_out": 1}),
        ("order.rejected", "not_on_sale", {"attempts": 1}),
        ("reservation.rejected", "limit_exceeded", {"rejected_limit": 1}),
        ("reservation.rejected", "sold_out", {"rejected_sold_out": 1}),
    ],
)
def test_rejections_land_in_their_reason_counter(
    type_: str, reason: str, expected: dict[str, int]
) -> None:
    totals = totals_after((type_, {**BASE, "reason": reason}))
    assert {k: v for k, v in totals.items() if v} == expected


def test_released_and_expired_give_units_back_and_count_once() -> None:
    confirmed = ("reservation.confirmed", {**BASE, "total_cents": 1000, "expires_at": "x"})
    other = {**BASE, "order_id": "o2"}
    totals = totals_after(
        confirmed,
        ("reservation.confirmed", {**other, "total_cents": 1000, "expires_at": "x"}),
        ("reservation.released", BASE),
        ("reservation.released", BASE),  # re-published: same order, same type
        ("reservation.expired", other),
    )
    assert totals["units_reserved"] == 0
    assert (totals["cancelled_orders"], totals["expired_orders"]) == (1, 1)
    assert totals["reserved_orders"] == 2


def test_commit_feeds_the_leaderboard_and_stock_is_the_latest_state() -> None:
    commit = effect(
        "reservation.committed",
        {**BASE, "total_cents": 4200, "payment_ref": "p", "allocations": []},
        7,
    )
    assert RankAdd(KEYS.leaderboard, "s1", 4200) in commit.ops
    stock = effect(
        "stock.changed",
        {"sku": "crab", "received": 10, "available": 6, "reserved": 3, "sold": 1},
        8,
    )
    # Without a version (an older publisher) and with one: the store decides which wins.
    assert stock.guard is None
    assert stock.ops == (
        AssignIfNewer(KEYS.stock, "crab", "[10,6,3,1]", KEYS.stock_versions, None),
    )
    versioned = effect(
        "stock.changed",
        {"sku": "crab", "received": 10, "available": 6, "reserved": 3, "sold": 1, "version": 12},
        8,
    )
    assert versioned.ops == (
        AssignIfNewer(KEYS.stock, "crab", "[10,6,3,1]", KEYS.stock_versions, 12),
    )
    paid = {**BASE, "payment_ref": "p", "amount_cents": 4200}
    assert effect("order.paid", paid, 9).ops == ()


def test_snapshot_lists_the_stock_of_the_session_skus_only() -> None:
    session = session_from_hash(
        "s1",
        {
            b"host_id": b"h1",
            b"title": b"Crab night",
            b"status": b"live",
            b"listings": b'[{"sku":"crab","title":"Crab","price_cents":100},'
            b'{"sku":"rice","title":"Rice","price_cents":50}]',
        },
    )
    assert session is not None and session.skus == ["crab", "rice"]
    payload = session_payload(
        session,
        dict.fromkeys(TOTAL_FIELDS, 0),
        {"crab": stock_from_json(b"[10,0,3,7]"), "rice": stock_from_json(None)},
    )
    assert payload["skus"] == {"crab": {"available": 0, "reserved": 3, "sold": 7}}
    assert payload["listings"][0]["received"] == 10 and payload["listings"][1]["received"] is None
    assert payload["session_id"] == "s1"
    assert session_from_hash("s2", {}) is None


def task(pick_id: str, sku: str, lot: str, expires: str | None, seq: int) -> PickTask:
    return PickTask(pick_id, "o", "s", "wh", sku, lot, 1, expires, "t", "open", seq)


def test_waves_group_sku_and_lot_soonest_expiry_first() -> None:
    waves = group_waves(
        [
            task("p1", "crab", "B", "2030-02-01", 1),
            task("p2", "tea", "T", None, 2),
            task("p3", "crab", "A", "2030-01-01", 3),
            task("p4", "crab", "B", "2030-02-01", 4),
        ]
    )
    assert [(w.sku, w.lot_code, w.quantity) for w in waves] == [
        ("crab", "A", 1),
        ("crab", "B", 2),
        ("tea", "T", 1),
    ]
    assert [t.pick_id for t in waves[1].picks] == ["p1", "p4"]


def test_list_query_defaults_and_refusals() -> None:
    assert parse_list_query({}) == ("open", 500, 0)
    assert parse_list_query({"status": "done", "limit": "3", "after": "17"}) == ("done", 3, 17)
    for bad in ({"status": "all"}, {"limit": "0"}, {"limit": "x"}, {"after": "-1"}):
        with pytest.raises(ValueError):
            parse_list_query(bad)


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, (), True),
        ("http://notifier.local:8083", (), True),
        ("http://notifier.local:9999", (), False),
        ("https://evil.example", (), False),
        ("https://studio.example", ("https://studio.example",), True),
        ("https://evil.example", ("*",), True),
        ("null", (), False),
    ],
)
def test_origin_allow_list(origin: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    headers = {"Host": "notifier.local:8083"}
    if origin is not None:
        headers["Origin"] = origin
    request = make_mocked_request("GET", "/v1/sessions/s1/live", headers=headers)
    if ok:
        check_origin(request, allowed)
    else:
        with pytest.raises(ProblemError) as refused:
            check_origin(request, allowed)
        assert refused.value.status == 403
