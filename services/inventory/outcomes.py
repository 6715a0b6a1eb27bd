"""The events inventory publishes, built from stored order records (no I/O).

Every outcome of an order is built only from what Redis stored with the decision, and its
event_id is derived from the order (`dedup_key`): publishing it again after a crash or a
replay yields the same event with the same id, which consumers recognise as seen.
"""

from __future__ import annotations

import uuid

from services.common.clock import ms_to_rfc3339
from services.common.event_types import (
    PickRequested,
    ReservationCommitted,
    ReservationConfirmed,
    ReservationExpired,
    ReservationRejected,
    ReservationReleased,
    StockChanged,
)
from services.common.events import EVENT_ID_NAMESPACE, Envelope
from services.inventory.domain import Allocation, OrderRecord, StockLevels


def pick_id(order_id: str, lot_code: str) -> str:
    """One pick task per (order, lot), the same id however often it is re-sent."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"pick:{order_id}:{lot_code}"))


def reservation_decided(sku: str, record: OrderRecord, source: str) -> Envelope:
    """reservation.confirmed or reservation.rejected: the answer to order.placed."""
    if record.reason is None:
        assert record.expires_ms is not None, "a confirmed reservation has a deadline"
        confirmed: ReservationConfirmed = {
            "order_id": record.order_id,
            "session_id": record.session_id,
            "sku": sku,
            "buyer_id": record.buyer_id,
            "quantity": record.quantity,
            "total_cents": record.total_cents,
            "expires_at": ms_to_rfc3339(record.expires_ms),
        }
        return Envelope.create(
            "reservation.confirmed", confirmed, source=source, dedup_key=record.order_id
        )
    rejected: ReservationRejected = {
        "order_id": record.order_id,
        "session_id": record.session_id,
        "sku": sku,
        "buyer_id": record.buyer_id,
        "quantity": record.quantity,
        "reason": record.reason,
    }
    return Envelope.create(
        "reservation.rejected", rejected, source=source, dedup_key=record.order_id
    )


def reservation_committed(sku: str, record: OrderRecord, source: str) -> Envelope:
    data: ReservationCommitted = {
        "order_id": record.order_id,
        "session_id": record.session_id,
        "sku": sku,
        "buyer_id": record.buyer_id,
        "quantity": record.quantity,
        "total_cents": record.total_cents,
        "payment_ref": record.payment_ref or "",
        "allocations": [
            {"lot_code": a.lot_code, "warehouse_id": a.warehouse_id, "quantity": a.quantity}
            for a in record.allocations
        ],
    }
    return Envelope.create("reservation.committed", data, source=source, dedup_key=record.order_id)


def pick_requested(sku: str, record: OrderRecord, allocation: Allocation, source: str) -> Envelope:
    data: PickRequested = {
        "pick_id": pick_id(record.order_id, allocation.lot_code),
        "order_id": record.order_id,
        "session_id": record.session_id,
        "sku": sku,
        "warehouse_id": allocation.warehouse_id,
        "lot_code": allocation.lot_code,
        "quantity": allocation.quantity,
        "expires_on": allocation.expires_on,
        # The commit time stored with the allocation, so a re-sent task is identical.
        "created_at": ms_to_rfc3339(record.committed_ms or 0),
    }
    return Envelope.create(
        "pick.requested",
        data,
        source=source,
        dedup_key=f"{record.order_id}:{allocation.lot_code}",
    )


def reservation_released(sku: str, record: OrderRecord, source: str) -> Envelope:
    data: ReservationReleased = {
        "order_id": record.order_id,
        "session_id": record.session_id,
        "sku": sku,
        "buyer_id": record.buyer_id,
        "quantity": record.quantity,
    }
    return Envelope.create("reservation.released", data, source=source, dedup_key=record.order_id)


def reservation_expired(sku: str, record: OrderRecord, source: str) -> Envelope:
    data: ReservationExpired = {
        "order_id": record.order_id,
        "session_id": record.session_id,
        "sku": sku,
        "buyer_id": record.buyer_id,
        "quantity": record.quantity,
    }
    return Envelope.create("reservation.expired", data, source=source, dedup_key=record.order_id)


def stock_changed(sku: str, levels: StockLevels, source: str) -> Envelope:
    """A snapshot of the sku's counters; a newer one supersedes it, so no dedup id.

    Several publishers (the consumer, the outbox, the lot API, in several processes) may
    land their snapshots in another order than the states they read: `version` (the
    stock hash's, read with the counters) lets consumers drop an older one."""
    data: StockChanged = {
        "sku": sku,
        "received": levels.received,
        "available": levels.available,
        "reserved": levels.reserved,
        "sold": levels.sold,
        "version": levels.version,
    }
    return Envelope.create("stock.changed", data, source=source)
