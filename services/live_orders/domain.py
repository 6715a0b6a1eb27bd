"""Sessions, listings and orders as plain values, and the rules about them. No I/O here.

The order state machine (DESIGN 4.3): `pending -> reserved | rejected`;
`reserved -> paid | cancelled | expired`. live_orders never decides a reservation itself:
states move only when an inventory outcome event arrives (`OUTCOME_TRANSITIONS`), except
for the attempts it refuses before asking inventory (`not_on_sale`, the sold-out fast path),
which are born `rejected`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from services.common.clock import from_rfc3339, to_rfc3339
from services.common.identifiers import is_valid_id as _is_valid_id
from services.common.messages import Listing as ListingMessage
from services.common.messages import (
    OrderOutcome,
    ReservationCommitted,
    ReservationConfirmed,
    ReservationExpired,
    ReservationRejected,
    ReservationReleased,
    SessionStatus,
    SessionUpdated,
)
from services.common.values import value_class

OrderStatus = Literal["pending", "reserved", "rejected", "paid", "cancelled", "expired"]
Intent = Literal["pay", "cancel"]

FINAL_STATUSES: frozenset[str] = frozenset({"rejected", "paid", "cancelled", "expired"})

# `?wait=S` is bounded so a request never holds a connection for long.
MAX_WAIT_S = 10.0

# Idempotency keys are chosen by clients: printable ASCII, bounded.
_IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")


class InvalidInput(ValueError):
    """A request that is well-formed JSON but breaks a rule (answered 422)."""


class NotFound(LookupError):
    """No such session or order, or one the caller may not see (answered 404)."""


class Conflict(Exception):
    """The request does not fit the resource's current state (answered 409)."""


class RateLimited(Exception):
    """The buyer's token bucket is empty (answered 429 with Retry-After)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


def is_valid_id(value: str) -> bool:
    """Ids in paths and Redis keys: the one grammar of every service (see
    services/common/identifiers.py), so a crafted id never reaches into another key's hash
    tag."""
    return _is_valid_id(value)


def is_valid_idempotency_key(value: str) -> bool:
    return _IDEMPOTENCY_KEY_PATTERN.fullmatch(value) is not None


def parse_wait(raw: str | None, default: float) -> float:
    """Seconds to long-poll: `default` when absent, capped at MAX_WAIT_S; ValueError when it
    is not a finite number >= 0."""
    if raw is None or raw == "":
        return min(default, MAX_WAIT_S)
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("wait must be a number of seconds >= 0")
    return min(value, MAX_WAIT_S)


# ---------------------------------------------------------------------------- sessions


@value_class
class Listing:
    sku: str
    title: str
    price_cents: int
    per_user_limit: int
    sale_starts_at: str | None
    sale_ends_at: str | None
    # Insertion time, only to keep listings in the order the host added them.
    added_ms: int = 0

    def on_sale(self, session_status: str, now: datetime) -> bool:
        """Buyable now: the session is live and `now` is inside the listing's sale window."""
        if session_status != "live":
            return False
        if self.sale_starts_at is not None and now < _window_bound(self.sale_starts_at):
            return False
        return not (self.sale_ends_at is not None and now >= _window_bound(self.sale_ends_at))

    def to_message(self) -> ListingMessage:
        """The listing as answered over HTTP and as published in `session.updated`."""
        return ListingMessage(
            sku=self.sku,
            title=self.title,
            price_cents=self.price_cents,
            per_user_limit=self.per_user_limit,
            sale_starts_at=self.sale_starts_at,
            sale_ends_at=self.sale_ends_at,
        )


@functools.lru_cache(maxsize=1024)
def _window_bound(text: str) -> datetime:
    """A sale window's bound, parsed once: every order attempt of a sale checks it."""
    return from_rfc3339(text)


def new_listing(body: dict[str, Any], added_ms: int) -> Listing:
    """A listing from a schema-valid `listing-create` body; InvalidInput for bad times."""
    starts = _normalize_time(body.get("sale_starts_at"), "sale_starts_at")
    ends = _normalize_time(body.get("sale_ends_at"), "sale_ends_at")
    if starts is not None and ends is not None and from_rfc3339(ends) <= from_rfc3339(starts):
        raise InvalidInput("sale_ends_at must be after sale_starts_at")
    return Listing(
        sku=body["sku"],
        title=body["title"],
        price_cents=body["price_cents"],
        per_user_limit=body["per_user_limit"],
        sale_starts_at=starts,
        sale_ends_at=ends,
        added_ms=added_ms,
    )


def _normalize_time(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    try:
        return to_rfc3339(from_rfc3339(value))
    except ValueError as exc:
        raise InvalidInput(f"{field}: not an RFC 3339 time with offset: {value!r}") from exc


@value_class
class Session:
    session_id: str
    host_id: str
    title: str
    status: SessionStatus
    created_at: str
    started_at: str | None
    ended_at: str | None
    listings: tuple[Listing, ...]
    version: int
    # The promotion pavilion it belongs to (set at creation only; None: none).
    pavilion: str | None = None

    def listing(self, sku: str) -> Listing | None:
        return next((item for item in self.listings if item.sku == sku), None)

    def to_message(self) -> SessionUpdated:
        """The session as answered over HTTP and as published in `session.updated`."""
        return SessionUpdated(
            session_id=self.session_id,
            host_id=self.host_id,
            title=self.title,
            status=self.status,
            listings=tuple(item.to_message() for item in self.listings),
            created_at=self.created_at,
            started_at=self.started_at,
            ended_at=self.ended_at,
            pavilion=self.pavilion,
        )


# The session moves: action -> (status it must be in, status it goes to, time field).
SESSION_MOVES: dict[str, tuple[SessionStatus, SessionStatus, str]] = {
    "start": ("scheduled", "live", "started_at"),
    "end": ("live", "ended", "ended_at"),
}


MoveOutcome = Literal["applied", "same", "conflict", "missing"]
AddListingOutcome = Literal["added", "duplicate", "ended", "missing"]


@value_class
class MoveResult:
    """What the session store answered to a start or end."""

    outcome: MoveOutcome
    previous: str


# ------------------------------------------------------------------------------ orders


@value_class
class Order:
    order_id: str
    status: OrderStatus
    session_id: str
    sku: str
    buyer_id: str
    quantity: int
    unit_price_cents: int
    total_cents: int
    per_user_limit: int
    placed_at: str
    placed_ms: int
    updated_at: str
    expires_at: str | None = None
    reason: str | None = None
    payment_ref: str | None = None
    intent: Intent | None = None
    published: bool = False

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_public(self) -> dict[str, Any]:
        """The order as the buyer sees it; the fields of the contract plus a few extras."""
        view: dict[str, Any] = {
            "order_id": self.order_id,
            "status": self.status,
            "session_id": self.session_id,
            "sku": self.sku,
            "quantity": self.quantity,
            "unit_price_cents": self.unit_price_cents,
            "total_cents": self.total_cents,
            "expires_at": self.expires_at,
            "placed_at": self.placed_at,
            "updated_at": self.updated_at,
        }
        if self.reason is not None:
            view["reason"] = self.reason
        if self.payment_ref is not None:
            view["payment_ref"] = self.payment_ref
        return view


@functools.lru_cache(maxsize=4096)
def request_fingerprint(session_id: str, sku: str, quantity: int) -> str:
    """What makes two order requests "the same body" for an idempotency key. A sale has a
    handful of (session, sku, quantity): each is hashed once, not once per attempt."""
    return hashlib.sha256(f"{session_id}\n{sku}\n{quantity}".encode()).hexdigest()[:32]


def check_amount(order: Order, amount_cents: int) -> None:
    """A payment must pay the order's total, no more, no less."""
    if amount_cents != order.total_cents:
        raise InvalidInput(
            f"amount_cents {amount_cents} does not match the order's total_cents "
            f"{order.total_cents}"
        )


def check_quantity(listing: Listing, quantity: int) -> None:
    if quantity > listing.per_user_limit:
        raise InvalidInput(
            f"quantity {quantity} is above this listing's per_user_limit {listing.per_user_limit}"
        )


@value_class
class Transition:
    """What an inventory outcome does to an order: from which states, into which."""

    target: OrderStatus
    allowed_from: tuple[OrderStatus, ...]


OUTCOME_TRANSITIONS: dict[type[OrderOutcome], Transition] = {
    ReservationConfirmed: Transition("reserved", ("pending",)),
    ReservationRejected: Transition("rejected", ("pending",)),
    ReservationCommitted: Transition("paid", ("reserved",)),
    ReservationReleased: Transition("cancelled", ("reserved",)),
    ReservationExpired: Transition("expired", ("reserved",)),
}


def transition_fields(outcome: OrderOutcome) -> dict[str, str]:
    """Fields an outcome records on the order besides its status."""
    if isinstance(outcome, ReservationConfirmed):
        return {"expires_at": outcome.expires_at}
    if isinstance(outcome, ReservationRejected):
        return {"reason": outcome.reason}
    if isinstance(outcome, ReservationCommitted):
        return {"payment_ref": outcome.payment_ref}
    return {}


def outcome_label(outcome: OrderOutcome) -> str:
    """The order-outcome counter an applied outcome lands in."""
    if isinstance(outcome, ReservationRejected):
        return f"rejected_{outcome.reason}"
    return OUTCOME_TRANSITIONS[type(outcome)].target


# Pay and cancel: which statuses let the intent be recorded.
PAYABLE_FROM: tuple[OrderStatus, ...] = ("reserved",)
CANCELLABLE_FROM: tuple[OrderStatus, ...] = ("pending", "reserved")


@value_class
class OrderContext:
    """What placing an order needs to know about its session (order_context caches it)."""

    session_status: str | None  # None: no such session
    listing: Listing | None  # None: the SKU is not listed in the session
    read_at: float


# ------------------------------------------------------- what the order store answers


PlaceOutcome = Literal["claimed", "replay", "mismatch", "limited"]
TransitionOutcome = Literal["applied", "same", "stale", "missing"]
IntentOutcome = Literal["claimed", "held", "not_allowed", "missing"]


@value_class
class Placement:
    """What `place` did. `order` is the order as stored (None when limited or mismatch);
    `created`: this call stored it; `publish`: this caller holds the lease to publish its
    creation event."""

    outcome: PlaceOutcome
    order_id: str = ""
    order: Order | None = None
    created: bool = False
    publish: bool = False
    retry_after_ms: int = 0


@value_class
class TransitionRequest:
    order_id: str
    target: str
    allowed_from: Iterable[str]
    fields: dict[str, str]


@value_class
class TransitionResult:
    outcome: TransitionOutcome
    previous: str
    placed_ms: int


@value_class
class IntentResult:
    outcome: IntentOutcome
    status: str
    intent: str
    payment_ref: str
