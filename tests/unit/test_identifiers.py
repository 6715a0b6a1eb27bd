"""The one id grammar (services/common/identifiers.py), and the request-body schemas held
to it."""

from __future__ import annotations

import pytest

from services.common.identifiers import ID_PATTERN, is_valid_id
from services.common.schemas import SCHEMAS_DIR, integer_fields, schema

# Body fields that name an id; each must carry the grammar's pattern in every schema.
ID_FIELDS = {"sku", "lot_code", "warehouse_id", "session_id", "order_id", "pick_id"}

VALID = [
    "a",
    "0f3a9c2e4b7d4e1f8a6b5c4d3e2f1a0b",  # a uuid4 hex (session ids)
    "6f1c0a52-4c1e-5b7a-9d3e-0b8f3a2c1d4e",  # a uuid5 text (pick ids)
    "crab-9",
    "Crab.v2:hz_1-a",
    "x" * 64,
]
INVALID = [
    "",
    "x" * 65,
    "x" * 3000,
    "-lead",
    ".lead",
    "a}b",
    "{a}",
    "a/b",
    "a%00b",
    "a\x00b",
    "a\nb",
    "crab\n",  # `$` alone would let this one through
    "a b",
    "a\tb",
    "crêpe",
    "ab\x7f",
]


@pytest.mark.parametrize("value", VALID)
def test_valid_ids(value: str) -> None:
    assert is_valid_id(value)


@pytest.mark.parametrize("value", INVALID)
def test_invalid_ids(value: str) -> None:
    assert not is_valid_id(value)


def test_non_strings_are_not_ids() -> None:
    assert not is_valid_id(None)
    assert not is_valid_id(12)
    assert not is_valid_id(["a"])


def test_every_id_field_of_every_request_body_schema_has_the_grammar() -> None:
    seen = []
    for path in sorted((SCHEMAS_DIR / "http").glob("*.json")):
        relative = f"http/{path.name}"
        for name, rule in schema(relative).get("properties", {}).items():
            if name in ID_FIELDS:
                assert rule.get("pattern") == ID_PATTERN, (relative, name, rule)
                seen.append((path.name, name))
    # listing-create and order-place name a sku, lot-upsert a warehouse.
    assert len(seen) >= 3, seen


def test_integer_fields_come_from_the_schemas() -> None:
    assert integer_fields("http/lot-upsert.json") == {"quantity"}
    assert integer_fields("http/listing-create.json") == {"price_cents", "per_user_limit"}
    assert integer_fields("http/payment.json") == {"amount_cents"}
    assert integer_fields("http/session-create.json") == frozenset()
