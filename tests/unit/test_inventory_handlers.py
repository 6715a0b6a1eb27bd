"""inventory's consumer handlers (order.placed, order.paid, order.cancelled) against an
in-memory stock ledger and publisher."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
from prometheus_client import CollectorRegistry

from services.common.consumed import ConsumedEvent
from services.common.kafka_topics import Topics
from services.common.messages import (
    LotAllocation,
    LotUpdated,
    Message,
    OrderCancelled,
    OrderPaid,
    OrderPlaced,
    OrderRejected,
    PickCompleted,
    PickRequested,
    ReservationCommitted,
    ReservationConfirmed,
    ReservationExpired,
    ReservationRejected,
    ReservationReleased,
    StockChanged,
)
from services.inventory.domain import StockLevels, trace_code, trace_key
from services.inventory.handlers import EventHandlers, plan_runs
from services.inventory.lot_journal import check_chain
from services.inventory.metrics import InventoryMetrics
from services.inventory.outcome_events import pick_id
from tests.unit.fakes import FakeLotJournals, FakePublisher, FakeStockLedger, consumed

TOPICS = Topics.with_prefix("lc.")
TRACE_KEY = trace_key("unit-test-trace-secret")
M = TypeVar("M", bound=Message)


def placed(
    order_id: str,
    *,
    sku: str = "crab",
    buyer_id: str = "buyer-1",
    quantity: int = 1,
    per_user_limit: int = 4,
) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        session_id="s1",
        sku=sku,
        buyer_id=buyer_id,
        quantity=quantity,
        unit_price_cents=1500,
        total_cents=1500 * quantity,
        per_user_limit=per_user_limit,
        placed_at="2030-05-01T12:00:00.000Z",
    )


def paid(order_id: str, *, sku: str = "crab", quantity: int = 1) -> OrderPaid:
    return OrderPaid(
        order_id=order_id,
        session_id="s1",
        sku=sku,
        buyer_id="buyer-1",
        quantity=quantity,
        payment_ref=f"pay-{order_id}",
        amount_cents=1500 * quantity,
    )


def cancelled(order_id: str, *, sku: str = "crab") -> OrderCancelled:
    return OrderCancelled(
        order_id=order_id, session_id="s1", sku=sku, buyer_id="buyer-1", quantity=1
    )


@dataclass
class Inventory:
    registry: CollectorRegistry
    ledger: FakeStockLedger
    journals: FakeLotJournals
    publisher: FakePublisher
    handlers: EventHandlers
    next_offset: int = 0

    async def consume(
        self, *messages: Message, topic: str = TOPICS.orders
    ) -> list[ConsumedEvent[Message]]:
        """One partition batch of `topic` (orders unless told), at the next offsets."""
        events: list[ConsumedEvent[Message]] = []
        for message in messages:
            events.append(consumed(message, self.next_offset, topic=topic))
            self.next_offset += 1
        await self.handlers(events)
        return events

    def sent(self, cls: type[M]) -> list[tuple[str, str, M]]:
        """(topic, key, message) of every event of class `cls` published, in order."""
        return [
            (t, k, env.message) for t, k, env in self.publisher.sent if isinstance(env.message, cls)
        ]

    def outcome_ids(self) -> list[str]:
        """Event ids of everything published but the stock and lot snapshots (which carry
        no dedup id)."""
        return [
            env.event_id
            for _, _, env in self.publisher.sent
            if not isinstance(env.message, StockChanged | LotUpdated)
        ]

    def decisions(self, outcome: str, *, replay: bool) -> float:
        labels = {"outcome": outcome, "replay": "true" if replay else "false"}
        return self.registry.get_sample_value("lc_inventory_decisions_total", labels) or 0.0


@pytest.fixture
def inventory() -> Inventory:
    registry = CollectorRegistry()
    ledger = FakeStockLedger()
    ledger.receive("crab", "crab-lot", 10)
    ledger.receive("tea", "tea-lot", 10)
    publisher = FakePublisher()
    journals = FakeLotJournals(ledger)
    handlers = EventHandlers(
        store=ledger,
        journals=journals,
        publisher=publisher,
        topics=TOPICS,
        metrics=InventoryMetrics.create(registry),
        source="test",
        trace_key=TRACE_KEY,
    )
    return Inventory(registry, ledger, journals, publisher, handlers)


def order_ids(
    sent: Sequence[
        tuple[
            str,
            str,
            ReservationConfirmed | ReservationCommitted | ReservationReleased | ReservationExpired,
        ]
    ],
) -> list[str]:
    return [message.order_id for _, _, message in sent]


async def test_placed_orders_are_one_reserve_call_per_sku(inventory: Inventory) -> None:
    await inventory.consume(placed("a"), placed("b", sku="tea"), placed("c"))

    assert sorted(inventory.ledger.calls) == [
        ("reserve_batch", "crab", ["a", "c"]),
        ("reserve_batch", "tea", ["b"]),
    ]
    confirmed = inventory.sent(ReservationConfirmed)
    assert sorted(order_ids(confirmed)) == ["a", "b", "c"]
    assert {(topic, key, m.order_id) for topic, key, m in confirmed} == {
        (TOPICS.inventory, "crab", "a"),
        (TOPICS.inventory, "tea", "b"),
        (TOPICS.inventory, "crab", "c"),
    }


async def test_each_sku_gets_one_stock_snapshot_after_its_outcomes(inventory: Inventory) -> None:
    await inventory.consume(placed("a"), placed("b", sku="tea"), placed("c"))

    snapshots = {key: message for _, key, message in inventory.sent(StockChanged)}
    assert len(inventory.sent(StockChanged)) == 2
    assert snapshots["crab"] == StockChanged("crab", 10, 8, 2, 0, version=2)
    assert snapshots["tea"] == StockChanged("tea", 10, 9, 1, 0, version=2)
    last_crab = max(i for i, (_, k, _) in enumerate(inventory.publisher.sent) if k == "crab")
    assert isinstance(inventory.publisher.sent[last_crab][2].message, StockChanged)


async def test_runs_keep_offset_order_within_a_sku(inventory: Inventory) -> None:
    await inventory.consume(placed("a"), paid("a"), placed("b"))

    assert inventory.ledger.calls == [
        ("reserve_batch", "crab", ["a"]),
        ("commit", "crab", ["a"]),
        ("reserve_batch", "crab", ["b"]),
    ]
    assert order_ids(inventory.sent(ReservationCommitted)) == ["a"]


async def test_an_event_the_handlers_pass_over_does_not_split_a_run(inventory: Inventory) -> None:
    refused_here = OrderRejected("x", "s1", "crab", "buyer-2", 1, "sold_out")

    await inventory.consume(placed("a"), refused_here, placed("b"))

    assert inventory.ledger.calls == [("reserve_batch", "crab", ["a", "b"])]


async def test_a_batch_of_nothing_to_handle_publishes_nothing(inventory: Inventory) -> None:
    await inventory.consume(OrderRejected("x", "s1", "crab", "buyer-2", 1, "sold_out"))

    assert inventory.ledger.calls == []
    assert inventory.publisher.sent == []
    assert inventory.ledger.tracked == []


async def test_a_refused_reservation_is_answered_with_its_reason(inventory: Inventory) -> None:
    await inventory.consume(
        placed("a", quantity=3, per_user_limit=4),
        placed("b", quantity=2, per_user_limit=4),
        placed("c", sku="tea", buyer_id="buyer-2", quantity=11, per_user_limit=20),
    )

    reasons = {m.order_id: m.reason for _, _, m in inventory.sent(ReservationRejected)}
    assert reasons == {"b": "limit_exceeded", "c": "sold_out"}
    assert inventory.decisions("limit_exceeded", replay=False) == 1


async def test_only_skus_that_hold_units_are_tracked(inventory: Inventory) -> None:
    await inventory.consume(placed("a"), placed("b", sku="tea", quantity=11, per_user_limit=20))

    assert inventory.ledger.tracked == [["crab"]]


async def test_a_payment_commits_with_one_pick_per_lot(inventory: Inventory) -> None:
    ledger = inventory.ledger
    ledger.receive("rice", "late", 1, warehouse_id="wh-2", expires_on="2030-06-01")
    ledger.receive("rice", "undated", 5, warehouse_id="wh-3")
    ledger.receive("rice", "early", 1, warehouse_id="wh-1", expires_on="2030-05-20")
    await inventory.consume(placed("a", sku="rice", quantity=3))

    await inventory.consume(paid("a", sku="rice", quantity=3))

    ((_, _, committed),) = inventory.sent(ReservationCommitted)
    assert committed.payment_ref == "pay-a"
    assert committed.allocations == (
        LotAllocation("early", "wh-1", 1),
        LotAllocation("late", "wh-2", 1),
        LotAllocation("undated", "wh-3", 1),
    )
    picks = inventory.sent(PickRequested)
    assert [(topic, key) for topic, key, _ in picks] == [
        (TOPICS.picks, "wh-1"),
        (TOPICS.picks, "wh-2"),
        (TOPICS.picks, "wh-3"),
    ]
    assert [pick.lot_code for _, _, pick in picks] == ["early", "late", "undated"]
    assert {pick.pick_id for _, _, pick in picks} == {
        pick_id("a", "early"),
        pick_id("a", "late"),
        pick_id("a", "undated"),
    }


async def test_a_cancel_releases_the_hold(inventory: Inventory) -> None:
    await inventory.consume(placed("a", quantity=2))

    await inventory.consume(cancelled("a"))

    assert order_ids(inventory.sent(ReservationReleased)) == ["a"]
    _, _, snapshot = inventory.sent(StockChanged)[-1]
    assert snapshot == StockChanged("crab", 10, 10, 0, 0, version=3)


async def test_a_payment_after_the_deadline_answers_expired(inventory: Inventory) -> None:
    await inventory.consume(placed("a"))
    inventory.ledger.now_ms += inventory.ledger.ttl_ms

    await inventory.consume(paid("a"))

    assert order_ids(inventory.sent(ReservationExpired)) == ["a"]
    assert inventory.sent(ReservationCommitted) == []
    assert inventory.sent(PickRequested) == []
    assert inventory.ledger.sku("crab").available == 10


async def test_a_cancel_after_the_deadline_answers_expired(inventory: Inventory) -> None:
    await inventory.consume(placed("a"))
    inventory.ledger.now_ms += inventory.ledger.ttl_ms

    await inventory.consume(cancelled("a"))

    assert order_ids(inventory.sent(ReservationExpired)) == ["a"]
    assert inventory.sent(ReservationReleased) == []


async def test_a_replayed_batch_publishes_the_same_event_ids(inventory: Inventory) -> None:
    batch = await inventory.consume(
        placed("a"), placed("b", quantity=11, per_user_limit=20), paid("a")
    )
    first = inventory.outcome_ids()
    inventory.publisher.sent.clear()

    await inventory.handlers(batch)

    assert inventory.outcome_ids() == first
    assert len(first) == 4  # confirmed, rejected, committed, one pick
    assert inventory.decisions("confirmed", replay=True) == 1
    assert inventory.ledger.sku("crab").levels == StockLevels(10, 9, 0, 1, 3)


async def test_a_payment_for_an_unknown_order_is_logged_and_answers_nothing(
    inventory: Inventory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="services.inventory.handlers"):
        await inventory.consume(paid("ghost"), cancelled("ghost"))

    assert inventory.outcome_ids() == []
    assert [r.getMessage() for r in caplog.records] == [
        "order.paid for an order inventory never decided; ignored",
        "order.cancelled for an order inventory never decided; ignored",
    ]


async def test_a_failed_publish_fails_the_batch(inventory: Inventory) -> None:
    inventory.publisher.failure = ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        await inventory.consume(placed("a"))


# ------------------------------------------------------------------ lot journals


def completed(pick: PickRequested, *, trace_code: str | None = "") -> PickCompleted:
    """The notifier's pick.completed for `pick` (its trace code unless told otherwise)."""
    return PickCompleted(
        pick_id=pick.pick_id,
        order_id=pick.order_id,
        sku=pick.sku,
        warehouse_id=pick.warehouse_id,
        lot_code=pick.lot_code,
        quantity=pick.quantity,
        trace_code=pick.trace_code if trace_code == "" else trace_code,
        completed_at="2030-05-01T12:30:00.000Z",
        completed_by="staff-7",
    )


async def test_a_payment_over_two_lots_journals_an_allocation_in_each(
    inventory: Inventory,
) -> None:
    inventory.ledger.receive("rice", "early", 1, expires_on="2030-05-20")
    inventory.ledger.receive("rice", "late", 5, warehouse_id="wh-2", expires_on="2030-06-01")
    await inventory.consume(placed("a", sku="rice", quantity=3))

    await inventory.consume(paid("a", sku="rice", quantity=3))

    picks = {pick.lot_code: pick for _, _, pick in inventory.sent(PickRequested)}
    assert picks["early"].trace_code != picks["late"].trace_code
    for lot, quantity in (("early", 1), ("late", 2)):
        (entry,) = inventory.journals.of("rice", lot)
        pick = picks[lot]
        assert pick.trace_code == trace_code(TRACE_KEY, pick.pick_id)
        assert (entry.seq, entry.type, entry.at) == (1, "lot.allocated", pick.created_at)
        assert entry.data == {
            "order_id": "a",
            "session_id": "s1",
            "quantity": quantity,
            "pick_id": pick.pick_id,
            "trace_code": pick.trace_code,
        }
    updates = {m.lot_code: m for _, key, m in inventory.sent(LotUpdated) if key == "rice"}
    assert set(updates) == {"early", "late"}
    late = updates["late"]
    assert (late.quantity, late.allocated, late.warehouse_id) == (5, 2, "wh-2")
    assert (late.journal_seq, late.journal_head) == (
        1,
        inventory.journals.of("rice", "late")[0].hash,
    )
    assert {topic for topic, _, _ in inventory.sent(LotUpdated)} == {TOPICS.inventory}


async def test_the_journal_holds_no_buyer_data(inventory: Inventory) -> None:
    await inventory.consume(placed("a", buyer_id="buyer-secret"))
    await inventory.consume(paid("a"))
    ((_, _, pick),) = inventory.sent(PickRequested)
    await inventory.consume(completed(pick), topic=TOPICS.picks)

    journal = inventory.journals.of("crab", "crab-lot")
    assert [e.type for e in journal] == ["lot.allocated", "lot.picked"]
    assert all("buyer" not in repr(e.as_dict()) and "pay-a" not in repr(e) for e in journal)


async def test_a_replayed_payment_appends_nothing_and_announces_the_lot_again(
    inventory: Inventory,
) -> None:
    await inventory.consume(placed("a"))
    batch = await inventory.consume(paid("a"))
    journal = list(inventory.journals.of("crab", "crab-lot"))
    first_picks = inventory.sent(PickRequested)
    inventory.publisher.sent.clear()

    await inventory.handlers(batch)

    assert inventory.journals.of("crab", "crab-lot") == journal
    assert inventory.sent(PickRequested) == first_picks
    ((_, _, again),) = inventory.sent(LotUpdated)
    assert (again.journal_seq, again.journal_head) == (1, journal[0].hash)


async def test_the_allocation_is_journaled_before_anything_is_published(
    inventory: Inventory,
) -> None:
    """A crash (here: a failed publish) after the append replays the batch; the append is
    then a no-op and the outcomes go out."""
    await inventory.consume(placed("a"))
    inventory.publisher.failure = ConnectionError("broker away")
    with pytest.raises(ConnectionError):
        batch = [consumed(paid("a"), 5, topic=TOPICS.orders)]
        await inventory.handlers(batch)
    assert [e.type for e in inventory.journals.of("crab", "crab-lot")] == ["lot.allocated"]

    inventory.publisher.failure = None
    await inventory.handlers(batch)

    assert len(inventory.journals.of("crab", "crab-lot")) == 1
    assert order_ids(inventory.sent(ReservationCommitted)) == ["a"]
    assert len(inventory.sent(LotUpdated)) == 1


async def test_a_completed_pick_is_journaled_once_and_announced(inventory: Inventory) -> None:
    await inventory.consume(placed("a", quantity=2))
    await inventory.consume(paid("a", quantity=2))
    ((_, _, pick),) = inventory.sent(PickRequested)
    inventory.publisher.sent.clear()

    # Redelivered in the same batch and again later: one entry.
    await inventory.consume(completed(pick), completed(pick), topic=TOPICS.picks)
    await inventory.consume(completed(pick), topic=TOPICS.picks)

    journal = inventory.journals.of("crab", "crab-lot")
    assert [e.type for e in journal] == ["lot.allocated", "lot.picked"]
    assert journal[1].at == "2030-05-01T12:30:00.000Z"
    assert journal[1].data == {
        "pick_id": pick.pick_id,
        "trace_code": pick.trace_code,
        "quantity": 2,
        "completed_at": "2030-05-01T12:30:00.000Z",
        "completed_by": "staff-7",
    }
    assert check_chain(journal).ok
    updates = inventory.sent(LotUpdated)
    assert len(updates) == 3
    assert {(m.journal_seq, m.allocated) for _, _, m in updates} == {(2, 2)}
    # A pick changes no stock: no snapshot, no outcome, nothing for the sweeper.
    assert inventory.sent(StockChanged) == []
    assert inventory.outcome_ids() == []
    assert inventory.ledger.calls[-1][0] == "commit"


async def test_a_pick_without_a_trace_code_gets_the_one_its_pick_id_has(
    inventory: Inventory,
) -> None:
    await inventory.consume(placed("a"))
    await inventory.consume(paid("a"))
    ((_, _, pick),) = inventory.sent(PickRequested)

    await inventory.consume(completed(pick, trace_code=None), topic=TOPICS.picks)

    assert inventory.journals.of("crab", "crab-lot")[-1].data["trace_code"] == pick.trace_code


async def test_a_pick_of_an_unknown_lot_is_logged_and_changes_nothing(
    inventory: Inventory, caplog: pytest.LogCaptureFixture
) -> None:
    ghost = PickRequested(
        "p-1", "o-1", "s1", "crab", "wh-1", "no-such-lot", 1, None, "2030-05-01T12:00:00Z", "c"
    )
    with caplog.at_level(logging.WARNING, logger="services.inventory.handlers"):
        await inventory.consume(completed(ghost), topic=TOPICS.picks)

    assert inventory.publisher.sent == []
    assert inventory.journals.entries == {}
    assert [r.getMessage() for r in caplog.records] == [
        "lot.picked for a lot inventory does not have; not journaled"
    ]


def test_picks_are_run_per_sku_and_inventory_passes_its_own_pick_tasks_over(
    inventory: Inventory,
) -> None:
    pick = PickRequested("p-1", "o-1", "s1", "tea", "wh-1", "L", 1, None, "2030-05-01T12:00:00Z")
    batch: list[ConsumedEvent[Message]] = [
        consumed(completed(pick), 0, topic=TOPICS.picks),
        consumed(pick, 1, topic=TOPICS.picks),
        consumed(completed(dataclasses.replace(pick, sku="crab")), 2, topic=TOPICS.picks),
        consumed(completed(dataclasses.replace(pick, pick_id="p-2")), 3, topic=TOPICS.picks),
    ]

    plan = plan_runs(batch, inventory.handlers.table)

    assert {
        sku: [[e.offset for e in run.events] for run in runs] for sku, runs in plan.items()
    } == {
        "tea": [[0, 3]],
        "crab": [[2]],
    }
    assert PickCompleted in inventory.handlers.handles
    assert PickRequested not in inventory.handlers.handles
