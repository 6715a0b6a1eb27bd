"""Events for tests, built from and read as their wire data: the services build and consume
typed messages (services.common.messages); tests state scenarios as the JSON they put on
the topics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from services.common.events import Envelope
from services.common.messages import MESSAGE_TYPES, Message


def event(
    type_: str,
    data: Mapping[str, Any],
    *,
    source: str = "test",
    dedup_key: str | None = None,
    version: int = 1,
) -> Envelope[Message]:
    """The envelope of the typed message whose wire data is `data`."""
    message = MESSAGE_TYPES[(type_, version)].from_data(dict(data))
    return Envelope.of(message, source=source, dedup_key=dedup_key)


def data_of(envelope: Envelope[Message]) -> dict[str, Any]:
    """An event's data as it is on the wire."""
    data: dict[str, Any] = orjson.loads(orjson.dumps(envelope.message.to_data()))
    return data
