import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest

from services.common import auth
from services.common.auth import TokenVerifier, decode_token, mint_token, require_role
from services.common.problems import ProblemError

SECRET = "k" * 32


def test_minted_token_decodes_to_its_principal() -> None:
    token = mint_token(SECRET, sub="staff-1", role="warehouse", warehouse_id="wh-1")
    who = decode_token(SECRET, token)
    assert (who.sub, who.role, who.warehouse_id) == ("staff-1", "warehouse", "wh-1")


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        mint_token("another-secret-of-32-characters!", sub="a", role="admin"),
        jwt.encode({"sub": "a", "role": "admin", "exp": int(time.time()) - 5}, SECRET),
        jwt.encode({"sub": "a", "role": "admin"}, SECRET),
        jwt.encode({"sub": "a", "role": "king", "exp": int(time.time()) + 60}, SECRET),
        jwt.encode({"sub": "a", "role": "warehouse", "exp": int(time.time()) + 60}, SECRET),
        jwt.encode(
            {"sub": "a", "role": "admin", "exp": int(time.time()) + 60}, SECRET * 2, "HS512"
        ),
    ],
)
def test_bad_tokens_are_401(token: str) -> None:
    with pytest.raises(ProblemError) as caught:
        decode_token(SECRET, token)
    assert caught.value.status == 401


def test_wrong_role_is_403() -> None:
    who = decode_token(SECRET, mint_token(SECRET, sub="b", role="buyer"))
    assert require_role(who, "buyer", "admin") is who
    with pytest.raises(ProblemError) as caught:
        require_role(who, "payments", "admin")
    assert caught.value.status == 403


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "a", "role": ["admin"]},
        {"sub": "a", "role": {"admin": 1}},
        {"sub": "a", "role": "admin", "exp": "9999999999"},
        {"sub": "a", "role": "warehouse", "warehouse_id": ""},
        {"sub": ["a"], "role": "admin"},
    ],
)
def test_claims_of_the_wrong_type_are_401_not_500(claims: dict[str, object]) -> None:
    token = jwt.encode({"exp": int(time.time()) + 60, **claims}, SECRET)
    with pytest.raises(ProblemError) as caught:
        TokenVerifier(SECRET).verify(token)
    assert caught.value.status == 401


def counting_claims(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count full verifications (signature and claims) from here on."""
    real = auth._claims
    calls: list[str] = []

    def counting(secret: str, token: str) -> Any:
        calls.append(token)
        return real(secret, token)

    monkeypatch.setattr(auth, "_claims", counting)
    return calls


def test_the_verifier_serves_a_verified_token_from_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verifier = TokenVerifier(SECRET)
    token = mint_token(SECRET, sub="b", role="buyer", ttl_s=60)
    first = verifier.verify(token)
    calls = counting_claims(monkeypatch)
    assert verifier.verify(token) is first and calls == [], "served from the cache"


def test_a_cached_token_is_refused_once_its_exp_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verifier = TokenVerifier(SECRET)
    token = mint_token(SECRET, sub="b", role="buyer", ttl_s=60)
    verifier.verify(token)
    calls = counting_claims(monkeypatch)
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(ProblemError) as caught:
        verifier.verify(token)
    assert caught.value.status == 401 and "expired" in caught.value.detail
    assert calls == [token], "past its exp, a cached token is checked again"


def _jws(header: dict[str, object], claims: dict[str, object], key: str = SECRET) -> str:
    """A token signed by hand, to build what PyJWT would refuse to mint."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


FUTURE = int(time.time()) + 600
PAST = int(time.time()) - 600


@pytest.mark.parametrize(
    ("token", "accepted"),
    [
        (jwt.encode({"sub": "a", "role": "admin", "exp": FUTURE}, SECRET), True),
        (
            jwt.encode(
                {"sub": "a", "role": "admin", "exp": FUTURE, "iat": PAST, "nbf": PAST}, SECRET
            ),
            True,
        ),
        (_jws({"alg": "HS256", "typ": "JWT"}, {"sub": "a", "role": "admin", "exp": FUTURE}), True),
        (_jws({"alg": "none"}, {"sub": "a", "role": "admin", "exp": FUTURE}), False),
        (_jws({"alg": "HS512"}, {"sub": "a", "role": "admin", "exp": FUTURE}), False),
        (_jws({"alg": "HS256"}, {"sub": "a", "role": "admin", "exp": FUTURE}, "x" * 32), False),
        (_jws({"alg": "HS256"}, {"sub": "a", "role": "admin", "exp": PAST}), False),
        (_jws({"alg": "HS256"}, {"sub": "a", "role": "admin", "exp": True}), False),
        (
            _jws({"alg": "HS256"}, {"sub": "a", "role": "admin", "exp": FUTURE, "nbf": FUTURE}),
            False,
        ),
        (
            _jws({"alg": "HS256"}, {"sub": "a", "role": "admin", "exp": FUTURE, "iat": FUTURE}),
            False,
        ),
        (_jws({"alg": "HS256"}, {"sub": "a", "role": "admin", "exp": FUTURE, "aud": "x"}), False),
        (_jws({"alg": "HS256"}, {"sub": "a", "role": "admin", "exp": FUTURE, "iat": "1"}), False),
        (_jws(["HS256"], {"sub": "a", "role": "admin", "exp": FUTURE}), False),  # type: ignore[arg-type]
        (_jws({"alg": "HS256"}, ["a"]), False),  # type: ignore[arg-type]
        ("a.b", False),
        ("a.b.c.d", False),
        ("é.b.c", False),
        ("!!.??.**", False),
    ],
)
def test_only_hs256_tokens_signed_with_the_secret_and_in_date_are_accepted(
    token: str, accepted: bool
) -> None:
    try:
        who = decode_token(SECRET, token)
    except ProblemError as refused:
        assert not accepted, refused.detail
        assert refused.status == 401
    else:
        assert accepted and who.sub == "a"


def test_a_tampered_payload_is_refused() -> None:
    header, payload, signature = mint_token(SECRET, sub="b", role="buyer").split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    with pytest.raises(ProblemError) as caught:
        decode_token(SECRET, f"{header}.{forged}.{signature}")
    assert caught.value.status == 401


def test_the_verifier_is_bounded() -> None:
    verifier = TokenVerifier(SECRET, max_entries=3)
    tokens = [mint_token(SECRET, sub=f"b{n}", role="buyer") for n in range(10)]
    assert [verifier.verify(t).sub for t in tokens] == [f"b{n}" for n in range(10)]
    assert len(verifier._verified) <= 3
