"""In-memory stand-ins for the stores and the publisher the use cases and handlers take as
Protocols, and a builder of consumed events: what tests/unit runs them against.

Each fake follows its real adapter's rules (named in its docstring) only as far as the
use cases and handlers can tell the difference; what the Lua steps do beyond that is the
integration tests' business.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar, cast

from services.common.clock import epoch_ms
from services.common.consumed import ConsumedEvent
from services.common.events import Envelope, Outgoing
from services.common.messages import (
    LotAllocation,
    Message,
    PickRequested,
    RejectReason,
    ReservationCommitted,
    ReservationConfirmed,
    ReservationExpired,
    ReservationRejected,
    ReservationReleased,
)
from services.inventory.domain import (
    Allocation,
    HoldOutcome,
    Lot,
    OrderRecord,
    OrderState,
    PlacedOrder,
    ReservationDecision,
    ReserveBatchResult,
    StockLevels,
    fefo_key,
)
from services.inventory.lot_journal import (
    EntryType,
    JournalAppend,
    JournalEntry,
    JournalHead,
    head_of,
    next_entry,
)
from services.live_orders.domain import (
    AddListingOutcome,
    IntentResult,
    Listing,
    MoveResult,
    Order,
    OrderContext,
    OrderStatus,
    Placement,
    Session,
    TransitionRequest,
    TransitionResult,
)
from services.live_orders.order_events import placed_event
from services.live_orders.order_waiters import OrderUpdate
from services.live_orders.redis_keys import new_order_id
from services.notifier.pick_queue import PickTask
from services.notifier.projection import Applied, EventEffect

M = TypeVar("M", bound=Message)

# The publish lease of a stored order (order_store.PUBLISH_LEASE_MS in production): any
# length longer than a test runs does here, and the fakes import no Redis adapter.
PUBLISH_LEASE_MS = 10_000


def consumed(
    message: M, offset: int = 0, *, topic: str = "lc.orders", partition: int = 0
) -> ConsumedEvent[M]:
    """`message` as a consumer hands it over, at `offset` of `topic`:`partition`."""
    return ConsumedEvent(
        topic=topic,
        partition=partition,
        offset=offset,
        key=getattr(message, "sku", None),
        envelope=Envelope.of(message, source="test"),
        timestamp_ms=epoch_ms(),
    )


# ------------------------------------------------------------------------- publisher


class FakePublisher:
    """Publisher: records what was sent, in order. `failure` makes every send raise it;
    `on_publish` is what the rest of the system does once the broker has an event (an
    inventory answering, say), awaited before the send returns."""

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []
        self.failure: Exception | None = None
        self.on_publish: Callable[[Outgoing], Awaitable[None]] | None = None

    async def publish(self, topic: str, key: str, envelope: Envelope[Message]) -> None:
        await self.publish_many([(topic, key, envelope)])

    async def publish_many(self, items: Iterable[Outgoing]) -> None:
        if self.failure is not None:
            raise self.failure
        for item in items:
            self.sent.append(item)
            if self.on_publish is not None:
                await self.on_publish(item)

    def messages(self, cls: type[M]) -> list[M]:
        """The messages of class `cls` sent so far, in order."""
        return [env.message for _, _, env in self.sent if isinstance(env.message, cls)]

    def envelopes(self, cls: type[Message]) -> list[Envelope[Message]]:
        return [env for _, _, env in self.sent if isinstance(env.message, cls)]


# ----------------------------------------------------------------------- live_orders


class FakeOrderRecords:
    """OrderRecords and OrderTransitions of OrderStore, after its scripts:

    - place_order.lua: a known (buyer, key) answers its order (`mismatch` with another
      fingerprint) before the bucket is touched; a new key spends a token or is `limited`;
      an order is stored with a publish lease, and a replay takes the lease (publish) only
      when the order is unpublished and the lease ran out;
    - claim_intent.lua: the first intent recorded on an order stays (`held`);
    - transition_orders.lua: `same`, `stale`, `missing`, else `applied`; any outcome marks
      the order published.
    """

    def __init__(self) -> None:
        self.orders: dict[str, Order] = {}
        self.leases: dict[str, int] = {}
        self.keys: dict[tuple[str, str], tuple[str, str]] = {}  # -> (order_id, fingerprint)
        self.buckets: dict[str, tuple[float, int]] = {}  # buyer -> (tokens, at ms)
        self.transition_calls: list[list[TransitionRequest]] = []
        self.announced: list[list[OrderUpdate]] = []

    def add(self, order: Order) -> Order:
        self.orders[order.order_id] = order
        return order

    async def place(
        self,
        candidate: Order,
        *,
        idempotency_key: str,
        fingerprint: str,
        burst: int,
        per_s: float,
        now_ms: int,
    ) -> Placement:
        key = (candidate.buyer_id, idempotency_key)
        claimed = self.keys.get(key)
        if claimed is not None:
            order_id, claimed_fingerprint = claimed
            if claimed_fingerprint != fingerprint:
                return Placement("mismatch", order_id)
        else:
            retry_after_ms = self._take_token(candidate.buyer_id, burst, per_s, now_ms)
            if retry_after_ms:
                return Placement("limited", retry_after_ms=retry_after_ms)
            order_id = candidate.order_id
            self.keys[key] = (order_id, fingerprint)
        outcome: Literal["claimed", "replay"] = "replay" if claimed else "claimed"
        stored = self.orders.get(order_id)
        if stored is None:
            order = self.add(dataclasses.replace(candidate, order_id=order_id, published=False))
            self.leases[order_id] = now_ms + PUBLISH_LEASE_MS
            return Placement(outcome, order_id, order, created=True, publish=True)
        publish = not stored.published and self.leases.get(order_id, 0) <= now_ms
        if publish:
            self.leases[order_id] = now_ms + PUBLISH_LEASE_MS
        return Placement(outcome, order_id, stored, publish=publish)

    def _take_token(self, buyer_id: str, burst: int, per_s: float, now_ms: int) -> int:
        """0 when a token was spent, else the ms until there is one again."""
        tokens, at = self.buckets.get(buyer_id, (float(burst), now_ms))
        if now_ms > at:
            tokens = min(burst, tokens + (now_ms - at) * per_s / 1000)
        if tokens < 1:
            self.buckets[buyer_id] = (tokens, now_ms)
            return math.ceil((1 - tokens) * 1000 / per_s) if per_s > 0 else 60_000
        self.buckets[buyer_id] = (tokens - 1, now_ms)
        return 0

    def mark_published(self, order_id: str) -> None:
        self.orders[order_id] = dataclasses.replace(self.orders[order_id], published=True)

    def release_publish_lease(self, order_id: str) -> None:
        self.leases[order_id] = 0

    async def get(self, order_id: str) -> Order | None:
        return self.orders.get(order_id)

    async def claim_intent(
        self,
        order_id: str,
        *,
        intent: Literal["pay", "cancel"],
        allowed_from: Iterable[str],
        payment_ref: str = "",
        amount_cents: int | None = None,
    ) -> IntentResult:
        order = self.orders.get(order_id)
        if order is None:
            return IntentResult("missing", "", "", "")
        if order.intent is not None:
            return IntentResult("held", order.status, order.intent, order.payment_ref or "")
        if order.status not in tuple(allowed_from):
            return IntentResult("not_allowed", order.status, "", "")
        ref = payment_ref if intent == "pay" else order.payment_ref
        self.orders[order_id] = dataclasses.replace(order, intent=intent, payment_ref=ref)
        return IntentResult("claimed", order.status, intent, payment_ref)

    async def transition_many(
        self, requests: Sequence[TransitionRequest], *, now: str
    ) -> list[TransitionResult]:
        self.transition_calls.append(list(requests))
        return [self._transition(request, now) for request in requests]

    def _transition(self, request: TransitionRequest, now: str) -> TransitionResult:
        order = self.orders.get(request.order_id)
        if order is None:
            return TransitionResult("missing", "", 0)
        order = self.add(dataclasses.replace(order, published=True))
        if order.status == request.target:
            return TransitionResult("same", order.status, order.placed_ms)
        if order.status not in tuple(request.allowed_from):
            return TransitionResult("stale", order.status, order.placed_ms)
        fields: dict[str, Any] = dict(request.fields)
        status = cast(OrderStatus, request.target)
        self.add(dataclasses.replace(order, status=status, updated_at=now, **fields))
        return TransitionResult("applied", order.status, order.placed_ms)

    def announce(self, updates: Sequence[OrderUpdate], source: str) -> None:
        self.announced.append(list(updates))


class FakeContexts:
    """OrderContexts: sessions by id, each a status and its listings by sku."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[str, dict[str, Listing]]] = {}

    def add(self, session_id: str, status: str, *listings: Listing) -> None:
        self.sessions[session_id] = (status, {listing.sku: listing for listing in listings})

    async def get(self, session_id: str, sku: str) -> OrderContext:
        session = self.sessions.get(session_id)
        if session is None:
            return OrderContext(None, None, 0.0)
        status, listings = session
        return OrderContext(status, listings.get(sku), 0.0)


class FakeOutbox:
    """Outbox like OrderOutbox: `publish_now` sends the creation event and marks the order
    published, or gives its publish lease back when the send fails; `tally_soon` only
    queues (the background counter is not the use cases' business)."""

    def __init__(
        self, records: FakeOrderRecords, publisher: FakePublisher, topic: str, source: str
    ) -> None:
        self._records = records
        self._publisher = publisher
        self._topic = topic
        self._source = source
        self.soon: list[Order] = []

    async def publish_now(self, order: Order) -> None:
        try:
            await self._publisher.publish(self._topic, order.sku, placed_event(order, self._source))
        except BaseException:
            self._records.release_publish_lease(order.order_id)
            raise
        self._records.mark_published(order.order_id)

    def tally_soon(self, order: Order) -> None:
        self.soon.append(order)


class FakeSessionRecords:
    """SessionRecords of SessionStore, as far as creating and reading go (moves and
    listings are the integration tests' business)."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.announced: list[str] = []

    async def create(self, session: Session) -> None:
        self.sessions[session.session_id] = session

    async def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    async def version(self, session_id: str) -> int:
        session = self.sessions.get(session_id)
        return session.version if session else 0

    async def move(
        self, session_id: str, *, target: str, required: str, time_field: str, now: str
    ) -> MoveResult:
        raise NotImplementedError

    async def add_listing(self, session_id: str, listing: Listing) -> AddListingOutcome:
        raise NotImplementedError

    async def announce_change(self, session_id: str) -> None:
        self.announced.append(session_id)


class FakeSoldOut:
    """The sold-out set: a Container[str] for the fast path and a SoldOutRecord for the
    consumer, keeping apply_stock.lua's version rule (an older or equal version loses; an
    unversioned event loses once a versioned one was recorded)."""

    def __init__(self, *skus: str) -> None:
        self.skus = set(skus)
        self.versions: dict[str, int] = {}
        self.recorded: list[tuple[str, bool, int]] = []  # (sku, sold_out, offset)

    def __contains__(self, sku: object) -> bool:
        return sku in self.skus

    async def record(
        self, sku: str, *, sold_out: bool, partition: int, offset: int, version: int | None
    ) -> bool:
        self.recorded.append((sku, sold_out, offset))
        if version is not None:
            if self.versions.get(sku, -1) >= version:
                return False
            self.versions[sku] = version
        elif sku in self.versions:
            return False
        if sold_out:
            self.skus.add(sku)
        else:
            self.skus.discard(sku)
        return True


# ------------------------------------------------------------------------- inventory


@dataclasses.dataclass
class FakeSku:
    received: int = 0
    available: int = 0
    reserved: int = 0
    sold: int = 0
    version: int = 0
    orders: dict[str, OrderRecord] = dataclasses.field(default_factory=dict)
    buyers: dict[str, int] = dataclasses.field(default_factory=dict)
    lots: dict[str, Lot] = dataclasses.field(default_factory=dict)
    applied: dict[str, int] = dataclasses.field(default_factory=dict)  # topic:partition ->

    @property
    def levels(self) -> StockLevels:
        return StockLevels(self.received, self.available, self.reserved, self.sold, self.version)


class FakeStockLedger:
    """StockLedger after reserve_batch.lua, commit.lua and release.lua: an order decided
    once (a replay answers the stored record with fresh=False), an offset applied once per
    partition, the per-user limit (0: none) before the stock check, FEFO allocation on
    commit, a hold past its deadline expiring on payment or cancel. `now_ms` is the clock."""

    def __init__(self, ttl_ms: int = 900_000) -> None:
        self.now_ms = 1_900_000_000_000
        self.ttl_ms = ttl_ms
        self.skus: dict[str, FakeSku] = {}
        self.calls: list[tuple[str, str, list[str]]] = []  # (method, sku, order_ids)
        self.tracked: list[list[str]] = []
        self.retained: set[str] = set()

    def sku(self, sku: str) -> FakeSku:
        return self.skus.setdefault(sku, FakeSku())

    def receive(
        self,
        sku: str,
        lot_code: str,
        quantity: int,
        *,
        warehouse_id: str = "wh-1",
        expires_on: str | None = None,
    ) -> None:
        """A new lot of `quantity` units."""
        stock = self.sku(sku)
        stock.lots[lot_code] = Lot(lot_code, warehouse_id, quantity, 0, expires_on, None)
        stock.received += quantity
        stock.available += quantity
        stock.version += 1

    async def reserve_batch(
        self, sku: str, orders: Sequence[PlacedOrder], *, topic: str, partition: int
    ) -> ReserveBatchResult:
        self.calls.append(("reserve_batch", sku, [order.order_id for order in orders]))
        stock = self.sku(sku)
        position = f"{topic}:{partition}"
        applied = stock.applied.get(position, -1)
        decisions: list[ReservationDecision] = []
        skipped: list[str] = []
        held = False
        for order in orders:
            stored = stock.orders.get(order.order_id)
            if stored is not None:
                decisions.append(ReservationDecision(stored, order.offset, fresh=False))
            elif order.offset <= applied:
                skipped.append(order.order_id)
            else:
                record = self._decide(stock, order)
                held = held or record.state == "reserved"
                decisions.append(ReservationDecision(record, order.offset, fresh=True))
        if held:
            stock.version += 1
        stock.applied[position] = max([applied, *(order.offset for order in orders)])
        return ReserveBatchResult(stock.levels, decisions, skipped)

    def _decide(self, stock: FakeSku, order: PlacedOrder) -> OrderRecord:
        owned = stock.buyers.get(order.buyer_id, 0)
        limit = order.per_user_limit
        reason: Literal["limit_exceeded", "sold_out"] | None = None
        if limit > 0 and owned + order.quantity > limit:
            reason = "limit_exceeded"
        elif stock.available < order.quantity:
            reason = "sold_out"
        else:
            stock.available -= order.quantity
            stock.reserved += order.quantity
            stock.buyers[order.buyer_id] = owned + order.quantity
        record = OrderRecord(
            order_id=order.order_id,
            state="rejected" if reason else "reserved",
            session_id=order.session_id,
            buyer_id=order.buyer_id,
            quantity=order.quantity,
            total_cents=order.total_cents,
            reason=reason,
            expires_ms=None if reason else self.now_ms + self.ttl_ms,
        )
        stock.orders[order.order_id] = record
        return record

    async def commit(
        self, sku: str, order_id: str, payment_ref: str, *, topic: str, partition: int, offset: int
    ) -> HoldOutcome:
        self.calls.append(("commit", sku, [order_id]))
        stock = self.sku(sku)
        held = self._live_hold(stock, order_id, f"{topic}:{partition}", offset)
        if isinstance(held, HoldOutcome):
            return held
        assert held.expires_ms is not None
        if held.expires_ms <= self.now_ms:
            return self._end_hold(stock, held, "expired")
        allocations = self._allocate(stock, held.quantity)
        stock.reserved -= held.quantity
        stock.sold += held.quantity
        stock.version += 1
        record = dataclasses.replace(
            held,
            state="committed",
            allocations=allocations,
            payment_ref=payment_ref,
            committed_ms=self.now_ms,
        )
        stock.orders[order_id] = record
        return HoldOutcome("committed", True, record, stock.levels)

    async def release(
        self, sku: str, order_id: str, *, topic: str, partition: int, offset: int
    ) -> HoldOutcome:
        self.calls.append(("release", sku, [order_id]))
        stock = self.sku(sku)
        held = self._live_hold(stock, order_id, f"{topic}:{partition}", offset)
        if isinstance(held, HoldOutcome):
            return held
        assert held.expires_ms is not None
        overdue = held.expires_ms <= self.now_ms
        return self._end_hold(stock, held, "expired" if overdue else "released")

    async def track_holds(self, skus: Sequence[str]) -> None:
        self.tracked.append(list(skus))

    async def track_retention(self, skus: Sequence[str]) -> None:
        self.retained.update(skus)

    def _live_hold(
        self, stock: FakeSku, order_id: str, position: str, offset: int
    ) -> OrderRecord | HoldOutcome:
        """The order's record if it holds units and this offset is new (then recorded);
        else the answer that changes nothing."""
        record = stock.orders.get(order_id)
        if record is None:
            return HoldOutcome("unknown", False, None, stock.levels)
        if record.state != "reserved" or offset <= stock.applied.get(position, -1):
            return HoldOutcome(record.state, False, record, stock.levels)
        stock.applied[position] = offset
        return record

    def _end_hold(self, stock: FakeSku, record: OrderRecord, state: OrderState) -> HoldOutcome:
        stock.available += record.quantity
        stock.reserved -= record.quantity
        stock.version += 1
        left = stock.buyers.pop(record.buyer_id, 0) - record.quantity
        if left > 0:
            stock.buyers[record.buyer_id] = left
        ended = stock.orders[record.order_id] = dataclasses.replace(record, state=state)
        return HoldOutcome(state, True, ended, stock.levels)

    def _allocate(self, stock: FakeSku, quantity: int) -> tuple[Allocation, ...]:
        allocations: list[Allocation] = []
        need = quantity
        for lot in sorted(stock.lots.values(), key=fefo_key):
            take = min(need, lot.quantity - lot.allocated)
            if take <= 0:
                continue
            need -= take
            stock.lots[lot.lot_code] = dataclasses.replace(lot, allocated=lot.allocated + take)
            allocations.append(Allocation(lot.lot_code, lot.warehouse_id, take, lot.expires_on))
        assert need == 0, "the lots cannot cover a reservation: the fake's stock is off"
        return tuple(allocations)


class FakeLotJournals:
    """LotJournals after append_journal.lua, over the lots of a FakeStockLedger: an entry
    chained with the real hash (lot_journal.next_entry), appended once per dedup key (a
    known key answers the entry appended then, status `known`); None for a lot the ledger
    does not have. No other writer races it, so the head never moves."""

    def __init__(self, ledger: FakeStockLedger) -> None:
        self._ledger = ledger
        self.entries: dict[tuple[str, str], list[JournalEntry]] = {}
        self.dedup: dict[tuple[str, str], dict[str, int]] = {}

    def of(self, sku: str, lot_code: str) -> list[JournalEntry]:
        return self.entries.get((sku, lot_code), [])

    async def append(
        self,
        sku: str,
        lot_code: str,
        type_: EntryType,
        *,
        at: str,
        data: dict[str, Any],
        dedup_key: str,
    ) -> JournalAppend | None:
        lot = self._ledger.sku(sku).lots.get(lot_code)
        if lot is None:
            return None
        entries = self.entries.setdefault((sku, lot_code), [])
        known = self.dedup.setdefault((sku, lot_code), {})
        if dedup_key in known:
            return JournalAppend("known", entries[known[dedup_key] - 1], head_of(entries), lot)
        entry = next_entry(head_of(entries), type_, at, data)
        entries.append(entry)
        known[dedup_key] = entry.seq
        return JournalAppend("appended", entry, JournalHead(entry.seq, entry.hash), lot)


# -------------------------------------------------------------------------- notifier


class FakeProjection:
    """Projection after apply_projection.lua, as far as it counts: an effect at or below
    the partition's recorded offset, or whose guard member was seen, is skipped; effects
    without ops are not sent. Every call is recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[EventEffect]]] = []
        self.offsets: dict[str, int] = {}
        self.seen: set[tuple[str, str]] = set()

    async def apply(self, topic_partition: str, effects: Sequence[EventEffect]) -> Applied:
        self.calls.append((topic_partition, list(effects)))
        applied = skipped = 0
        last = self.offsets.get(topic_partition, -1)
        for effect in effects:
            if not effect.ops:
                continue
            guard = (effect.guard.key, effect.guard.member) if effect.guard else None
            if effect.offset <= last or guard in self.seen:
                skipped += 1
            else:
                applied += 1
                if guard is not None:
                    self.seen.add(guard)
            self.offsets[topic_partition] = last = max(last, effect.offset)
        return Applied(applied, skipped)


class FakePickQueue:
    """PickQueue after apply_picks.lua: a pick_id opens once; offsets are recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[int, PickRequested]]]] = []
        self.open: dict[str, PickRequested] = {}
        self.offsets: dict[str, int] = {}

    async def open_batch(
        self, topic_partition: str, picks: Sequence[tuple[int, PickRequested]]
    ) -> tuple[int, int]:
        self.calls.append((topic_partition, list(picks)))
        opened = skipped = 0
        last = self.offsets.get(topic_partition, -1)
        for offset, pick in picks:
            if offset > last and pick.pick_id not in self.open:
                self.open[pick.pick_id] = pick
                opened += 1
            else:
                skipped += 1
            last = max(last, offset)
        self.offsets[topic_partition] = last
        return opened, skipped


class FakeCompletionRecords:
    """CompletionRecords of PickStore after complete_pick.lua: the first completion keeps
    its time and author and enters the outbox (scored by `now_ms`); the outbox keeps a
    task until `completion_published`."""

    def __init__(self, *tasks: PickTask) -> None:
        self.tasks: dict[str, PickTask] = {task.pick_id: task for task in tasks}
        self.outbox: dict[str, int] = {}

    async def complete(
        self, task: PickTask, completed_at: str, completed_by: str, now_ms: int
    ) -> PickTask:
        stored = self.tasks[task.pick_id]
        if stored.status == "open":
            stored = self.tasks[task.pick_id] = dataclasses.replace(
                stored, status="done", completed_at=completed_at, completed_by=completed_by
            )
            self.outbox[task.pick_id] = now_ms
        return stored

    async def completion_pending(self, pick_id: str) -> bool:
        return pick_id in self.outbox

    async def completions_pending(self, completed_before_ms: int, limit: int) -> list[PickTask]:
        due = sorted((ms, pick_id) for pick_id, ms in self.outbox.items())
        return [self.tasks[pick_id] for ms, pick_id in due if ms <= completed_before_ms][:limit]

    async def completion_published(self, pick_ids: Sequence[str]) -> None:
        for pick_id in pick_ids:
            self.outbox.pop(pick_id, None)


# ------------------------------------------------- live_orders orders and their outcomes


def an_order(status: OrderStatus = "reserved", **changes: Any) -> Order:
    """An order of 2 units of `crab` at 15.00 in session `s1`, by `buyer-1`, published."""
    buyer_id = changes.pop("buyer_id", "buyer-1")
    order = Order(
        order_id=new_order_id(buyer_id),
        status=status,
        session_id="s1",
        sku="crab",
        buyer_id=buyer_id,
        quantity=2,
        unit_price_cents=1500,
        total_cents=3000,
        per_user_limit=4,
        placed_at="2030-05-01T12:00:00.000Z",
        placed_ms=1_900_000_000_000,
        updated_at="2030-05-01T12:00:00.000Z",
        published=True,
    )
    return dataclasses.replace(order, **changes)


def confirmed(order: Order, expires_at: str = "2030-05-01T12:15:00.000Z") -> ReservationConfirmed:
    return ReservationConfirmed(
        order_id=order.order_id,
        session_id=order.session_id,
        sku=order.sku,
        buyer_id=order.buyer_id,
        quantity=order.quantity,
        total_cents=order.total_cents,
        expires_at=expires_at,
    )


def rejected(order: Order, reason: RejectReason = "sold_out") -> ReservationRejected:
    return ReservationRejected(
        order_id=order.order_id,
        session_id=order.session_id,
        sku=order.sku,
        buyer_id=order.buyer_id,
        quantity=order.quantity,
        reason=reason,
    )


def committed(order: Order, payment_ref: str = "pay-1") -> ReservationCommitted:
    return ReservationCommitted(
        order_id=order.order_id,
        session_id=order.session_id,
        sku=order.sku,
        buyer_id=order.buyer_id,
        quantity=order.quantity,
        total_cents=order.total_cents,
        payment_ref=payment_ref,
        allocations=(LotAllocation("lot-1", "wh-1", order.quantity),),
    )


def released(order: Order) -> ReservationReleased:
    return ReservationReleased(
        order_id=order.order_id,
        session_id=order.session_id,
        sku=order.sku,
        buyer_id=order.buyer_id,
        quantity=order.quantity,
    )


def expired(order: Order) -> ReservationExpired:
    return ReservationExpired(
        order_id=order.order_id,
        session_id=order.session_id,
        sku=order.sku,
        buyer_id=order.buyer_id,
        quantity=order.quantity,
    )
