"""An event as a consumer's handler receives it, and the tables that route events to the
handler of their message class. No Kafka here: handlers and their unit tests need none."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from services.common.events import Envelope
from services.common.messages import Message
from services.common.values import value_class

M_co = TypeVar("M_co", bound=Message, covariant=True)


@value_class
class ConsumedEvent(Generic[M_co]):
    topic: str
    partition: int
    offset: int
    key: str | None
    envelope: Envelope[M_co]
    timestamp_ms: int

    @property
    def message(self) -> M_co:
        return self.envelope.message


# A service's handler of the events of one message class (or several), in offset order.
ClassHandler = Callable[[Sequence[ConsumedEvent[Any]]], Awaitable[None]]
HandlerTable = Mapping[type[Message], ClassHandler]


async def dispatch(events: Sequence[ConsumedEvent[Message]], table: HandlerTable) -> None:
    """Hand each handler of `table` the events of its classes, in offset order; handlers
    run at once (they must touch independent state). Unlisted classes are passed over.
    gather raises the first failure; the runner then retries the whole batch, which the
    handlers' idempotence makes harmless."""
    by_handler: dict[ClassHandler, list[ConsumedEvent[Message]]] = {}
    for event in events:
        handler = table.get(type(event.message))
        if handler is not None:
            by_handler.setdefault(handler, []).append(event)
    await asyncio.gather(*(handler(batch) for handler, batch in by_handler.items()))
