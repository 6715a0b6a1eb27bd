"""Hypothesis fuzz of what outsiders control: Kafka message values (the event decoder)
and bearer tokens (the verifier). Each property is bounded to stay fast."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.auth import ROLES, TokenVerifier, decode_token, mint_token
from services.common.events import InvalidEvent, decode, encode, receive
from services.common.messages import MESSAGE_TYPES
from services.common.problems import ProblemError
from tests.events import event

SECRET = "fuzz-secret-" + "z" * 24
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
ENVELOPE_KEYS = ("event_id", "type", "version", "occurred_at", "source", "trace_id", "data")
KNOWN_TYPES = sorted({type_ for type_, _ in MESSAGE_TYPES})


def _decodes_or_refuses(raw: bytes | None) -> None:
    try:
        decode(raw)
    except InvalidEvent as refused:
        assert refused.reason


# ------------------------------------------------------------------------- the decoder


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_an_event_or_invalid(raw: bytes) -> None:
    _decodes_or_refuses(raw)


@FAST
@given(json_values)
def test_arbitrary_json_is_an_event_or_invalid(value: Any) -> None:
    _decodes_or_refuses(orjson.dumps(value))


envelopes_of_any_data = st.fixed_dictionaries(
    {
        "event_id": st.one_of(st.text(max_size=40), json_values),
        "type": st.one_of(st.sampled_from(KNOWN_TYPES), st.text(max_size=20), json_values),
        "version": st.one_of(st.just(1), st.integers(-(2**63), 2**64 - 1), json_values),
        "occurred_at": st.one_of(st.just("2026-11-28T12:00:00.000Z"), json_values),
        "source": st.one_of(st.just("fuzz"), json_values),
        "trace_id": st.one_of(st.just(""), json_values),
        "data": st.one_of(
            st.dictionaries(
                st.sampled_from(
                    [
                        "order_id",
                        "session_id",
                        "sku",
                        "buyer_id",
                        "quantity",
                        "warehouse_id",
                        "pick_id",
                        "lot_code",
                        "reason",
                        "status",
                        "listings",
                        "levels",
                    ]
                ),
                json_values,
                max_size=8,
            ),
            json_values,
        ),
    }
)


@FAST
@given(envelopes_of_any_data, st.sets(st.sampled_from(ENVELOPE_KEYS), max_size=2))
def test_envelopes_of_known_types_with_any_data_are_an_event_or_invalid(
    document: dict[str, Any], dropped: set[str]
) -> None:
    for key in dropped:
        document.pop(key)
    raw = orjson.dumps(document)
    try:
        received = receive(raw)
    except InvalidEvent:
        return
    assert received.type == document["type"]
    _decodes_or_refuses(raw)


ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)


placed = st.fixed_dictionaries(
    {
        "order_id": ids,
        "session_id": ids,
        "sku": ids,
        "buyer_id": ids,
        "quantity": st.integers(min_value=1, max_value=1000),
        "unit_price_cents": st.integers(min_value=0, max_value=10**9),
    }
)


@FAST
@given(placed, st.text(min_size=1, max_size=20))
def test_valid_events_round_trip(data: dict[str, Any], source: str) -> None:
    data = {
        **data,
        "total_cents": data["quantity"] * data["unit_price_cents"],
        "per_user_limit": data["quantity"],
        "placed_at": "2026-11-28T12:00:00.000Z",
    }
    envelope = event("order.placed", data, source=source)
    decoded = decode(encode(envelope))
    assert decoded == envelope
    assert encode(decoded) == encode(envelope)


@pytest.mark.parametrize(
    "raw", [b'{"version": 1' + b"9" * 40 + b"}", b"1e999", b'"\\ud800"', b"\xff\xfe{}"]
)
def test_numbers_and_text_json_cannot_hold_are_invalid(raw: bytes) -> None:
    _decodes_or_refuses(raw)


def test_the_decoder_refuses_the_tombstone() -> None:
    with pytest.raises(InvalidEvent, match="tombstone"):
        decode(None)


# --------------------------------------------------------------------------- tokens


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed(header: Any, claims: Any, key: str = SECRET) -> str:
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _verdict(token: str) -> Any:
    """The principal, or None for the 401 problem; anything else raised fails the test."""
    try:
        who = TokenVerifier(SECRET).verify(token)
    except ProblemError as refused:
        assert refused.status == 401, refused
        return None
    assert decode_token(SECRET, token) == who
    return who


@FAST
@given(st.text(max_size=200))
def test_arbitrary_text_tokens_are_refused_with_401(token: str) -> None:
    assert _verdict(token) is None


@FAST
@given(st.lists(st.text(alphabet="ABCxyz019-_=+/.!é", max_size=40), min_size=3, max_size=3))
def test_arbitrary_three_part_tokens_are_refused_with_401(parts: list[str]) -> None:
    assert _verdict(".".join(parts)) is None


def valid_claims() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda role, sub, wh, ttl: {
            "sub": sub,
            "role": role,
            "exp": int(time.time()) + ttl,
            **({"warehouse_id": wh} if role == "warehouse" else {}),
        },
        st.sampled_from(sorted(ROLES)),
        st.text(min_size=1, max_size=20),
        st.text(min_size=1, max_size=10),
        st.integers(min_value=60, max_value=10**6),
    )


@FAST
@given(
    st.one_of(valid_claims(), json_values),
    st.one_of(st.just({"alg": "HS256", "typ": "JWT"}), json_values),
    st.sampled_from([SECRET, "another-secret-" + "y" * 24]),
)
def test_only_correctly_signed_unexpired_tokens_with_valid_claims_pass(
    claims: Any, header: Any, key: str
) -> None:
    who = _verdict(_signed(header, claims, key))
    valid = (
        key == SECRET
        and isinstance(header, dict)
        and header.get("alg") == "HS256"
        and isinstance(claims, dict)
        and isinstance(claims.get("role"), str)
        and claims["role"] in ROLES
        and isinstance(claims.get("sub"), str)
        and claims["sub"] != ""
        and isinstance(claims.get("exp"), int | float)
        and not isinstance(claims.get("exp"), bool)
        and claims["exp"] > time.time()
        and (claims["role"] != "warehouse" or bool(claims.get("warehouse_id")))
        and not {"aud", "nbf", "iat"} & claims.keys()
    )
    assert (who is not None) == valid, (header, claims, key == SECRET)
    if who is not None:
        assert (who.sub, who.role) == (claims["sub"], claims["role"])


@FAST
@given(valid_claims(), st.integers(min_value=1, max_value=10**6))
def test_expired_tokens_are_refused(claims: dict[str, Any], age_s: int) -> None:
    claims["exp"] = int(time.time()) - age_s
    assert _verdict(_signed({"alg": "HS256"}, claims)) is None


@FAST
@given(valid_claims())
def test_alg_none_and_other_algorithms_are_refused(claims: dict[str, Any]) -> None:
    unsigned = f"{_b64(orjson.dumps({'alg': 'none'}))}.{_b64(orjson.dumps(claims))}."
    assert _verdict(unsigned) is None
    assert _verdict(_signed({"alg": "HS512"}, claims)) is None
    minted = mint_token(
        SECRET, sub=claims["sub"], role=claims["role"], warehouse_id=claims.get("warehouse_id")
    )
    assert _verdict(minted) is not None
