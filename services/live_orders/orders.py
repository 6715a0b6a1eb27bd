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
from dataclasses import dataclass
from typing import Literal

from services.common.auth import Principal
from services.common.clock import epoch_ms, to_rfc3339, utc_now
from services.common.events import Envelope
from services.common.kafka_producer import EventPublisher
from services.live_orders.domain import (
    CANCELLABLE_FROM,
    FINAL_STATUSES,
    PAYABLE_FROM,
    InvalidInput,
    Listing,
    NotFound,
    Order,
    RateLimited,
    check_quantity,
    request_fingerprint,
)
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_context import OrderContext, OrderContextCache
from services.live_orders.order_outbox import OrderOutbox
from services.live_orders.order_store import OrderStore
from services.live_orders.order_waiters import OrderWaiters
from services.live_orders.redis_keys import new_order_id
from services.live_orders.sold_out import SoldOutSkus

# How a payment or cancellation ended, for the HTTP layer: done (200), refused because of
# the order's state (409), or sent to inventory with no outcome yet within the wait (202).
Verdict = Literal["done", "refused", "accepted"]


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict
    order: Order


@dataclass(frozen=True, slots=True)
class OrderLimits:
    rate_limit_burst: int
    rate_limit_per_s: float


def _decided(order: Order) -> bool:
    return order.status != "pending"


def _final(order: Order) -> bool:
    return order.final


class OrderService:
    def __init__(
        self,
        *,
        orders: OrderStore,
        contexts: OrderContextCache,
        sold_out: SoldOutSkus,
        waiters: OrderWaiters,
        outbox: OrderOutbox,
        publisher: EventPublisher,
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
        # Everything that can refuse the request without side effects comes first: a
        # refused request claims no key, spends no token, stores and publishes nothing.
        context = await self._contexts.get(session_id, sku)
        if context.session_status is None:
            raise NotFound("no such session")
        listing = context.listing
        if listing is None:
            raise InvalidInput(f"sku {sku!r} is not listed in this session")
        check_quantity(listing, quantity)

        candidate = self._candidate(
            buyer_id=buyer_id,
            session_id=session_id,
            sku=sku,
            quantity=quantity,
            listing=listing,
            context=context,
        )
        placement = await self._orders.place(
            candidate,
            idempotency_key=idempotency_key,
            fingerprint=request_fingerprint(session_id, sku, quantity),
            burst=self._limits.rate_limit_burst,
            per_s=self._limits.rate_limit_per_s,
            now_ms=candidate.placed_ms,
        )
        if placement.outcome == "limited":
            self._metrics.rate_limited.inc()
            raise RateLimited(max(1, math.ceil(placement.retry_after_ms / 1000)))
        if placement.order is None:
            raise InvalidInput("this Idempotency-Key was already used with a different body")

        # Claimed now, or a replay (then the order as the first request stored it).
        order = placement.order
        if placement.created:
            self._metrics.outcome(f"rejected_{order.reason}" if order.reason else "pending").inc()
            if order.reason == "sold_out":
                self._metrics.fast_path_rejections.inc()
        if placement.publish and order.status != "pending":
            # Refused here: the buyer's answer does not wait for the broker, and the
            # outbox guarantees the event (the host counts the attempt).
            self._outbox.publish_soon(order)
            return order
        # Watch before publishing: the decision can come back before the send returns.
        with self._waiters.watch(order.order_id) as watch:
            if placement.publish:
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
        listing: Listing,
        context: OrderContext,
    ) -> Order:
        """The order this request makes if its key is new: rejected at once when the
        listing is not on sale or the SKU is known sold out, else pending."""
        now = utc_now()
        reason: str | None = None
        if not listing.on_sale(context.session_status or "", now):
            reason = "not_on_sale"
        elif sku in self._sold_out:
            reason = "sold_out"
        placed_at = to_rfc3339(now)
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
            placed_ms=epoch_ms(),
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
        order = await self._orders.get(order_id)
        if order is None:
            raise NotFound("no such order")
        if amount_cents != order.total_cents:
            raise InvalidInput(
                f"amount_cents {amount_cents} does not match the order's total_cents "
                f"{order.total_cents}"
            )
        claim = await self._orders.claim_intent(
            order_id,
            intent="pay",
            allowed_from=PAYABLE_FROM,
            payment_ref=payment_ref,
            amount_cents=amount_cents,
        )
        if claim.outcome == "missing":
            raise NotFound("no such order")
        if claim.outcome == "not_allowed":
            # pending (not reserved yet), or final: the order's status says why.
            return Answer("refused", await self._reread(order))
        ours = claim.intent == "pay" and claim.payment_ref == payment_ref
        if not ours:
            # Another payment_ref, or a cancellation, got there first: refused, with the
            # order as it ends up.
            return Answer("refused", await self._settle(order_id, wait_s) or order)
        if claim.outcome == "held" and claim.status in FINAL_STATUSES:
            current = await self._reread(order)
            return Answer("done" if current.status == "paid" else "refused", current)
        # Ours and not settled: publish (again, if this is a retry after the first
        # attempt died before publishing; inventory commits an order_id at most once).
        with self._waiters.watch(order_id) as watch:
            await self._publisher.publish(
                self._topic,
                order.sku,
                Envelope.create(
                    "order.paid",
                    {
                        "order_id": order.order_id,
                        "session_id": order.session_id,
                        "sku": order.sku,
                        "buyer_id": order.buyer_id,
                        "quantity": order.quantity,
                        "payment_ref": payment_ref,
                        "amount_cents": amount_cents,
                    },
                    source=self._source,
                    dedup_key=order.order_id,
                ),
            )
            settled = await self._waiters.until(watch, order_id, _final, wait_s) or order
        if settled.status == "paid":
            return Answer("done", settled)
        if settled.final:
            return Answer("refused", settled)  # expired before the payment arrived
        return Answer("accepted", settled)

    async def cancel(self, order_id: str, who: Principal, wait_s: float) -> Answer:
        order = await self._visible(order_id, who)
        if order.status == "pending" and not order.published:
            # Its order.placed is still on its way: a cancel sent now could reach
            # inventory before it. The order is answered as it is; the buyer retries.
            return Answer("refused", order)
        claim = await self._orders.claim_intent(
            order_id, intent="cancel", allowed_from=CANCELLABLE_FROM
        )
        if claim.outcome == "missing":
            raise NotFound("no such order")
        if claim.outcome == "not_allowed":
            current = await self._reread(order)
            return Answer("done" if current.status == "cancelled" else "refused", current)
        if claim.intent != "cancel":
            # A payment is in flight: it wins; answer with the order as it ends up.
            return Answer("refused", await self._settle(order_id, wait_s) or order)
        with self._waiters.watch(order_id) as watch:
            if claim.status not in FINAL_STATUSES:
                # Just claimed, or a retry of a cancellation whose first attempt may have
                # died before publishing: inventory releases an order_id at most once.
                await self._publisher.publish(
                    self._topic,
                    order.sku,
                    Envelope.create(
                        "order.cancelled",
                        {
                            "order_id": order.order_id,
                            "session_id": order.session_id,
                            "sku": order.sku,
                            "buyer_id": order.buyer_id,
                            "quantity": order.quantity,
                        },
                        source=self._source,
                        dedup_key=order.order_id,
                    ),
                )
            settled = await self._waiters.until(watch, order_id, _final, wait_s) or order
        if settled.status == "cancelled":
            return Answer("done", settled)
        if settled.final:
            return Answer("refused", settled)  # rejected or expired meanwhile
        return Answer("accepted", settled)

    async def _settle(self, order_id: str, wait_s: float) -> Order | None:
        return await self._waiters.wait(order_id, _final, wait_s)

    async def _reread(self, order: Order) -> Order:
        return await self._orders.get(order.order_id) or order
