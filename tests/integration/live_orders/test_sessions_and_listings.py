"""Sessions and their listings over HTTP: who may create and move them, the session's life
(scheduled -> live -> ended), and each status change published as session.updated."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import auth
from tests.integration.live_orders_stack import (
    ADMIN,
    Stack,
    call,
    is_problem,
    move_session,
    new_session,
    session_events,
    uid,
)

pytestmark = pytest.mark.integration

# ------------------------------------------------------------------------------ sessions


async def test_creating_a_session_needs_a_token(stack: Stack) -> None:
    status, body, headers = await call(stack, "POST", "/v1/sessions", None, {"title": "Tea"})

    assert status == 401 and is_problem(headers, body, 401)


async def test_a_buyer_cannot_create_a_session(stack: Stack) -> None:
    status, body, headers = await call(
        stack, "POST", "/v1/sessions", auth("buyer", "b"), {"title": "Tea"}
    )

    assert status == 403 and is_problem(headers, body, 403)


async def test_an_admin_must_say_for_which_host_a_session_is(stack: Stack) -> None:
    status, body, _ = await call(stack, "POST", "/v1/sessions", ADMIN, {"title": "Tea"})

    assert status == 422, body


async def test_an_admin_creates_a_session_for_the_named_host(stack: Stack) -> None:
    host = uid("host")

    status, session, _ = await call(
        stack, "POST", "/v1/sessions", ADMIN, {"title": "Rice", "host_id": host}
    )

    assert status == 201 and session["host_id"] == host


async def test_a_host_cannot_create_a_session_for_another_host(stack: Stack) -> None:
    body = {"title": "Tea", "host_id": uid("host")}

    status, answer, _ = await call(stack, "POST", "/v1/sessions", auth("host", uid("host")), body)

    assert status == 403, answer


async def test_a_new_session_is_scheduled_without_listings(stack: Stack) -> None:
    host = uid("host")

    session = await new_session(stack, host, "Tea")

    assert session["host_id"] == host and session["status"] == "scheduled"
    assert session["listings"] == [] and session["created_at"].endswith("Z")


async def test_a_buyer_reads_a_session_as_created(stack: Stack) -> None:
    session = await new_session(stack, uid("host"))

    status, seen, _ = await call(
        stack, "GET", f"/v1/sessions/{session['session_id']}", auth("buyer", uid("b"))
    )

    assert status == 200 and seen == session


async def test_reading_a_session_needs_a_token(stack: Stack) -> None:
    session = await new_session(stack, uid("host"))

    status, body, _ = await call(stack, "GET", f"/v1/sessions/{session['session_id']}", None)

    assert status == 401, body


async def test_an_unknown_session_is_a_404_problem(stack: Stack) -> None:
    status, body, headers = await call(
        stack, "GET", "/v1/sessions/nosuchsession", auth("buyer", "b")
    )

    assert status == 404 and is_problem(headers, body, 404)


@pytest.mark.parametrize("action", ["start", "end"])
async def test_another_host_is_told_the_session_does_not_exist(stack: Stack, action: str) -> None:
    """404, exactly like a session that does not exist."""
    session = await new_session(stack, uid("host"))

    status, body, _ = await call(
        stack, "POST", f"/v1/sessions/{session['session_id']}/{action}", auth("host", uid("host"))
    )

    assert status == 404, body


@pytest.mark.parametrize("action", ["start", "end"])
async def test_a_buyer_cannot_start_or_end_a_session(stack: Stack, action: str) -> None:
    host = uid("host")
    session = await new_session(stack, host)

    status, body, _ = await call(
        stack, "POST", f"/v1/sessions/{session['session_id']}/{action}", auth("buyer", host)
    )

    assert status == 403, body


async def test_a_scheduled_session_cannot_end_without_going_live(stack: Stack) -> None:
    host = uid("host")
    session = await new_session(stack, host)

    status, body, _ = await call(
        stack, "POST", f"/v1/sessions/{session['session_id']}/end", auth("host", host)
    )

    assert status == 409, body


async def test_starting_a_live_session_again_answers_it_unchanged(stack: Stack) -> None:
    host = uid("host")
    sid = (await new_session(stack, host))["session_id"]

    live = await move_session(stack, sid, host, "start")
    again = await move_session(stack, sid, host, "start")

    assert live["status"] == "live" and live["started_at"]
    assert again == live


async def test_an_admin_ends_a_live_session(stack: Stack) -> None:
    host = uid("host")
    sid = (await new_session(stack, host))["session_id"]
    await move_session(stack, sid, host, "start")

    status, ended, _ = await call(stack, "POST", f"/v1/sessions/{sid}/end", ADMIN)

    assert status == 200 and ended["status"] == "ended" and ended["ended_at"]


async def test_an_ended_session_cannot_start_again(stack: Stack) -> None:
    host = uid("host")
    sid = (await new_session(stack, host))["session_id"]
    await move_session(stack, sid, host, "start")
    await move_session(stack, sid, host, "end")

    status, body, _ = await call(stack, "POST", f"/v1/sessions/{sid}/start", auth("host", host))

    assert status == 409, body


async def test_every_status_change_is_published_as_session_updated(stack: Stack) -> None:
    host = uid("host")
    sid = (await new_session(stack, host))["session_id"]
    await move_session(stack, sid, host, "start")
    ended = await move_session(stack, sid, host, "end")

    published = await session_events(stack, sid, "ended")

    assert [event["status"] for event in published] == ["scheduled", "live", "ended"]
    assert published[-1] == ended


# ------------------------------------------------------------------------------ listings

GOOD_LISTING = {
    "title": "Peach box",
    "price_cents": 3900,
    "per_user_limit": 3,
    "sale_starts_at": "2030-01-01T08:00:00+08:00",
    "sale_ends_at": None,
}


def listing_body(**changes: Any) -> dict[str, Any]:
    return {"sku": uid("peach"), **GOOD_LISTING, **changes}


def listings_path(session: dict[str, Any]) -> str:
    return f"/v1/sessions/{session['session_id']}/listings"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({k: v for k, v in GOOD_LISTING.items() if k != "price_cents"}, id="no-price"),
        pytest.param({**GOOD_LISTING, "price_cents": "3900"}, id="price-as-string"),
        pytest.param({**GOOD_LISTING, "price_cents": 39.5}, id="fractional-price"),
        pytest.param({**GOOD_LISTING, "price_cents": 3900.0}, id="price-as-float"),
        pytest.param({**GOOD_LISTING, "price_cents": -1}, id="negative-price"),
        pytest.param({**GOOD_LISTING, "per_user_limit": 0}, id="zero-limit"),
        pytest.param({**GOOD_LISTING, "stock": 10}, id="stock-is-inventorys"),
        pytest.param({**GOOD_LISTING, "sku": "bad {sku}"}, id="bad-sku"),
        pytest.param({**GOOD_LISTING, "sale_starts_at": "tomorrow"}, id="not-a-time"),
        # No offset: refused, not guessed.
        pytest.param({**GOOD_LISTING, "sale_starts_at": "2030-01-01T08:00:00"}, id="no-offset"),
        pytest.param({**GOOD_LISTING, "sale_ends_at": "2029-12-31T00:00:00Z"}, id="ends-first"),
        pytest.param(["not", "an", "object"], id="not-an-object"),
    ],
)
async def test_an_invalid_listing_is_a_422_problem(stack: Stack, bad: Any) -> None:
    host = uid("host")
    session = await new_session(stack, host)
    if isinstance(bad, dict):
        bad = {"sku": uid("peach"), **bad}

    status, body, headers = await call(
        stack, "POST", listings_path(session), auth("host", host), bad
    )

    assert status == 422 and is_problem(headers, body, 422), body


async def test_a_listing_that_is_not_json_is_a_400(stack: Stack) -> None:
    host = uid("host")
    session = await new_session(stack, host)

    as_json = {**auth("host", host), "Content-Type": "application/json"}

    status, body, _ = await call(stack, "POST", listings_path(session), as_json, data=b"{nope")

    assert status == 400, body


async def test_another_host_cannot_add_a_listing(stack: Stack) -> None:
    session = await new_session(stack, uid("host"))

    status, body, _ = await call(
        stack, "POST", listings_path(session), auth("host", uid("host")), listing_body()
    )

    assert status == 404, body


async def test_a_buyer_cannot_add_a_listing(stack: Stack) -> None:
    host = uid("host")
    session = await new_session(stack, host)

    status, body, _ = await call(
        stack, "POST", listings_path(session), auth("buyer", host), listing_body()
    )

    assert status == 403, body


async def test_a_listing_is_stored_in_utc_and_shown_with_its_session(stack: Stack) -> None:
    host = uid("host")
    session = await new_session(stack, host)
    good = listing_body()

    status, listing, _ = await call(stack, "POST", listings_path(session), auth("host", host), good)
    _, shown, _ = await call(
        stack, "GET", f"/v1/sessions/{session['session_id']}", auth("buyer", "b")
    )

    assert status == 201
    assert listing == {**good, "sale_starts_at": "2030-01-01T00:00:00.000Z"}
    assert shown["listings"] == [listing]


async def test_a_sku_is_listed_once_per_session(stack: Stack) -> None:
    host = uid("host")
    session = await new_session(stack, host)
    good = listing_body()
    status, _, _ = await call(stack, "POST", listings_path(session), auth("host", host), good)
    assert status == 201

    status, body, headers = await call(
        stack, "POST", listings_path(session), auth("host", host), {**good, "title": "again"}
    )

    assert status == 409 and is_problem(headers, body, 409)


async def test_an_ended_session_takes_no_new_listings(stack: Stack) -> None:
    host = uid("host")
    session = await new_session(stack, host)
    await move_session(stack, session["session_id"], host, "start")
    await move_session(stack, session["session_id"], host, "end")

    status, body, _ = await call(
        stack, "POST", listings_path(session), auth("host", host), listing_body()
    )

    assert status == 409, body


async def test_a_session_keeps_its_pavilion(stack: Stack) -> None:
    host = uid("host")
    status, session, _ = await call(
        stack,
        "POST",
        "/v1/sessions",
        auth("host", host),
        {"title": "Crabs", "pavilion": "阳澄湖馆"},
    )
    assert status == 201 and session["pavilion"] == "阳澄湖馆"
    sid = session["session_id"]
    status, seen, _ = await call(stack, "GET", f"/v1/sessions/{sid}", auth("buyer", uid("b")))
    assert status == 200 and seen["pavilion"] == "阳澄湖馆"
    status, started, _ = await call(stack, "POST", f"/v1/sessions/{sid}/start", auth("host", host))
    assert status == 200 and started["pavilion"] == "阳澄湖馆"
    published = await session_events(stack, sid, "live")
    assert [event["pavilion"] for event in published] == ["阳澄湖馆", "阳澄湖馆"]


async def test_a_session_without_a_pavilion_answers_null(stack: Stack) -> None:
    status, plain, _ = await call(
        stack, "POST", "/v1/sessions", auth("host", uid("host")), {"title": "Tea"}
    )
    assert status == 201 and plain["pavilion"] is None


@pytest.mark.parametrize("bad", ["p" * 101, "", 7], ids=["too-long", "empty", "not-a-string"])
async def test_a_bad_pavilion_is_a_422(stack: Stack, bad: Any) -> None:
    status, body, headers = await call(
        stack, "POST", "/v1/sessions", auth("host", uid("host")), {"title": "Bad", "pavilion": bad}
    )
    assert status == 422 and is_problem(headers, body, 422), bad
