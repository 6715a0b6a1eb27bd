"""Order use cases: place, read (long-poll), pay, cancel.

live_orders decides only what it can decide alone (is the request valid, is it a replay,
is the buyer over their rate, is the listing on sale, is the SKU known sold out); the
reservation itself is inventory's. Requests record their intent atomically in the order
store (placing: one Lua call for the idempotency key, the rate limit and the order),
publish it to the orders topic, then wait for the outcome to come back through the
inventory consumer and Redis pub/sub (`OrderWaiters`), which hands over the new state.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable
from typing import Literal, Protocol

from services.common.auth import Principal
from services.common.clock import epoch_ms, ms_rfc3339, utc_now
from services.common.events import Envelope, Publisher
from services.common.messages import Message
from services.common.values import value_class
from services.live_orders.domain import (
    CANCELLABLE_FROM,
    FINAL_STATUSES,
    PAYABLE_FROM,
    IntentResult,
    InvalidInput,
    NotFound,
    Order,
    OrderContext,
    OrderStatus,
    Placement,
    RateLimited,
    check_amount,
    check_quantity,
    request_fingerprint,
)
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_events import order_cancelled, order_paid
from services.live_orders.order_waiters import OrderWaiters
from services.live_orders.redis_keys import new_order_id

# How a payment or cancellation ended, for the HTTP layer: done (200), refused because of
# the order's state (409), or sent to inventory with no outcome yet within the wait (202).
Verdict = Literal["done", "refused", "accepted"]


@value_class
class Answer:
    verdict: Verdict
    order: Order


@value_class
class OrderLimits:
    rate_limit_burst: int
    rate_limit_per_s: float


class OrderRecords(Protocol):
    """What the use cases need of the order store (OrderStore in Redis)."""

    async def place(
        self,
        candidate: Order,
        *,
        idempotency_key: str,
        fingerprint: str,
        burst: int,
        per_s: float,
        now_ms: int,
    ) -> Placement: ...

    async def get(self, order_id: str) -> Order | None: ...

    async def claim_intent(
        self,
        order_id: str,
        *,
        intent: Literal["pay", "cancel"],
        allowed_from: Iterable[str],
        payment_ref: str = "",
        amount_cents: int | None = None,
    ) -> IntentResult: ...


class OrderContexts(Protocol):
    """The session's status and the listing of a sku (OrderContextCache)."""

    async def get(self, session_id: str, sku: str) -> OrderContext: ...


class Outbox(Protocol):
    """Accounts for a stored order (OrderOutbox): publishes a pending one's creation event,
    counts a refused one into its session's tally."""

    async def publish_now(self, order: Order) -> None: ...

    def tally_soon(self, order: Order) -> None: ...


def _decided(order: Order) -> bool:
    return order.status != "pending"


def _final(order: Order) -> bool:
    return order.final


def _verdict(order: Order, goal: OrderStatus) -> Verdict:
    """A payment or cancellation that was sent: done once the order reached `goal`,
    refused if it ended otherwise (rejected, expired), accepted while still on its way."""
    if order.status == goal:
        return "done"
    return "refused" if order.final else "accepted"


class OrderService:
    def __init__(
        self,
        *,
        orders: OrderRecords,
        contexts: OrderContexts,
        sold_out: Container[str],
        waiters: OrderWaiters,
        outbox: Outbox,
        publisher: Publisher,
        orders_topic: str,
        source: str,
        limits: OrderLimits,
        metrics: LiveOrdersMetrics,
    ) -> None:
        self._orders = orders
        self._contexts = contexts
        self._sold_out = sold_out
        self._waiters = waiters
        self._outbox = outbox
        self._publisher = publisher
        self._topic = orders_topic
        self._source = source
        self._limits = limits
        self._metrics = metrics

    # ------------------------------------------------------------------------- place

    async def place(
        self,
        *,
        buyer_id: str,
        session_id: str,
        idempotency_key: str,
        sku: str,
        quantity: int,
        wait_s: float,
    ) -> Order:
        """The order this request (or an earlier one with the same key) made, as it is
        after waiting up to `wait_s` for inventory's decision."""
        context = await self._offer(session_id, sku, quantity)
        candidate = self._candidate(
            buyer_id=buyer_id, session_id=session_id, sku=sku, quantity=quantity, context=context
        )
        placement = await self._claim_key(candidate, idempotency_key)
        order = placement.order
        assert order is not None  # _claim_key raised otherwise
        self._count_placement(placement, order)
        if placement.publish and order.status != "pending":
            # Refused here: the buyer's answer does not wait for the count, and the
            # outbox guarantees it (the host counts the attempt, once).
            self._outbox.tally_soon(order)
            return order
        return await self._publish_and_decide(order, placement.publish, wait_s)

    async def _offer(self, session_id: str, sku: str, quantity: int) -> OrderContext:
        """The session and listing the request orders from. Everything that can refuse
        the request without side effects comes first: a refused request claims no key,
        spends no token, stores and publishes nothing."""
        context = await self._contexts.get(session_id, sku)
        if context.session_status is None:
            raise NotFound("no such session")
        if context.listing is None:
            raise InvalidInput(f"sku {sku!r} is not listed in this session")
        check_quantity(context.listing, quantity)
        return context

    async def _claim_key(self, candidate: Order, idempotency_key: str) -> Placement:
        """Spend a token of the buyer's bucket and claim the key for the candidate, or
        find the order an earlier request with the key made (one atomic step)."""
        placement = await self._orders.place(
            candidate,
            idempotency_key=idempotency_key,
            fingerprint=request_fingerprint(
                candidate.session_id, candidate.sku, candidate.quantity
            ),
            burst=self._limits.rate_limit_burst,
            per_s=self._limits.rate_limit_per_s,
            now_ms=candidate.placed_ms,
        )
        if placement.outcome == "limited":
            self._metrics.rate_limited.inc()
            raise RateLimited(max(1, math.ceil(placement.retry_after_ms / 1000)))
        if placement.order is None:
            raise InvalidInput("this Idempotency-Key was already used with a different body")
        return placement

    def _count_placement(self, placement: Placement, order: Order) -> None:
        if placement.created:
            self._metrics.outcome(f"rejected_{order.reason}" if order.reason else "pending").inc()
            if order.reason == "sold_out":
                self._metrics.fast_path_rejections.inc()

    async def _publish_and_decide(self, order: Order, publish: bool, wait_s: float) -> Order:
        """Publish the order's creation event if this request holds the lease, and wait up
        to `wait_s` for inventory's decision (watching first: it can come back before the
        send returns)."""
        with self._waiters.watch(order.order_id) as watch:
            if publish:
                await self._outbox.publish_now(order)
            if order.status == "pending" and wait_s > 0:
                order = (
                    await self._waiters.until(watch, order.order_id, _decided, wait_s, order)
                    or order
                )
        return order

    def _candidate(
        self,
        *,
        buyer_id: str,
        session_id: str,
        sku: str,
        quantity: int,
        context: OrderContext,
    ) -> Order:
        """The order this request makes if its key is new: rejected at once when the
        listing is not on sale or the SKU is known sold out, else pending."""
        listing = context.listing
        assert listing is not None  # _offer checked it
        now = utc_now()
        reason: str | None = None
        if not listing.on_sale(context.session_status or "", now):
            reason = "not_on_sale"
        elif sku in self._sold_out:
            reason = "sold_out"
        placed_ms = epoch_ms()
        placed_at = ms_rfc3339(placed_ms)
        return Order(
            order_id=new_order_id(buyer_id),
            status="rejected" if reason else "pending",
            session_id=session_id,
            sku=sku,
            buyer_id=buyer_id,
            quantity=quantity,
            unit_price_cents=listing.price_cents,
            total_cents=listing.price_cents * quantity,
            per_user_limit=listing.per_user_limit,
            placed_at=placed_at,
            placed_ms=placed_ms,
            updated_at=placed_at,
            reason=reason,
        )

    # -------------------------------------------------------------------------- read

    async def get(self, order_id: str, who: Principal, wait_s: float) -> Order:
        """The order, long-polling while it is pending. Only its buyer and admins see it."""
        order = await self._visible(order_id, who)
        if order.status == "pending" and wait_s > 0:
            order = await self._waiters.wait(order_id, _decided, wait_s) or order
        return order

    async def _visible(self, order_id: str, who: Principal) -> Order:
        order = await self._orders.get(order_id)
        if order is None or (not who.is_admin and order.buyer_id != who.sub):
            raise NotFound("no such order")
        return order

    # ------------------------------------------------------------------- pay, cancel

    async def pay(
        self, order_id: str, *, payment_ref: str, amount_cents: int, wait_s: float
    ) -> Answer:
        order = await self._existing(order_id)
        check_amount(order, amount_cents)
        claim = await self._claim(
            order_id,
            intent="pay",
            allowed_from=PAYABLE_FROM,
            payment_ref=payment_ref,
            amount_cents=amount_cents,
        )
        if claim.outcome == "not_allowed":
            # pending (not reserved yet), or final: the order's status says why.
            return Answer("refused", await self._reread(order))
        if claim.intent != "pay" or claim.payment_ref != payment_ref:
            # Another payment_ref, or a cancellation, got there first.
            return Answer("refused", await self._settle(order_id, wait_s) or order)
        if claim.outcome == "held" and claim.status in FINAL_STATUSES:
            current = await self._reread(order)
            return Answer(_verdict(current, "paid"), current)
        # Ours and not settled: publish (again, if this is a retry after the first
        # attempt died before publishing; inventory commits an order_id at most once).
        event = order_paid(order, payment_ref, amount_cents, self._source)
        settled = await self._send_and_settle(order, event, wait_s)
        return Answer(_verdict(settled, "paid"), settled)

    async def cancel(self, order_id: str, who: Principal, wait_s: float) -> Answer:
        order = await self._visible(order_id, who)
        if order.status == "pending" and not order.published:
            # Its order.placed is still on its way: a cancel sent now could reach
            # inventory before it. The order is answered as it is; the buyer retries.
            return Answer("refused", order)
        claim = await self._claim(order_id, intent="cancel", allowed_from=CANCELLABLE_FROM)
        if claim.outcome == "not_allowed":
            current = await self._reread(order)
            return Answer("done" if current.status == "cancelled" else "refused", current)
        if claim.intent != "cancel":
            # A payment is in flight: it wins; answer with the order as it ends up.
            return Answer("refused", await self._settle(order_id, wait_s) or order)
        # Just claimed, or a retry of a cancellation whose first attempt may have died
        # before publishing (inventory releases an order_id at most once); a settled one
        # is only read back.
        event = order_cancelled(order, self._source) if claim.status not in FINAL_STATUSES else None
        settled = await self._send_and_settle(order, event, wait_s)
        return Answer(_verdict(settled, "cancelled"), settled)

    # ------------------------------------------------------------------------ steps

    async def _existing(self, order_id: str) -> Order:
        order = await self._orders.get(order_id)
        if order is None:
            raise NotFound("no such order")
        return order

    async def _claim(
        self,
        order_id: str,
        *,
        intent: Literal["pay", "cancel"],
        allowed_from: Iterable[str],
        payment_ref: str = "",
        amount_cents: int | None = None,
    ) -> IntentResult:
        """Record the intent on the order, atomically with its state check; the first
        intent recorded wins over any later one."""
        claim = await self._orders.claim_intent(
            order_id,
            intent=intent,
            allowed_from=allowed_from,
            payment_ref=payment_ref,
            amount_cents=amount_cents,
        )
        if claim.outcome == "missing":
            raise NotFound("no such order")
        return claim

    async def _send_and_settle(
        self, order: Order, event: Envelope[Message] | None, wait_s: float
    ) -> Order:
        """Publish `event` (if any) to inventory and wait up to `wait_s` for the order to
        reach a final state; watching starts before the send, since the outcome can come
        back before the send returns."""
        with self._waiters.watch(order.order_id) as watch:
            if event is not None:
                await self._publisher.publish(self._topic, order.sku, event)
            return await self._waiters.until(watch, order.order_id, _final, wait_s) or order

    async def _settle(self, order_id: str, wait_s: float) -> Order | None:
        return await self._waiters.wait(order_id, _final, wait_s)

    async def _reread(self, order: Order) -> Order:
        return await self._orders.get(order.order_id) or order
