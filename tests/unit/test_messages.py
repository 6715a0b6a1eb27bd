"""The typed message classes and the wire contract in schemas/events are held together here:
the same fields and required set, every class's sample valid against its schema, and a
round trip through the codec that gives back the same typed message. And no service reads
an event's data as a dict any more."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import orjson
import pytest

from services.common.events import Envelope, decode, encode
from services.common.messages import (
    ALL_MESSAGES,
    MESSAGE_TYPES,
    AttemptsTallied,
    EventDeadLettered,
    Listing,
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
    SessionUpdated,
    StockChanged,
)
from services.common.schemas import SCHEMAS_DIR, first_error, schema

ROOT = Path(__file__).resolve().parents[2]
ORDER = {"order_id": "o-1", "session_id": "s-1", "sku": "crab-01", "buyer_id": "b-1", "quantity": 2}
AT = "2026-11-28T12:00:00.000Z"

SAMPLES: dict[type[Message], Message] = {
    OrderPlaced: OrderPlaced(
        **ORDER,
        unit_price_cents=8800,
        total_cents=17600,
        per_user_limit=2,
        placed_at=AT,
    ),
    OrderRejected: OrderRejected(**ORDER, reason="sold_out"),
    AttemptsTallied: AttemptsTallied(
        tally_id="0f3a9c2e4b7d41a8-0",
        session_id="s-1",
        sold_out=41,
        not_on_sale=2,
        tallied_at="2026-11-11T00:00:01.250Z",
    ),
    OrderPaid: OrderPaid(**ORDER, payment_ref="pay-1", amount_cents=17600),
    OrderCancelled: OrderCancelled(**ORDER),
    ReservationConfirmed: ReservationConfirmed(**ORDER, total_cents=17600, expires_at=AT),
    ReservationRejected: ReservationRejected(**ORDER, reason="limit_exceeded"),
    ReservationCommitted: ReservationCommitted(
        **ORDER,
        total_cents=17600,
        payment_ref="pay-1",
        allocations=(LotAllocation("LOT-1", "wh-1", 1), LotAllocation("LOT-2", "wh-2", 1)),
    ),
    ReservationReleased: ReservationReleased(**ORDER),
    ReservationExpired: ReservationExpired(**ORDER),
    StockChanged: StockChanged("crab-01", 10, 4, 3, 3, version=7),
    PickRequested: PickRequested(
        pick_id="p-1",
        order_id="o-1",
        session_id="s-1",
        sku="crab-01",
        warehouse_id="wh-1",
        lot_code="LOT-1",
        quantity=1,
        expires_on="2026-12-24",
        created_at=AT,
        trace_code="Q7x2LmN4pR8sT1vW",
    ),
    PickCompleted: PickCompleted(
        pick_id="p-1",
        order_id="o-1",
        sku="crab-01",
        warehouse_id="wh-1",
        lot_code="LOT-1",
        quantity=1,
        trace_code="Q7x2LmN4pR8sT1vW",
        completed_at=AT,
        completed_by="staff-1",
    ),
    LotUpdated: LotUpdated(
        sku="crab-01",
        lot_code="LOT-1",
        warehouse_id="wh-1",
        quantity=100,
        allocated=3,
        expires_on="2026-12-24",
        origin="Yangcheng Lake",
        producer="Lakeside Crab Cooperative",
        harvested_on="2026-11-20",
        inspection="CIQ-2026-118 passed",
        journal_seq=4,
        journal_head="a" * 64,
    ),
    SessionUpdated: SessionUpdated(
        session_id="s-1",
        host_id="h-1",
        title="Hairy crabs",
        status="live",
        listings=(Listing("crab-01", "Crab", 8800, 2, AT, None),),
        created_at=AT,
        started_at=AT,
        ended_at=None,
        pavilion="特产馆",
    ),
    EventDeadLettered: EventDeadLettered("not JSON", "orders", 0, 42, "g", None, "e30="),
}


def _fields(cls: type[Message]) -> tuple[set[str], set[str]]:
    """(required, all) field names: a field with a default may be absent on the wire."""
    every = dataclasses.fields(cls)
    required = {
        f.name
        for f in every
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return required, {f.name for f in every}


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.TYPE)
def test_classes_and_schemas_agree(cls: type[Message]) -> None:
    document = schema(f"events/{cls.TYPE}.v{cls.VERSION}.json")
    required, every = _fields(cls)
    assert set(document["properties"]) == every
    assert set(document["required"]) == required
    assert document["additionalProperties"] is False


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.TYPE)
def test_every_class_encodes_valid_data_and_decodes_to_itself(cls: type[Message]) -> None:
    sample = SAMPLES[cls]
    wire = encode(Envelope.of(sample, source="test"))
    data = orjson.loads(wire)["data"]
    assert first_error(f"events/{cls.TYPE}.v{cls.VERSION}.json", data) is None
    assert decode(wire).message == sample


def test_a_stock_snapshot_from_before_versions_has_no_version_on_the_wire() -> None:
    old = StockChanged("crab-01", 10, 4, 3, 3)
    data = orjson.loads(encode(Envelope.of(old, source="test")))["data"]
    assert "version" not in data
    assert first_error("events/stock.changed.v1.json", data) is None
    assert decode(encode(Envelope.of(old, source="test"))).message.version is None


def test_a_pick_task_from_before_traceability_has_no_trace_code_on_the_wire() -> None:
    old = dataclasses.replace(SAMPLES[PickRequested], trace_code=None)
    data = orjson.loads(encode(Envelope.of(old, source="test")))["data"]
    assert "trace_code" not in data
    assert first_error("events/pick.requested.v1.json", data) is None
    assert decode(encode(Envelope.of(old, source="test"))).message == old


def test_every_schema_file_has_its_class() -> None:
    files = {p.name for p in (SCHEMAS_DIR / "events").glob("*.json")}
    assert files == {f"{name}.v{version}.json" for name, version in MESSAGE_TYPES}
    assert set(SAMPLES) == set(ALL_MESSAGES)


def test_literal_fields_match_the_schema_enums() -> None:
    for cls in ALL_MESSAGES:
        hints = typing.get_type_hints(cls)
        properties = schema(f"events/{cls.TYPE}.v{cls.VERSION}.json")["properties"]
        for name, hint in hints.items():
            if typing.get_origin(hint) is typing.Literal:
                assert set(typing.get_args(hint)) == set(properties[name]["enum"]), (cls, name)


# An event's data read as a dict: `data["sku"]`, `.data.get(...)`, `envelope.data`.
DICT_ACCESS = re.compile(r"""\bdata\[["']|\.data\.get\(|envelope\.data\b""")


# The codec: the one place where the wire's dict becomes a message.
CODEC = {ROOT / "services/common/messages.py", ROOT / "services/common/events.py"}


def test_no_service_reads_event_data_as_a_dict() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "services").rglob("*.py"))
        if path not in CODEC
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if DICT_ACCESS.search(line)
    ]
    assert offenders == []
