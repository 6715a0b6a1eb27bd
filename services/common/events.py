"""The event envelope and its codec.

Every Kafka message value is one envelope, JSON by orjson:
`{event_id, type, version, occurred_at, source, trace_id, data}`. Decoding validates the
envelope and then `data` against `schemas/events/<type>.v<version>.json`; anything that fails
raises `InvalidEvent` with a reason, which consumers turn into a DLQ record (never a skip).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.common.clock import now_rfc3339
from services.common.event_types import EVENT_TYPES
from services.common.schemas import first_error

# Namespace of deterministic event ids: an outcome decided once gets the same event_id
# however often it is re-published (after a crash or a replay), so consumers can dedup it.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c1c52-6f3e-4b8e-9a59-7d3c1f2b9e10")


class InvalidEvent(ValueError):
    """A message that is not a valid event; `reason` says why, for the DLQ."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes


def deterministic_event_id(type_: str, dedup_key: str) -> str:
    """`str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{type_}:{dedup_key}"))`, the same text (ids of
    events already on the topics stay what they were), without building UUID objects:
    a third of what building an outcome event cost."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{type_}:{dedup_key}".encode()).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest[:16].hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(frozen=True, slots=True)
class Envelope:
    type: str
    data: dict[str, Any]
    source: str
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    version: int = 1
    occurred_at: str = field(default_factory=now_rfc3339)
    trace_id: str = ""

    @classmethod
    def create(
        cls,
        type_: str,
        data: Any,
        *,
        source: str,
        trace_id: str = "",
        dedup_key: str | None = None,
        version: int = 1,
    ) -> Envelope:
        """A new event. With `dedup_key`, the event_id is derived from (type, dedup_key):
        the same decision always travels under the same id."""
        event_id = (
            deterministic_event_id(type_, dedup_key) if dedup_key is not None else str(uuid.uuid4())
        )
        return cls(
            type=type_,
            data=dict(data),
            source=source,
            event_id=event_id,
            version=version,
            trace_id=trace_id,
        )


def encode(envelope: Envelope, *, validate: bool = True) -> bytes:
    """Serialize an envelope; by default refuse to put an invalid event on the wire."""
    document = {
        "event_id": envelope.event_id,
        "type": envelope.type,
        "version": envelope.version,
        "occurred_at": envelope.occurred_at,
        "source": envelope.source,
        "trace_id": envelope.trace_id,
        "data": envelope.data,
    }
    if validate:
        _check(document)
    return orjson.dumps(document)


def decode(raw: bytes | None, data_of: Container[str] | None = None) -> Envelope:
    """Parse and validate one message value. With `data_of`, the data of an event of
    another (known) type is not validated: a consumer that does not act on it skips it."""
    if raw is None:
        raise InvalidEvent("empty message value (tombstone)")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidEvent("not a JSON object")
    _check(document, data_of)
    return Envelope(
        type=document["type"],
        data=document["data"],
        source=document["source"],
        event_id=document["event_id"],
        version=document["version"],
        occurred_at=document["occurred_at"],
        trace_id=document["trace_id"],
    )


def _check(document: dict[str, Any], data_of: Container[str] | None = None) -> None:
    error = first_error("envelope.json", document)
    if error is not None:
        raise InvalidEvent(f"envelope: {error}")
    key = (document["type"], document["version"])
    if key not in EVENT_TYPES:
        raise InvalidEvent(f"unknown event type {key[0]} v{key[1]}")
    if data_of is not None and key[0] not in data_of:
        return
    error = first_error(f"events/{key[0]}.v{key[1]}.json", document["data"])
    if error is not None:
        raise InvalidEvent(f"{key[0]} v{key[1]} data: {error}")
