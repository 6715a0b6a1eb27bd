"""Orders as live_orders' store tests build them."""

from __future__ import annotations

from services.live_orders.domain import Order


def an_order(order_id: str, status: str = "pending", buyer_id: str = "b1") -> Order:
    return Order(
        order_id=order_id,
        status=status,  # type: ignore[arg-type]
        session_id="s1",
        sku="crab",
        buyer_id=buyer_id,
        quantity=1,
        unit_price_cents=100,
        total_cents=100,
        per_user_limit=2,
        placed_at="2030-01-01T00:00:00.000Z",
        placed_ms=1,
        updated_at="2030-01-01T00:00:00.000Z",
        reason="sold_out" if status == "rejected" else None,
    )
