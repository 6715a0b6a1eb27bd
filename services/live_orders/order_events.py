"""The events live_orders publishes about an order, built from the order (no I/O).

Each carries a dedup_key of the order: publishing it again (a retried request, the
outbox's sweep after a crash) yields the same event_id, and inventory decides, commits or
releases an order_id at most once.
"""

from __future__ import annotations

from services.common.events import Envelope
from services.common.messages import (
    OrderCancelled,
    OrderFacts,
    OrderPaid,
    OrderPlaced,
)
from services.live_orders.domain import Order


def _facts(order: Order) -> OrderFacts:
    return {
        "order_id": order.order_id,
        "session_id": order.session_id,
        "sku": order.sku,
        "buyer_id": order.buyer_id,
        "quantity": order.quantity,
    }


def placed_event(order: Order, source: str) -> Envelope[OrderPlaced]:
    """`order.placed` for a pending order (orders refused here are counted in tallies,
    order_outbox.py, not published one by one)."""
    placed = OrderPlaced(
        **_facts(order),
        unit_price_cents=order.unit_price_cents,
        total_cents=order.total_cents,
        per_user_limit=order.per_user_limit,
        placed_at=order.placed_at,
    )
    return Envelope.of(placed, source=source, dedup_key=order.order_id)


def order_paid(
    order: Order, payment_ref: str, amount_cents: int, source: str
) -> Envelope[OrderPaid]:
    paid = OrderPaid(
        **_facts(order),
        payment_ref=payment_ref,
        amount_cents=amount_cents,
    )
    return Envelope.of(paid, source=source, dedup_key=order.order_id)


def order_cancelled(order: Order, source: str) -> Envelope[OrderCancelled]:
    cancelled = OrderCancelled(
        **_facts(order),
    )
    return Envelope.of(cancelled, source=source, dedup_key=order.order_id)
