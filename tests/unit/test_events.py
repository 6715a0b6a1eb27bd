import re
import uuid

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from services.common.clock import (
    from_rfc3339,
    ms_rfc3339,
    ms_to_rfc3339,
    now_rfc3339,
    to_rfc3339,
    utc_now,
)
from services.common.events import (
    EVENT_ID_NAMESPACE,
    Envelope,
    InvalidEvent,
    decode,
    deterministic_event_id,
    encode,
    receive,
)
from services.common.kafka_producer import KeyHashPartitioner
from services.common.messages import OrderPlaced, ReservationExpired, ReservationReleased
from services.live_orders.redis_keys import TAG_LENGTH, buyer_tag, new_order_id

PLACED = {
    "order_id": "o-1",
    "session_id": "s-1",
    "sku": "crab-01",
    "buyer_id": "b-1",
    "quantity": 2,
    "unit_price_cents": 8800,
    "total_cents": 17600,
    "per_user_limit": 2,
    "placed_at": "2026-11-28T12:00:00.000Z",
}


def test_round_trip_keeps_every_field() -> None:
    envelope = Envelope.of(OrderPlaced(**PLACED), source="test", trace_id="t-1")
    decoded = decode(encode(envelope))
    assert decoded == envelope
    assert isinstance(decoded.message, OrderPlaced)


def test_dedup_key_gives_a_stable_event_id() -> None:
    gone = {"order_id": "o-1", "session_id": "s", "sku": "k", "buyer_id": "b", "quantity": 1}
    first = Envelope.of(ReservationExpired(**gone), source="a", dedup_key="o-1")
    again = Envelope.of(ReservationExpired(**gone), source="b", dedup_key="o-1")
    other_type = Envelope.of(ReservationReleased(**gone), source="a", dedup_key="o-1")
    assert first.event_id == again.event_id
    assert first.event_id != other_type.event_id
    assert Envelope.of(ReservationExpired(**gone), source="a").event_id != first.event_id


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "tombstone"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "order.placed"}', "envelope"),
    ],
)
def test_undecodable_messages_say_why(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode(raw)


def _document(**changes: object) -> bytes:
    envelope = Envelope.of(OrderPlaced(**PLACED), source="test")
    document = orjson.loads(encode(envelope))
    document.update(changes)
    return orjson.dumps(document)


def test_unknown_type_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match=r"unknown event type order\.exploded v1"):
        decode(_document(type="order.exploded"))


def test_data_is_checked_against_its_schema() -> None:
    with pytest.raises(InvalidEvent, match="quantity"):
        decode(_document(data={**PLACED, "quantity": 0}))
    with pytest.raises(InvalidEvent, match="must not contain"):
        decode(_document(data={**PLACED, "price_cents": 1}))
    missing = dict(PLACED)
    del missing["sku"]
    with pytest.raises(InvalidEvent, match="sku"):
        decode(_document(data=missing))


def test_a_consumer_can_pass_over_a_type_without_validating_its_data() -> None:
    bad = _document(data={**PLACED, "quantity": 0})
    received = receive(bad)
    assert received.message_class is OrderPlaced
    with pytest.raises(InvalidEvent, match="quantity"):
        received.decode()
    # The envelope and the type are still checked: an unknown type is never passed by.
    with pytest.raises(InvalidEvent, match="unknown event type"):
        receive(_document(type="order.exploded"))


def test_deterministic_event_ids_are_the_uuid5_they_always_were() -> None:
    for type_, key in [("order.placed", "a" * 32), ("pick.requested", "o1:LOT-7"), ("x", "")]:
        assert deterministic_event_id(type_, key) == str(
            uuid.uuid5(EVENT_ID_NAMESPACE, f"{type_}:{key}")
        )


def test_now_rfc3339_matches_the_datetime_formatting() -> None:
    before = to_rfc3339(utc_now())
    stamp = now_rfc3339()
    after = to_rfc3339(utc_now())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert before <= stamp <= after
    assert from_rfc3339(stamp).tzinfo is not None


@pytest.mark.parametrize("ms", [0, 999, 1_796_018_231_874, 1_796_018_232_000, 4_102_444_799_999])
def test_ms_rfc3339_matches_the_datetime_formatting(ms: int) -> None:
    assert ms_rfc3339(ms) == ms_to_rfc3339(ms)


def test_order_ids_carry_their_buyers_tag_and_112_fresh_random_bits() -> None:
    ids = [new_order_id("buyer-7") for _ in range(1_000)]  # crosses the random pool's refill
    assert {order_id[:TAG_LENGTH] for order_id in ids} == {buyer_tag("buyer-7")}
    assert all(re.fullmatch(r"[0-9a-f]{32}", order_id) for order_id in ids)
    assert len({order_id[4:] for order_id in ids}) == len(ids)


def test_the_partitioner_sends_a_key_where_the_java_client_would() -> None:
    partitioner = KeyHashPartitioner(max_keys=2)
    partitions = list(range(12))
    for key in [b"crab-01", b"tea", b"wh-1", b"crab-01", b"rice"]:
        assert partitioner(key, partitions, partitions) == DefaultPartitioner()(
            key, partitions, partitions
        )
    assert partitioner(None, partitions, [3]) == 3
