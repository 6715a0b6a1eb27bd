"""Pick tasks and waves: pure rules of the warehouse queue, no I/O.

A task is one `pick.requested` (one paid order and one lot). It is `open` until a staff
member completes it. Open tasks of the same SKU and lot form a wave: one trip to the shelf
for all of them. Waves are listed first-expired-first-out, like the lots they pick from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from services.common.messages import PickCompleted
from services.common.values import value_class

PickStatus = Literal["open", "done"]
PICK_STATUSES: frozenset[str] = frozenset({"open", "done"})
DEFAULT_LIST_LIMIT = 500
MAX_LIST_LIMIT = 5000


def wave_id(sku: str, lot_code: str) -> str:
    return f"{sku}/{lot_code}"


@value_class
class PickTask:
    pick_id: str
    order_id: str
    session_id: str
    warehouse_id: str
    sku: str
    lot_code: str
    quantity: int
    expires_on: str | None
    created_at: str
    status: PickStatus
    seq: int
    completed_at: str | None = None
    completed_by: str | None = None
    # The code on the box label (DESIGN 4.6); None for tasks from before traceability.
    trace_code: str | None = None

    @classmethod
    def from_document(
        cls,
        doc: Mapping[str, Any],
        *,
        status: PickStatus,
        seq: int,
        completed_at: str | None = None,
        completed_by: str | None = None,
    ) -> PickTask:
        return cls(
            pick_id=str(doc["pick_id"]),
            order_id=str(doc["order_id"]),
            session_id=str(doc["session_id"]),
            warehouse_id=str(doc["warehouse_id"]),
            sku=str(doc["sku"]),
            lot_code=str(doc["lot_code"]),
            quantity=int(doc["quantity"]),
            expires_on=doc.get("expires_on"),
            created_at=str(doc["created_at"]),
            status=status,
            seq=seq,
            completed_at=completed_at,
            completed_by=completed_by,
            trace_code=doc.get("trace_code"),
        )

    @property
    def wave(self) -> str:
        return wave_id(self.sku, self.lot_code)

    def fields(self) -> dict[str, Any]:
        return {
            "pick_id": self.pick_id,
            "order_id": self.order_id,
            "warehouse_id": self.warehouse_id,
            "sku": self.sku,
            "quantity": self.quantity,
            "lot_code": self.lot_code,
            "created_at": self.created_at,
            "trace_code": self.trace_code,
            # Additive, optional fields beside the contract's.
            "expires_on": self.expires_on,
            "session_id": self.session_id,
            "wave": self.wave,
        }

    def frame(self) -> dict[str, Any]:
        """The push frame of an open task (DESIGN 4.5)."""
        return {"type": "pick", **self.fields()}

    def listing(self) -> dict[str, Any]:
        """The task as the list endpoint and the completion answer show it."""
        return {
            **self.fields(),
            "status": self.status,
            "completed_at": self.completed_at,
            "completed_by": self.completed_by,
        }

    def completion(self) -> PickCompleted | None:
        """The pick.completed of a done task (None while it is open)."""
        if self.status != "done" or self.completed_at is None:
            return None
        return PickCompleted(
            pick_id=self.pick_id,
            order_id=self.order_id,
            sku=self.sku,
            warehouse_id=self.warehouse_id,
            lot_code=self.lot_code,
            quantity=self.quantity,
            trace_code=self.trace_code,
            completed_at=self.completed_at,
            completed_by=self.completed_by or "",
        )


@value_class
class Wave:
    wave_id: str
    sku: str
    lot_code: str
    expires_on: str | None
    warehouse_id: str
    picks: tuple[PickTask, ...]

    @property
    def quantity(self) -> int:
        return sum(task.quantity for task in self.picks)

    def document(self) -> dict[str, Any]:
        return {
            "wave_id": self.wave_id,
            "sku": self.sku,
            "lot_code": self.lot_code,
            "expires_on": self.expires_on,
            "warehouse_id": self.warehouse_id,
            "quantity": self.quantity,
            "pick_count": len(self.picks),
            "picks": [task.listing() for task in self.picks],
        }


def group_waves(tasks: Iterable[PickTask]) -> list[Wave]:
    """Open tasks grouped by (sku, lot), soonest expiry first (lots without one last),
    then the wave waiting longest; tasks inside a wave in arrival order."""
    groups: dict[tuple[str, str], list[PickTask]] = {}
    for task in tasks:
        groups.setdefault((task.sku, task.lot_code), []).append(task)
    waves = [
        Wave(
            wave_id=wave_id(sku, lot),
            sku=sku,
            lot_code=lot,
            expires_on=members[0].expires_on,
            warehouse_id=members[0].warehouse_id,
            picks=tuple(sorted(members, key=lambda task: task.seq)),
        )
        for (sku, lot), members in groups.items()
    ]
    return sorted(
        waves,
        key=lambda wave: (
            wave.expires_on is None,
            wave.expires_on or "",
            wave.picks[0].seq,
        ),
    )


def parse_list_query(query: Mapping[str, str]) -> tuple[PickStatus, int, int]:
    """(status, limit, after) of `?status=open|done&limit=N&after=CURSOR`; ValueError
    says what is wrong. The cursor is the sequence number of the last task listed."""
    status = query.get("status", "open")
    if status not in PICK_STATUSES:
        raise ValueError("status must be open or done")
    try:
        limit = int(query.get("limit", DEFAULT_LIST_LIMIT))
    except ValueError:
        raise ValueError("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    raw_after = query.get("after")
    after = 0
    if raw_after:
        try:
            after = int(raw_after)
        except ValueError:
            raise ValueError("after must be a cursor returned as next") from None
        if after < 0:
            raise ValueError("after must be a cursor returned as next")
    return ("open" if status == "open" else "done"), limit, after
