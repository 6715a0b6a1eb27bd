"""The reconciliation's pure part: what the log says (recompute) and where the stores
disagree with it (compare), with no Kafka or Redis."""

from __future__ import annotations

from collections.abc import Mapping

from services.common.consumed import ConsumedEvent
from services.common.events import Envelope
from services.common.messages import (
    LotAllocation,
    LotUpdated,
    Message,
    OrderCancelled,
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
from services.inventory.reconciliation import (
    Difference,
    LogState,
    Observed,
    compare,
    recompute,
    render_table,
)

SKU = "crab"


class Log:
    """Events as the reader hands them over: each topic's offsets counted up."""

    def __init__(self) -> None:
        self.events: list[ConsumedEvent[Message]] = []
        self._next: dict[str, int] = {}

    def add(self, topic: str, *messages: Message) -> Log:
        for message in messages:
            offset = self._next.get(topic, 0)
            self._next[topic] = offset + 1
            self.events.append(
                ConsumedEvent(topic, 0, offset, None, Envelope.of(message, source="t"), 0)
            )
        return self

    def orders(self, *messages: Message) -> Log:
        return self.add("orders", *messages)

    def outcomes(self, *messages: Message) -> Log:
        return self.add("inventory", *messages)

    def state(self) -> LogState:
        return recompute(self.events)


def lot(quantity: int, seq: int, code: str = "L1", sku: str = SKU) -> LotUpdated:
    return LotUpdated(sku, code, "wh-1", quantity, 0, None, None, None, None, None, seq, "0" * 64)


def placed(order_id: str, quantity: int = 1, sku: str = SKU) -> OrderPlaced:
    return OrderPlaced(order_id, "s1", sku, f"b-{order_id}", quantity, 100, 100 * quantity, 2, "")


def confirmed(order_id: str, quantity: int = 1) -> ReservationConfirmed:
    return ReservationConfirmed(order_id, "s1", SKU, f"b-{order_id}", quantity, 100, "")


def committed(order_id: str, quantity: int = 1) -> ReservationCommitted:
    allocation = (LotAllocation("L1", "wh-1", quantity),)
    return ReservationCommitted(
        order_id, "s1", SKU, f"b-{order_id}", quantity, 100, "pay", allocation
    )


def facts(order_id: str, quantity: int = 1) -> tuple[str, str, str, str, int]:
    return order_id, "s1", SKU, f"b-{order_id}", quantity


def record(order_id: str, state: OrderState, quantity: int = 1) -> OrderRecord:
    reason = "sold_out" if state == "rejected" else None
    return OrderRecord(order_id, state, "s1", f"b-{order_id}", quantity, 100, reason, 0)


def levels(received: int, available: int, reserved: int, sold: int) -> StockLevels:
    return StockLevels(received, available, reserved, sold)


def test_stock_and_states_follow_the_furthest_outcome_of_each_order() -> None:
    log = (
        Log()
        .add("inventory", lot(10, 1), lot(8, 2), lot(5, 1, code="L2"))
        .orders(placed("o1", 2), placed("o2"), placed("o3"), placed("o4", 3), placed("o5"))
        .outcomes(
            confirmed("o1", 2),
            confirmed("o2"),
            confirmed("o3"),
            confirmed("o4", 3),
            ReservationRejected(*facts("o5"), reason="sold_out"),
        )
        .orders(OrderPaid(*facts("o1", 2), "pay", 200), OrderCancelled(*facts("o2")))
        .outcomes(
            committed("o1", 2),
            ReservationReleased(*facts("o2")),
            ReservationExpired(*facts("o3")),
            # A replay after a crash re-publishes the stored decision after its end.
            confirmed("o1", 2),
        )
    )
    state = log.state()

    # received: the newest lot.updated of each lot (seq 2 of L1: 8) + L2's 5.
    stock = state.skus[SKU]
    assert (stock.received, stock.available, stock.reserved, stock.sold) == (13, 8, 3, 2)
    assert stock.lots == {"L1": 8, "L2": 5}
    assert {oid: o.state for oid, o in state.orders.items()} == {
        "o1": "committed",
        "o2": "released",
        "o3": "expired",
        "o4": "reserved",
        "o5": "rejected",
    }
    assert [o.contradictions for o in state.orders.values()] == [[]] * 5
    # The order events kept for --repair, in log order.
    assert [e.offset for e in state.sku_events[SKU]] == [0, 1, 2, 3, 4, 5, 6]


def test_an_older_lot_version_arriving_late_does_not_win() -> None:
    state = Log().add("inventory", lot(8, 2), lot(10, 1)).state()
    assert state.skus[SKU].received == 8


def test_received_comes_from_stock_changed_only_where_no_lot_event_exists() -> None:
    state = (
        Log()
        .add(
            "inventory",
            StockChanged("rice", 7, 7, 0, 0, version=3),
            StockChanged("rice", 5, 5, 0, 0, version=2),  # older, read later
            StockChanged(SKU, 99, 99, 0, 0, version=9),
            lot(4, 1),
        )
        .state()
    )
    assert state.skus["rice"].received == 7
    assert state.skus[SKU].received == 4
    assert state.skus[SKU].available == 4


def test_an_order_with_no_outcome_is_undecided_and_a_live_orders_refusal_is_refused() -> None:
    state = Log().orders(placed("o1"), OrderRejected(*facts("o2"), reason="sold_out")).state()
    assert state.orders["o1"].state == "undecided"
    assert state.orders["o2"].state == "refused"
    # No lot or stock event: the log does not know what was received.
    assert state.skus[SKU].received is None and state.skus[SKU].available is None


def test_contradicting_outcomes_are_named() -> None:
    state = (
        Log()
        .orders(placed("o1"))
        .outcomes(confirmed("o1"), committed("o1"), ReservationExpired(*facts("o1")))
        .state()
    )
    assert state.orders["o1"].contradictions == ["committed and expired"]


def agreeing(state: LogState) -> Observed:
    """The stores exactly as the log says."""
    stores = {"reserved": "reserved", "committed": "paid", "rejected": "rejected"}
    return Observed(
        levels={SKU: levels(10, 7, 2, 1)},
        lots={SKU: {"L1": 10}},
        records={oid: record(oid, o.state) for oid, o in state.orders.items()},  # type: ignore[arg-type]
        statuses={oid: stores[o.state] for oid, o in state.orders.items()},
    )


def sale() -> LogState:
    return (
        Log()
        .add("inventory", lot(10, 1))
        .orders(placed("o1", 2), placed("o2"), placed("o3"))
        .outcomes(
            confirmed("o1", 2), confirmed("o2"), ReservationRejected(*facts("o3"), "sold_out")
        )
        .orders(OrderPaid(*facts("o2"), "pay", 100))
        .outcomes(committed("o2"))
        .state()
    )


def rows(differences: list[Difference]) -> list[tuple[str, str, str, str, str, bool]]:
    return [(d.subject, d.field, d.log, d.store, d.where, d.repairable) for d in differences]


def test_stores_that_agree_with_the_log_show_no_difference() -> None:
    state = sale()
    assert compare(state, agreeing(state)) == []


def with_changes(observed: Observed, **changes: Mapping[str, object]) -> Observed:
    fields = {
        "levels": observed.levels,
        "lots": observed.lots,
        "records": observed.records,
        "statuses": observed.statuses,
    }
    for name, update in changes.items():
        fields[name] = {**(fields[name] or {}), **update}
    return Observed(**fields)  # type: ignore[arg-type]


def test_a_lost_order_and_the_stock_it_moved_are_differences_to_repair() -> None:
    state = sale()
    # Inventory lost o1 (a Redis that lost its last writes): its units are back.
    observed = with_changes(
        agreeing(state), levels={SKU: levels(10, 9, 0, 1)}, records={"o1": None}
    )
    assert rows(compare(state, observed)) == [
        ("sku crab", "available", "7", "9", "inventory", True),
        ("sku crab", "reserved", "2", "0", "inventory", True),
        ("order o1", "state", "reserved", "(none)", "inventory", True),
    ]


def test_received_and_lot_quantities_are_only_reported() -> None:
    state = sale()
    observed = with_changes(
        agreeing(state), levels={SKU: levels(12, 9, 2, 1)}, lots={SKU: {"L1": 12}}
    )
    assert rows(compare(state, observed)) == [
        ("sku crab", "received", "10", "12", "inventory", False),
        ("sku crab", "available", "7", "9", "inventory", True),
        ("sku crab", "lot L1 quantity", "10", "12", "inventory", False),
    ]


def test_a_broken_invariant_in_redis_is_reported() -> None:
    state = sale()
    observed = with_changes(agreeing(state), levels={SKU: levels(10, 8, 2, 1)})
    assert rows(compare(state, observed)) == [
        ("sku crab", "available", "7", "8", "inventory", True),
        ("sku crab", "available+reserved+sold", "== received (10)", "11", "inventory", False),
    ]


def test_orders_ahead_of_the_log_or_unknown_to_live_orders_are_reported_only() -> None:
    state = sale()
    observed = with_changes(
        agreeing(state),
        # Inventory says committed where the log says reserved: replaying cannot go back.
        records={"o1": record("o1", "committed", 2)},
        statuses={"o1": None, "o2": "reserved"},
    )
    assert rows(compare(state, observed)) == [
        ("order o1", "state", "reserved", "committed", "inventory", False),
        ("order o1", "live_orders status", "reserved", "(none)", "live_orders", False),
        # Behind the log: a re-published reservation.committed moves it on.
        ("order o2", "live_orders status", "paid", "reserved", "live_orders", True),
    ]


def test_an_undecided_order_is_a_difference_even_where_both_stores_know_nothing() -> None:
    state = Log().add("inventory", lot(5, 1)).orders(placed("o1")).state()
    observed = Observed(
        levels={SKU: levels(5, 5, 0, 0)},
        lots={SKU: {"L1": 5}},
        records={"o1": None},
        statuses={"o1": "pending"},
    )
    assert rows(compare(state, observed)) == [
        ("order o1", "state", "undecided", "(none)", "inventory", True),
    ]
    # live_orders not compared (unreachable): statuses None, no row about it.
    assert len(compare(state, with_changes(observed, records={}))) == 1


def test_the_table_has_a_header_and_one_line_per_difference() -> None:
    table = render_table(
        [Difference("sku crab", "reserved", "2", "0", "inventory", repairable=True)]
    ).splitlines()
    assert table[0].split() == [
        "SKU/order",
        "field",
        "log",
        "says",
        "Redis",
        "says",
        "store",
        "repair",
    ]
    assert table[1].split() == ["sku", "crab", "reserved", "2", "0", "inventory", "yes"]
