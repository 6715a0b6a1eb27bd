import time

import jwt
import pytest

from services.common.auth import decode_token, mint_token, require_role
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
