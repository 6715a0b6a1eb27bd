"""Who may watch what, and from which page: checks shared by the live endpoints."""

from __future__ import annotations

import asyncio

from aiohttp import web
from yarl import URL

from services.common.auth import Principal, forbidden
from services.common.problems import ProblemError, not_found
from services.notifier.projection_store import ProjectionStore

# How long a subscription to a session the notifier has not heard of yet waits for it.
SESSION_GRACE_S = 2.0


def check_origin(request: web.Request, allowed: tuple[str, ...]) -> None:
    """Refuse (403) a browser page of another origin. Clients that send no Origin (not a
    browser) and pages served from this very origin (scheme, host and port) pass; others
    only when listed in `LC_ALLOWED_ORIGINS` (`*` allows every origin)."""
    origin = request.headers.get("Origin")
    if origin is None or "*" in allowed or origin in allowed:
        return
    if not _same_origin(origin, _request_scheme(request), request.host):
        raise ProblemError(403, "Forbidden", f"origin {origin!r} is not allowed")


def _request_scheme(request: web.Request) -> str:
    """The scheme the browser used. Behind a TLS-terminating proxy (the ingress) an https
    page's request arrives over http, and the proxy says so in X-Forwarded-Proto. A page
    cannot set that header itself (not on a WebSocket or EventSource, and a fetch with it
    needs a CORS preflight this service never grants), so it cannot pass for this origin
    with it."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return forwarded if forwarded in ("http", "https") else request.scheme


def _same_origin(origin: str, scheme: str, host_header: str) -> bool:
    """RFC 6454: the same scheme, host and port (an https page is another origin than
    http on the same host and port)."""
    try:
        page = URL(origin)
        here = URL(f"{scheme}://{host_header}")
    except ValueError:
        return False
    if page.scheme not in ("http", "https") or not page.host:
        return False
    return (page.scheme, page.host.lower(), page.port) == (
        here.scheme,
        (here.host or "").lower(),
        here.port,
    )


async def require_session_watcher(
    who: Principal, session_id: str, projection: ProjectionStore
) -> None:
    """The session's host or an admin; anyone else learns nothing about the session.

    DESIGN 4.5 answers 404 to any caller who may not watch the session, so a wrong role
    (buyer, warehouse, payments) gets the same 404 as another host or a session that does
    not exist, not the generic wrong-role 403 of 4.2: one refusal for every outsider."""
    if who.role not in ("host", "admin"):
        raise not_found("no such session")
    session = await projection.session(session_id)
    # A session reaches the notifier through Kafka (session.updated): a host who opens the
    # dashboard right after creating the session must not get a 404 for the few
    # milliseconds the event is in flight. Only an unknown session waits, and briefly.
    deadline = asyncio.get_running_loop().time() + SESSION_GRACE_S
    while session is None and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        session = await projection.session(session_id)
    if session is None or (who.role == "host" and session.host_id != who.sub):
        raise not_found("no such session")


def require_warehouse_staff(who: Principal, warehouse_id: str) -> None:
    """Staff of that warehouse or an admin; staff of another warehouse get 404."""
    if who.role not in ("warehouse", "admin"):
        raise forbidden(f"role {who.role!r} may not see pick tasks")
    if who.role == "warehouse" and who.warehouse_id != warehouse_id:
        raise not_found("no such warehouse")
