"""Bearer JWTs (HS256, `LC_JWT_SECRET`) and role checks, per DESIGN 4.2."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Any, Literal, TypeGuard, cast

import jwt
import orjson
from aiohttp import web

from services.common.problems import ProblemError
from services.common.values import value_class

Role = Literal["buyer", "host", "warehouse", "payments", "admin"]
ROLES: frozenset[str] = frozenset({"buyer", "host", "warehouse", "payments", "admin"})


@value_class
class Principal:
    sub: str
    role: Role
    warehouse_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="livecommerce"'}
    )


def forbidden(detail: str) -> ProblemError:
    return ProblemError(403, "Forbidden", detail)


def mint_token(
    secret: str,
    *,
    sub: str,
    role: Role,
    warehouse_id: str | None = None,
    ttl_s: int = 3600,
) -> str:
    claims: dict[str, object] = {"sub": sub, "role": role, "exp": int(time.time()) + ttl_s}
    if warehouse_id is not None:
        claims["warehouse_id"] = warehouse_id
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_token(secret: str, token: str) -> Principal:
    """The principal of a valid token; raises 401 for anything else."""
    return _verify(secret, token)[0]


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _claims(secret: str, token: str) -> dict[str, Any]:
    """The claims of an HS256 JWS signed with `secret` (RFC 7515 compact form).

    What PyJWT's decode checked, in a tenth of its time (its key preparation, stdlib json
    and option handling cost more than the HMAC): the signature over the first two
    segments in constant time, the header's `alg` (HS256 only: no `none`, no other key
    type), then `exp` (required, a number, in the future), `nbf` and `iat` (numbers, not in
    the future) and no `aud` (this deployment names no audience, so a token meant for one
    is not for us). tests/unit/test_auth.py holds it to PyJWT's answers."""
    parts = token.split(".")
    if len(parts) != 3:
        raise unauthorized("invalid token: not a JWS in compact form")
    header_b64, payload_b64, signature_b64 = parts
    try:
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        signature = _b64url(signature_b64)
        expected = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
        if not hmac.compare_digest(signature, expected):
            raise unauthorized("invalid token: signature verification failed")
        header = orjson.loads(_b64url(header_b64))
        claims = orjson.loads(_b64url(payload_b64))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise unauthorized("invalid token: not decodable") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise unauthorized("invalid token: the algorithm must be HS256")
    if not isinstance(claims, dict):
        raise unauthorized("invalid token: claims are not an object")
    now = time.time()
    exp = claims.get("exp")
    if not _is_number(exp):
        raise unauthorized("token has no numeric exp")
    if exp <= now:
        raise unauthorized("token expired")
    for name in ("nbf", "iat"):
        if name in claims and (not _is_number(claims[name]) or claims[name] > now):
            raise unauthorized(f"invalid token: {name} is not a time in the past")
    if "aud" in claims:
        raise unauthorized("invalid token: it names an audience")
    return claims


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _verify(secret: str, token: str) -> tuple[Principal, float]:
    """The principal of a valid token and its expiry (epoch seconds); 401 otherwise."""
    claims = _claims(secret, token)
    role = claims.get("role")
    sub = claims.get("sub")
    if not isinstance(role, str) or role not in ROLES or not isinstance(sub, str) or not sub:
        raise unauthorized("token has no valid role or sub")
    warehouse_id = claims.get("warehouse_id")
    if role == "warehouse" and (not isinstance(warehouse_id, str) or not warehouse_id):
        raise unauthorized("warehouse token without warehouse_id")
    principal = Principal(
        sub=sub,
        role=cast(Role, role),
        warehouse_id=warehouse_id if isinstance(warehouse_id, str) else None,
    )
    return principal, float(claims["exp"])


class TokenVerifier:
    """`decode_token` with the verified tokens remembered until they expire.

    A buyer sends the same token with every press of *buy*; checking its HMAC and claims
    again each time cost about as much as the rest of a sold-out answer. A token is kept
    only after it verified with the secret, and only until its own `exp`, so the cache
    accepts exactly what `decode_token` accepts (an expired one is verified again, and
    refused). Bounded: past `max_entries` it starts over."""

    def __init__(self, secret: str, max_entries: int = 100_000) -> None:
        self._secret = secret
        self._max_entries = max_entries
        self._verified: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None and known[1] > time.time():
            return known[0]
        principal, exp = _verify(self._secret, token)
        if len(self._verified) >= self._max_entries:
            self._verified.clear()
        self._verified[token] = (principal, exp)
        return principal


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(request: web.Request, verifier: TokenVerifier) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise unauthorized("missing bearer token")
    return verifier.verify(token)


def require_role(principal: Principal, *roles: Role) -> Principal:
    if principal.role not in roles:
        raise forbidden(f"role {principal.role!r} may not do this")
    return principal
