"""The events inventory publishes, built from stored order records (no I/O).

Every outcome of an order is built only from what Redis stored with the decision, and its
event_id is derived from the order (`dedup_key`): publishing it again after a crash or a
replay yields the same event with the same id, which consumers recognise as seen.
"""

from __future__ import annotations

import uuid

from services.common.clock import ms_to_rfc3339
from services.common.events import EVENT_ID_NAMESPACE, Envelope
from services.common.messages import (
    LotAllocation,
    LotUpdated,
    OrderFacts,
    PickRequested,
    ReservationCommitted,
    ReservationConfirmed,
    ReservationExpired,
    ReservationRejected,
    ReservationReleased,
    StockChanged,
)
from services.inventory.domain import Allocation, Lot, OrderRecord, StockLevels, trace_code
from services.inventory.lot_journal import JournalHead


def pick_id(order_id: str, lot_code: str) -> str:
    """One pick task per (order, lot), the same id however often it is re-sent."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"pick:{order_id}:{lot_code}"))


def _facts(sku: str, record: OrderRecord) -> OrderFacts:
    return {
        "order_id": record.order_id,
        "session_id": record.session_id,
        "sku": sku,
        "buyer_id": record.buyer_id,
        "quantity": record.quantity,
    }


def reservation_decided(
    sku: str, record: OrderRecord, source: str
) -> Envelope[ReservationConfirmed | ReservationRejected]:
    """reservation.confirmed or reservation.rejected: the answer to order.placed."""
    if record.reason is None:
        assert record.expires_ms is not None, "a confirmed reservation has a deadline"
        confirmed = ReservationConfirmed(
            **_facts(sku, record),
            total_cents=record.total_cents,
            expires_at=ms_to_rfc3339(record.expires_ms),
        )
        return Envelope.of(confirmed, source=source, dedup_key=record.order_id)
    rejected = ReservationRejected(
        **_facts(sku, record),
        reason=record.reason,
    )
    return Envelope.of(rejected, source=source, dedup_key=record.order_id)


def reservation_committed(
    sku: str, record: OrderRecord, source: str
) -> Envelope[ReservationCommitted]:
    committed = ReservationCommitted(
        **_facts(sku, record),
        total_cents=record.total_cents,
        payment_ref=record.payment_ref or "",
        allocations=tuple(
            LotAllocation(a.lot_code, a.warehouse_id, a.quantity) for a in record.allocations
        ),
    )
    return Envelope.of(committed, source=source, dedup_key=record.order_id)


def pick_requested(
    sku: str, record: OrderRecord, allocation: Allocation, source: str, *, trace_key: bytes
) -> Envelope[PickRequested]:
    task_id = pick_id(record.order_id, allocation.lot_code)
    pick = PickRequested(
        pick_id=task_id,
        order_id=record.order_id,
        session_id=record.session_id,
        sku=sku,
        warehouse_id=allocation.warehouse_id,
        lot_code=allocation.lot_code,
        quantity=allocation.quantity,
        expires_on=allocation.expires_on,
        # The commit time stored with the allocation, so a re-sent task is identical.
        created_at=ms_to_rfc3339(record.committed_ms or 0),
        # A function of the pick_id: the same code on every re-send.
        trace_code=trace_code(trace_key, task_id),
    )
    return Envelope.of(pick, source=source, dedup_key=f"{record.order_id}:{allocation.lot_code}")


def reservation_released(
    sku: str, record: OrderRecord, source: str
) -> Envelope[ReservationReleased]:
    released = ReservationReleased(
        **_facts(sku, record),
    )
    return Envelope.of(released, source=source, dedup_key=record.order_id)


def reservation_expired(sku: str, record: OrderRecord, source: str) -> Envelope[ReservationExpired]:
    expired = ReservationExpired(
        **_facts(sku, record),
    )
    return Envelope.of(expired, source=source, dedup_key=record.order_id)


def stock_changed(sku: str, levels: StockLevels, source: str) -> Envelope[StockChanged]:
    """A snapshot of the sku's counters; a newer one supersedes it, so no dedup id.

    Several publishers (the consumer, the outbox, the lot API, in several processes) may
    land their snapshots in another order than the states they read: `version` (the
    stock hash's, read with the counters) lets consumers drop an older one."""
    changed = StockChanged(
        sku=sku,
        received=levels.received,
        available=levels.available,
        reserved=levels.reserved,
        sold=levels.sold,
        version=levels.version,
    )
    return Envelope.of(changed, source=source)


def lot_updated(sku: str, lot: Lot, head: JournalHead, source: str) -> Envelope[LotUpdated]:
    """A lot as it is after its journal grew; `journal_seq` orders the versions, so like
    stock.changed it is a snapshot (no dedup id) that a newer one supersedes."""
    updated = LotUpdated(
        sku=sku,
        lot_code=lot.lot_code,
        warehouse_id=lot.warehouse_id,
        quantity=lot.quantity,
        allocated=lot.allocated,
        expires_on=lot.expires_on,
        origin=lot.origin,
        producer=lot.producer,
        harvested_on=lot.harvested_on,
        inspection=lot.inspection,
        journal_seq=head.seq,
        journal_head=head.hash,
    )
    return Envelope.of(updated, source=source)
