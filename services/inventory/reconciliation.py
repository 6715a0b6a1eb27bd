"""What the Kafka log says stock and orders should be, and where the stores disagree.

Pure (no I/O): `recompute` folds the decoded events of the `orders`, `inventory` and
`picks` topics into the expected state of every sku and order; `compare` sets that beside
what inventory's Redis and live_orders' order store hold and lists the differences.
`services.inventory.reconcile` reads the log and the stores and prints the table.

What the log says:
- an sku's `received` is the sum of its lots' `quantity` in each lot's newest `lot.updated`
  (highest `journal_seq`); an sku with no lot events takes `received` from its newest
  `stock.changed` (highest `version`); with neither, the log does not know it;
- an order's state is its furthest outcome: `reservation.committed`, `.released` or
  `.expired` end a hold, `reservation.confirmed` holds it, `reservation.rejected` refuses
  it; `order.placed` alone is an order inventory has not decided (yet). The furthest, not
  the last in the log: a replay after a crash publishes the stored decision again (a
  `reservation.confirmed` after the order's `reservation.committed`, same event id);
- `reserved` and `sold` are the units of the orders held and committed; `available` is
  what is left of `received`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from services.common.consumed import ConsumedEvent
from services.common.messages import (
    LotUpdated,
    Message,
    OrderCancelled,
    OrderMessage,
    OrderPaid,
    OrderPlaced,
    OrderRejected,
    ReservationCommitted,
    ReservationConfirmed,
    ReservationExpired,
    ReservationRejected,
    ReservationReleased,
    StockChanged,
)
from services.inventory.domain import OrderRecord, OrderState, StockLevels

# An order as the log tells it: inventory's states, `undecided` (placed, no outcome yet) and
# `refused` (rejected by live_orders itself: order.rejected, never seen by inventory).
LogOrderState = OrderState | Literal["undecided", "refused"]

# The live_orders status each log state means (DESIGN 4.3).
LIVE_ORDERS_STATUS: dict[LogOrderState, str] = {
    "undecided": "pending",
    "reserved": "reserved",
    "rejected": "rejected",
    "refused": "rejected",
    "committed": "paid",
    "released": "cancelled",
    "expired": "expired",
}

# The state each outcome leads to.
_OUTCOME_STATE: dict[type[Message], OrderState] = {
    ReservationConfirmed: "reserved",
    ReservationRejected: "rejected",
    ReservationCommitted: "committed",
    ReservationReleased: "released",
    ReservationExpired: "expired",
}

Store = Literal["inventory", "live_orders"]


@dataclass
class LoggedOrder:
    order_id: str
    sku: str
    buyer_id: str
    quantity: int
    state: LogOrderState = "undecided"
    # Every outcome seen: two of one rank that differ (committed and
    # expired, confirmed and rejected) mean the log contradicts itself.
    outcomes: set[OrderState] = field(default_factory=set)
    placed: bool = False

    @property
    def contradictions(self) -> list[str]:
        ends = sorted(s for s in self.outcomes if _rank(s) == 2)
        decisions = sorted(s for s in self.outcomes if _rank(s) == 1)
        return [" and ".join(group) for group in (ends, decisions) if len(group) > 1]


def _rank(state: LogOrderState) -> int:
    """How far along the state machine: 0 nothing decided, 1 decided, 2 hold ended."""
    if state in ("undecided", "refused"):
        return 0
    return 2 if state in ("committed", "released", "expired") else 1


@dataclass(frozen=True, slots=True)
class ExpectedStock:
    sku: str
    received: int | None  # None: no lot.updated nor stock.changed for this sku
    reserved: int
    sold: int
    # lot_code -> quantity (the lot's total received) in its newest lot.updated
    lots: Mapping[str, int] = field(default_factory=dict)

    @property
    def available(self) -> int | None:
        return None if self.received is None else self.received - self.reserved - self.sold


@dataclass
class LogState:
    """What the log says, per sku and per order."""

    skus: dict[str, ExpectedStock]
    orders: dict[str, LoggedOrder]
    # order events per sku in log order (per partition by offset): what --repair replays.
    sku_events: dict[str, list[ConsumedEvent[Message]]]


def recompute(events: Iterable[ConsumedEvent[Message]]) -> LogState:
    """Fold the decoded events (each topic partition in offset order) into the state the
    log implies. Events of other classes (sessions, picks, dead letters) are passed over."""
    orders: dict[str, LoggedOrder] = {}
    lots: dict[tuple[str, str], tuple[int, int]] = {}  # (sku, lot) -> (journal_seq, qty)
    stock: dict[str, tuple[int, int]] = {}  # sku -> (version, received)
    sku_events: dict[str, list[ConsumedEvent[Message]]] = {}
    skus: set[str] = set()
    for position, event in enumerate(events):
        message = event.message
        if isinstance(message, LotUpdated):
            skus.add(message.sku)
            key = (message.sku, message.lot_code)
            if key not in lots or message.journal_seq >= lots[key][0]:
                lots[key] = (message.journal_seq, message.quantity)
        elif isinstance(message, StockChanged):
            skus.add(message.sku)
            # Events from before versions existed are ordered by their place in the log.
            version = message.version if message.version is not None else position
            if message.sku not in stock or version >= stock[message.sku][0]:
                stock[message.sku] = (version, message.received)
        elif isinstance(message, OrderMessage):
            skus.add(message.sku)
            order = orders.get(message.order_id)
            if order is None:
                order = LoggedOrder(
                    message.order_id, message.sku, message.buyer_id, message.quantity
                )
                orders[message.order_id] = order
            _apply(order, message)
            if isinstance(message, OrderPlaced | OrderPaid | OrderCancelled):
                sku_events.setdefault(message.sku, []).append(event)

    received: dict[str, int] = {}
    lot_quantities: dict[str, dict[str, int]] = {}
    for (sku, lot_code), (_seq, quantity) in lots.items():
        received[sku] = received.get(sku, 0) + quantity
        lot_quantities.setdefault(sku, {})[lot_code] = quantity
    for sku, (_version, counted) in stock.items():
        received.setdefault(sku, counted)
    units: dict[tuple[str, LogOrderState], int] = {}
    for order in orders.values():
        units[order.sku, order.state] = units.get((order.sku, order.state), 0) + order.quantity
    expected = {
        sku: ExpectedStock(
            sku,
            received.get(sku),
            reserved=units.get((sku, "reserved"), 0),
            sold=units.get((sku, "committed"), 0),
            lots=lot_quantities.get(sku, {}),
        )
        for sku in sorted(skus)
    }
    return LogState(expected, orders, sku_events)


def _apply(order: LoggedOrder, message: OrderMessage) -> None:
    if isinstance(message, OrderPlaced | OrderPaid | OrderCancelled):
        order.placed = order.placed or isinstance(message, OrderPlaced)
        return
    if isinstance(message, OrderRejected):
        if not order.outcomes:
            order.state = "refused"
        return
    state = _OUTCOME_STATE.get(type(message))
    if state is None:
        return
    order.outcomes.add(state)
    # The furthest outcome wins; among equals the first stays (a contradiction is reported).
    if _rank(state) > _rank(order.state):
        order.state = state


@dataclass(frozen=True, slots=True)
class Observed:
    """What the stores hold for the skus and orders of the log."""

    levels: Mapping[str, StockLevels]
    # sku -> lot_code -> quantity, from StockStore.sku_view
    lots: Mapping[str, Mapping[str, int]]
    records: Mapping[str, OrderRecord | None]
    # live_orders' status per order (None: no such order); None: store not compared.
    statuses: Mapping[str, str | None] | None = None


@dataclass(frozen=True, slots=True)
class Difference:
    subject: str  # "sku <sku>" or "order <order_id>"
    field: str
    log: str
    store: str
    where: Store
    # --repair can fix it by re-applying the log through inventory's scripts (and
    # re-publishing the outcomes they answer); otherwise it is only reported.
    repairable: bool


def compare(log: LogState, observed: Observed) -> list[Difference]:
    """Every place the stores disagree with the log, skus first, then orders by id."""
    differences: list[Difference] = []
    for sku, expected in log.skus.items():
        differences += _compare_stock(
            sku, expected, observed.levels.get(sku), observed.lots.get(sku, {})
        )
    for order_id in sorted(log.orders):
        order = log.orders[order_id]
        differences += _compare_order(order, observed.records.get(order_id))
        if observed.statuses is not None:
            status = observed.statuses.get(order_id)
            wanted = LIVE_ORDERS_STATUS[order.state]
            if status != wanted:
                differences.append(
                    Difference(
                        f"order {order_id}",
                        "live_orders status",
                        wanted,
                        status or "(none)",
                        "live_orders",
                        # Re-published outcomes move a lagging order forward; an order
                        # live_orders does not have, or has ahead of the log, stays.
                        repairable=status is not None and order.state != "refused",
                    )
                )
    return differences


def _compare_stock(
    sku: str, expected: ExpectedStock, levels: StockLevels | None, lots: Mapping[str, int]
) -> list[Difference]:
    subject = f"sku {sku}"
    seen = levels or StockLevels(0, 0, 0, 0)
    rows: list[Difference] = []
    pairs: list[tuple[str, int | None, int]] = [
        ("received", expected.received, seen.received),
        ("available", expected.available, seen.available),
        ("reserved", expected.reserved, seen.reserved),
        ("sold", expected.sold, seen.sold),
    ]
    for name, wanted, actual in pairs:
        if wanted is not None and wanted != actual:
            # Receipts come from lot PUTs, which the log only announces: never replayed.
            rows.append(
                Difference(subject, name, str(wanted), str(actual), "inventory", name != "received")
            )
    for lot_code, quantity in sorted(expected.lots.items()):
        stored = lots.get(lot_code)
        if stored != quantity:
            rows.append(
                Difference(
                    subject,
                    f"lot {lot_code} quantity",
                    str(quantity),
                    "(none)" if stored is None else str(stored),
                    "inventory",
                    repairable=False,
                )
            )
    if not seen.consistent:
        rows.append(
            Difference(
                subject,
                "available+reserved+sold",
                f"== received ({seen.received})",
                str(seen.available + seen.reserved + seen.sold),
                "inventory",
                repairable=False,
            )
        )
    return rows


def _compare_order(order: LoggedOrder, record: OrderRecord | None) -> list[Difference]:
    subject = f"order {order.order_id}"
    rows = [
        Difference(subject, "log outcomes", contradiction, "-", "inventory", repairable=False)
        for contradiction in order.contradictions
    ]
    if order.state == "refused":
        # live_orders refused it alone: inventory must not know it.
        if record is not None:
            rows.append(Difference(subject, "state", "(none)", record.state, "inventory", False))
        return rows
    stored = record.state if record is not None else "(none)"
    if order.state == "undecided":
        # Placed but no outcome in the log: inventory never decided it, or decided it and
        # the outcome was never published. Re-applying order.placed decides it, or answers
        # (and re-publishes) the stored decision.
        rows.append(Difference(subject, "state", "undecided", stored, "inventory", order.placed))
    elif stored != order.state:
        rows.append(
            Difference(
                subject,
                "state",
                order.state,
                stored,
                "inventory",
                repairable=order.placed and _behind(record, order.state),
            )
        )
    return rows


def _behind(record: OrderRecord | None, wanted: OrderState) -> bool:
    """Re-applying the log moves a record forward only: from nothing, or from a live hold
    to its end."""
    return record is None or (record.state == "reserved" and _rank(wanted) == 2)


def render_table(differences: Iterable[Difference]) -> str:
    """The differences as a fixed-width text table (header included)."""
    header = ("SKU/order", "field", "log says", "Redis says", "store", "repair")
    rows = [header] + [
        (d.subject, d.field, d.log, d.store, d.where, "yes" if d.repairable else "report")
        for d in differences
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)
