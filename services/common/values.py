"""Value classes: frozen to the type checker, plain slotted dataclasses at run time.

A frozen dataclass's `__init__` sets each field through `object.__setattr__`, about
0.1 µs a field: 2.3 µs for an `Order` instead of 0.5, and an order's path builds a few
dozen such fields in every process (its events decoded and built, its states, its
answers). `@value_class` makes the same class for mypy, which refuses any assignment to a
field (`dataclass_transform(frozen_default=True)`), while at run time it is a slotted
dataclass with the frozen one's equality and hash. Classes built once (settings, key
builders, metrics) stay `@dataclass(frozen=True)`: the check at run time costs them
nothing that matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value_class(cls: type[T]) -> type[T]:
    """`@dataclass(frozen=True, slots=True)` as mypy checks it, without the run-time
    cost of frozen fields."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
