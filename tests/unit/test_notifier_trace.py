"""The trace of a box, pick tasks' trace codes and pick.completed, against in-memory fakes."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from services.common.messages import PickCompleted, PickRequested
from services.notifier.pick_completion import REPUBLISH_AFTER_MS, PickCompletion
from services.notifier.pick_queue import PickTask
from services.notifier.trace import LotRecord, SessionLabel, is_trace_code, trace_document
from tests.unit.fakes import FakeCompletionRecords, FakePublisher

CODE = "Q7x2LmN4pR8sT1vW"
REQUESTED = PickRequested(
    pick_id="pk-1",
    order_id="o-secret-1",
    session_id="s1",
    sku="crab",
    warehouse_id="wh-1",
    lot_code="L-1",
    quantity=2,
    expires_on="2030-02-01",
    created_at="2030-01-25T10:00:00.000Z",
    trace_code=CODE,
)
LOT = LotRecord(
    warehouse_id="wh-1",
    origin="Yangcheng Lake",
    producer="Coop 7",
    harvested_on="2030-01-20",
    expires_on="2030-02-03",
    inspection="CNAS-123",
    journal_seq=4,
    journal_head="b" * 64,
)


def stored_task(requested: PickRequested = REQUESTED, **changes: object) -> PickTask:
    """The task as the pick store reads it back from the stored pick.requested."""
    doc = orjson.loads(orjson.dumps(requested))
    task = PickTask.from_document(doc, status="open", seq=1)
    return dataclasses.replace(task, **changes)


def test_trace_codes_are_16_to_64_letters_and_digits() -> None:
    assert is_trace_code(CODE) and is_trace_code("A" * 64)
    for bad in ("A" * 15, "A" * 65, CODE[:-1] + "-", CODE + "\n", "../" + CODE, ""):
        assert not is_trace_code(bad)


def test_a_task_carries_its_trace_code_in_frames_and_listings() -> None:
    task = stored_task()
    assert task.trace_code == CODE
    assert task.frame()["trace_code"] == CODE and task.listing()["trace_code"] == CODE
    old = stored_task(dataclasses.replace(REQUESTED, trace_code=None))
    assert old.trace_code is None and old.frame()["trace_code"] is None


def test_a_trace_tells_the_lot_and_the_session_but_never_the_buyer() -> None:
    done = stored_task(status="done", completed_at="2030-01-25T11:00:00.000Z", completed_by="st")
    trace = trace_document(done, LOT, SessionLabel("Crab night", "阳澄湖馆"))
    assert trace == {
        "trace_code": CODE,
        "sku": "crab",
        "quantity": 2,
        "lot": {
            "lot_code": "L-1",
            "warehouse_id": "wh-1",
            "origin": "Yangcheng Lake",
            "producer": "Coop 7",
            "harvested_on": "2030-01-20",
            "expires_on": "2030-02-03",
            "inspection": "CNAS-123",
        },
        "session": {"session_id": "s1", "title": "Crab night", "pavilion": "阳澄湖馆"},
        "paid_at": "2030-01-25T10:00:00.000Z",
        "picked_at": "2030-01-25T11:00:00.000Z",
        "journal_head": "b" * 64,
    }
    text = orjson.dumps(trace).decode()
    assert "o-secret-1" not in text and "buyer" not in text and "payment" not in text
    assert "st" not in orjson.dumps(trace["session"]).decode()


def test_a_trace_before_its_lot_and_session_are_known() -> None:
    trace = trace_document(stored_task(), None, None)
    assert trace["picked_at"] is None and trace["journal_head"] is None
    assert trace["lot"] == {
        "lot_code": "L-1",
        "warehouse_id": "wh-1",
        "origin": None,
        "producer": None,
        "harvested_on": None,
        "expires_on": "2030-02-01",  # the pick task carries the lot's expiry
        "inspection": None,
    }
    assert trace["session"] == {"session_id": "s1", "title": None, "pavilion": None}


class Clock:
    def __init__(self) -> None:
        self.ms = 1_900_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


def completion(
    store: FakeCompletionRecords, publisher: FakePublisher, clock: Clock
) -> PickCompletion:
    return PickCompletion(store, publisher, "lc.picks", "notifier-test", clock_ms=clock)


async def test_the_first_completion_publishes_pick_completed_once(clock: Clock) -> None:
    task = stored_task()
    store, publisher = FakeCompletionRecords(task), FakePublisher()
    use_case = completion(store, publisher, clock)

    first = await use_case.complete(task, "staff-1")
    again = await use_case.complete(task, "staff-2")

    assert first.status == "done" and again.completed_by == "staff-1"
    assert again.completed_at == first.completed_at
    (sent,) = publisher.sent
    topic, key, envelope = sent
    assert (topic, key) == ("lc.picks", "wh-1")
    assert envelope.message == PickCompleted(
        pick_id="pk-1",
        order_id="o-secret-1",
        sku="crab",
        warehouse_id="wh-1",
        lot_code="L-1",
        quantity=2,
        trace_code=CODE,
        completed_at=first.completed_at or "",
        completed_by="staff-1",
    )
    assert store.outbox == {}


async def test_a_refused_publish_is_sent_by_the_sweep_under_the_same_id(clock: Clock) -> None:
    task = stored_task()
    store, publisher = FakeCompletionRecords(task), FakePublisher()
    use_case = completion(store, publisher, clock)
    publisher.failure = ConnectionError("broker away")

    done = await use_case.complete(task, "staff-1")

    assert done.status == "done" and publisher.sent == []
    assert await use_case.sweep() == 0, "not overdue yet"
    publisher.failure = None
    clock.ms += REPUBLISH_AFTER_MS
    assert await use_case.sweep() == 1
    assert await use_case.sweep() == 0, "published once"
    (envelope,) = publisher.envelopes(PickCompleted)
    (message,) = publisher.messages(PickCompleted)
    assert envelope.event_id == use_case.envelope(message).event_id
    assert store.outbox == {}


async def test_a_retry_after_a_refused_publish_publishes_it(clock: Clock) -> None:
    task = stored_task()
    store, publisher = FakeCompletionRecords(task), FakePublisher()
    use_case = completion(store, publisher, clock)
    publisher.failure = ConnectionError("broker away")
    await use_case.complete(task, "staff-1")
    publisher.failure = None

    await use_case.complete(task, "staff-1")

    assert [m.pick_id for m in publisher.messages(PickCompleted)] == ["pk-1"]
