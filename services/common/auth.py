"""Bearer JWTs (HS256, `LC_JWT_SECRET`) and role checks, per DESIGN 4.2."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

import jwt
from aiohttp import web

from services.common.problems import ProblemError

Role = Literal["buyer", "host", "warehouse", "payments", "admin"]
ROLES: frozenset[str] = frozenset({"buyer", "host", "warehouse", "payments", "admin"})


@dataclass(frozen=True, slots=True)
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
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["exp", "sub", "role"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise unauthorized("token expired") from exc
    except jwt.PyJWTError as exc:
        raise unauthorized(f"invalid token: {exc}") from exc
    role = claims.get("role")
    sub = claims.get("sub")
    if role not in ROLES or not isinstance(sub, str) or not sub:
        raise unauthorized("token has no valid role or sub")
    warehouse_id = claims.get("warehouse_id")
    if role == "warehouse" and not isinstance(warehouse_id, str):
        raise unauthorized("warehouse token without warehouse_id")
    return Principal(
        sub=sub,
        role=cast(Role, role),
        warehouse_id=warehouse_id if isinstance(warehouse_id, str) else None,
    )


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(request: web.Request, secret: str) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise unauthorized("missing bearer token")
    return decode_token(secret, token)


def require_role(principal: Principal, *roles: Role) -> Principal:
    if principal.role not in roles:
        raise forbidden(f"role {principal.role!r} may not do this")
    return principal
