"""The trace of a box (DESIGN 4.6): what a buyer who scans its label may read. Pure rules,
no I/O.

A trace is assembled from three parts of the notifier's read model, each derived from
events idempotently: the pick task (`pick.requested`: sku, quantity, lot, session, the
paid time; its completion: the picked time), the lot (the newest `lot.updated` by
`journal_seq`: origin, producer, dates, inspection, journal head) and the session
(`session.updated`: title, pavilion). It never carries a buyer id, an order id or a
payment reference: a label travels with the box, to whoever holds it.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import orjson

from services.common.messages import LotUpdated
from services.common.values import value_class
from services.notifier.pick_queue import PickTask

# The shape pick.requested allows (schemas/events/pick.requested.v1.json). Anything else
# is answered like an unknown code, without a lookup.
TRACE_CODE = re.compile(r"[A-Za-z0-9]{16,64}")


def is_trace_code(value: str) -> bool:
    return TRACE_CODE.fullmatch(value) is not None


def lot_field(sku: str, lot_code: str) -> str:
    """The field of a lot in the `lots` hash: unambiguous whatever the two contain."""
    return orjson.dumps([sku, lot_code]).decode()


@value_class
class LotRecord:
    """A lot's trace fields as its newest lot.updated left them."""

    warehouse_id: str
    origin: str | None
    producer: str | None
    harvested_on: str | None
    expires_on: str | None
    inspection: str | None
    journal_seq: int
    journal_head: str

    @classmethod
    def of(cls, event: LotUpdated) -> LotRecord:
        return cls(
            warehouse_id=event.warehouse_id,
            origin=event.origin,
            producer=event.producer,
            harvested_on=event.harvested_on,
            expires_on=event.expires_on,
            inspection=event.inspection,
            journal_seq=event.journal_seq,
            journal_head=event.journal_head,
        )

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> LotRecord:
        return cls(**orjson.loads(raw))


@value_class
class SessionLabel:
    """What a trace shows of the session the box was sold in."""

    title: str | None
    pavilion: str | None


def trace_document(
    task: PickTask, lot: LotRecord | None, session: SessionLabel | None
) -> dict[str, Any]:
    """The trace of one pick task. Lot fields not known yet (no lot.updated seen) are
    null, except the expiry, which the pick task itself carries; `picked_at` is null
    until the task is completed."""
    return {
        "trace_code": task.trace_code,
        "sku": task.sku,
        "quantity": task.quantity,
        "lot": {
            "lot_code": task.lot_code,
            "warehouse_id": task.warehouse_id,
            "origin": lot.origin if lot else None,
            "producer": lot.producer if lot else None,
            "harvested_on": lot.harvested_on if lot else None,
            "expires_on": lot.expires_on if lot else task.expires_on,
            "inspection": lot.inspection if lot else None,
        },
        "session": {
            "session_id": task.session_id,
            "title": session.title if session else None,
            "pavilion": session.pavilion if session else None,
        },
        # The pick task is created when inventory commits the payment.
        "paid_at": task.created_at,
        "picked_at": task.completed_at if task.status == "done" else None,
        "journal_head": lot.journal_head if lot else None,
    }
