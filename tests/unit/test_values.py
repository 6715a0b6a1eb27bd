"""Value classes: what a frozen dataclass promised, kept where it matters. Equal and
hashed by their fields, slotted (no stray attributes), and frozen to the type checker:
mypy refuses an assignment to a field, which is what keeps them unchanged in the code."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from services.common.values import value_class


@value_class
class Point:
    x: int
    y: int = 0


def test_equal_and_hashed_by_their_fields() -> None:
    assert Point(1, 2) == Point(1, 2) != Point(1, 3)
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert len({Point(1, 2), Point(1, 2), Point(2)}) == 2


def test_slotted() -> None:
    with pytest.raises(AttributeError):
        Point(1).z = 3  # type: ignore[attr-defined]


def test_mypy_refuses_an_assignment_to_a_field(tmp_path: Path) -> None:
    source = tmp_path / "assigns.py"
    source.write_text(
        textwrap.dedent(
            """
            from services.common.messages import OrderPaid
            from services.common.values import value_class

            @value_class
            class Point:
                x: int

            Point(1).x = 2
            paid = OrderPaid("o", "s", "sku", "b", 1, "ref", 100)
            paid.amount_cents = 1
            """
        )
    )
    out, _, status = mypy_api.run(
        ["--no-incremental", "--follow-imports=silent", "--no-error-summary", str(source)]
    )
    assert status == 1
    assert out.count("is read-only") == 2, out
