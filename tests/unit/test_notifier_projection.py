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
    Assign,
    AssignIfNewer,
    EventEffect,
    Increment,
    IncrementOnce,
    KeepForTrace,
    RankAdd,
    SessionInfo,
    SetAdd,
    check_pavilion,
    effect_of,
    pavilion_listing,
    pavilion_statuses,
    session_payload,
)
from services.notifier.projection_store import session_from_hash, stock_from_json
from services.notifier.redis_keys import NotifierKeys
from services.notifier.trace import LotRecord, lot_field

KEYS = NotifierKeys("lc:")
BASE = {"order_id": "o1", "session_id": "s1", "sku": "crab", "buyer_id": "b1", "quantity": 2}


def effect(type_: str, data: dict[str, Any], offset: int) -> EventEffect:
    """The effect of the typed message that (type_, data) decodes to."""
    return effect_of(MESSAGE_TYPES[(type_, 1)].from_data(data), offset, KEYS)


def totals_after(
    *events: tuple[str, dict[str, Any]], seen: set[str] | None = None
) -> dict[str, int]:
    """Apply effects the way the Lua step does (guards included), in memory; `seen`: the
    session's guard set as it was before."""
    totals = dict.fromkeys(TOTAL_FIELDS, 0)
    seen = set() if seen is None else seen
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
            elif isinstance(op, IncrementOnce):
                assert (op.key, op.seen) == (KEYS.totals("s1"), KEYS.seen("s1"))
                if op.member not in seen:
                    seen.add(op.member)
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
        ("reservation.rejected", "limit_exceeded", {"attempts": 1, "rejected_limit": 1}),
        ("reservation.rejected", "sold_out", {"attempts": 1, "rejected_sold_out": 1}),
    ],
)
def test_rejections_land_in_their_reason_counter(
    type_: str, reason: str, expected: dict[str, int]
) -> None:
    totals = totals_after((type_, {**BASE, "reason": reason}))
    assert {k: v for k, v in totals.items() if v} == expected


PLACED = {
    **BASE,
    "unit_price_cents": 500,
    "total_cents": 1000,
    "per_user_limit": 2,
    "placed_at": "2030-01-01T00:00:00Z",
}


def test_an_attempt_is_counted_from_its_decision_once() -> None:
    confirmed = ("reservation.confirmed", {**BASE, "total_cents": 1000, "expires_at": "x"})
    # order.placed itself counts nothing (the notifier does not even decode it) ...
    assert effect("order.placed", PLACED, 0).ops == ()
    assert {k: v for k, v in totals_after(("order.placed", PLACED)).items() if v} == {}
    # ... its decision counts the attempt, once however often it comes ...
    assert totals_after(confirmed, confirmed)["attempts"] == 1
    # ... and not again when a notifier from before this rule counted the order.placed
    # (under the member order.placed:<id>) and this one gets the decision.
    counted_before = {"order.placed:o1"}
    totals = totals_after(confirmed, seen=counted_before)
    assert (totals["attempts"], totals["reserved_orders"]) == (0, 1)


def tally(tally_id: str, sold_out: int, not_on_sale: int) -> tuple[str, dict[str, Any]]:
    return (
        "attempts.tallied",
        {
            "tally_id": tally_id,
            "session_id": "s1",
            "sold_out": sold_out,
            "not_on_sale": not_on_sale,
            "tallied_at": "2030-01-01T00:00:00Z",
        },
    )


def test_a_tally_counts_its_attempts_once_per_tally_id() -> None:
    totals = totals_after(
        tally("a-1", 40, 2),
        tally("a-1", 40, 2),  # republished after a crash: the same tally
        tally("b-1", 7, 0),
        ("order.rejected", {**BASE, "reason": "sold_out"}),  # from before tallies
    )
    assert {k: v for k, v in totals.items() if v} == {"attempts": 50, "rejected_sold_out": 48}


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
    # Who may read the order's trace, kept for the trace retention (then swept).
    buyer = next(op for op in commit.ops if isinstance(op, Assign) and op.key == KEYS.order_buyers)
    assert KeepForTrace(KEYS.order_buyers_due, buyer.field) in commit.ops
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


SESSION = {
    "session_id": "s1",
    "host_id": "h1",
    "title": "Crab night",
    "status": "live",
    "listings": [],
    "created_at": "2030-01-01T00:00:00Z",
}


def test_a_session_keeps_its_pavilion_and_joins_the_pavilion_index() -> None:
    with_pavilion = effect("session.updated", {**SESSION, "pavilion": "阳澄湖馆"}, 3)
    assert Assign(KEYS.session("s1"), "pavilion", "阳澄湖馆") in with_pavilion.ops
    assert SetAdd(KEYS.pavilion("阳澄湖馆"), "s1") in with_pavilion.ops
    assert with_pavilion.guard is None

    # An event from before pavilions (no field) or with null: no pavilion, no index.
    for data in (SESSION, {**SESSION, "pavilion": None}):
        none = effect("session.updated", data, 4)
        assert Assign(KEYS.session("s1"), "pavilion", "") in none.ops
        assert not any(isinstance(op, SetAdd) for op in none.ops)


def test_a_commit_records_the_buyer_who_may_read_the_order_trace() -> None:
    commit = effect(
        "reservation.committed",
        {**BASE, "total_cents": 4200, "payment_ref": "p", "allocations": []},
        7,
    )
    assert Assign(KEYS.order_buyers, "o1", "b1") in commit.ops
    # Under the order's guard: a re-published commit changes nothing twice.
    assert commit.guard is not None and commit.guard.member == "reservation.committed:o1"


LOT = {
    "sku": "crab",
    "lot_code": "L-1",
    "warehouse_id": "wh-1",
    "quantity": 10,
    "allocated": 2,
    "expires_on": "2030-02-01",
    "origin": "Yangcheng Lake",
    "producer": "Coop 7",
    "harvested_on": "2030-01-20",
    "inspection": "CNAS-123",
    "journal_seq": 5,
    "journal_head": "a" * 64,
}


def test_a_lot_update_is_kept_only_if_its_journal_is_newer() -> None:
    lot = effect("lot.updated", LOT, 11)
    assert lot.guard is None
    ((op,),) = (lot.ops,)
    assert op == AssignIfNewer(KEYS.lots, lot_field("crab", "L-1"), op.value, KEYS.lot_versions, 5)
    stored = LotRecord.from_json(op.value)
    assert stored.origin == "Yangcheng Lake" and stored.journal_head == "a" * 64
    assert stored.journal_seq == 5 and stored.warehouse_id == "wh-1"
    # Lot fields cannot collide whatever sku and lot code contain.
    assert lot_field("a:b", "c") != lot_field("a", "b:c")


def test_pavilion_listing_filters_by_status_and_orders_live_first() -> None:
    def info(session_id: str, title: str, status: str) -> SessionInfo:
        return SessionInfo(session_id, "h", title, status, (), "P")

    sessions = [info("s1", "b", "ended"), info("s2", "z", "scheduled"), info("s3", "a", "live")]
    default = pavilion_listing("P", sessions, pavilion_statuses(None))
    assert default == {
        "pavilion": "P",
        "sessions": [
            {"session_id": "s3", "title": "a", "host_id": "h", "status": "live"},
            {"session_id": "s2", "title": "z", "host_id": "h", "status": "scheduled"},
        ],
    }
    ended = pavilion_listing("P", sessions, pavilion_statuses("ended"))["sessions"]
    assert [s["session_id"] for s in ended] == ["s1"]
    every = pavilion_listing("P", sessions, pavilion_statuses("all"))["sessions"]
    assert [s["session_id"] for s in every] == ["s3", "s2", "s1"]
    for bad in ("current", "open", ""):
        with pytest.raises(ValueError):
            pavilion_statuses(bad)
    assert check_pavilion("x" * 100) == "x" * 100
    for bad in ("", "x" * 101):
        with pytest.raises(ValueError):
            check_pavilion(bad)
