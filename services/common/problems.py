"""RFC 9457 problem details: every error answer of every service is one of these."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://livecommerce.example/problems/"


class ProblemError(Exception):
    """Raise anywhere in a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail or title
        self.type = type_ or TYPE_BASE + title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> web.Response:
        return problem_response(
            self.status,
            self.title,
            self.detail,
            type_=self.type,
            headers=self.headers,
            **self.extra,
        )


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body = {
        "type": type_ or TYPE_BASE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def bad_request(detail: str) -> ProblemError:
    return ProblemError(400, "Bad Request", detail)


def unprocessable(detail: str) -> ProblemError:
    return ProblemError(422, "Unprocessable Content", detail)


def not_found(detail: str = "no such resource") -> ProblemError:
    return ProblemError(404, "Not Found", detail)


def conflict(detail: str) -> ProblemError:
    return ProblemError(409, "Conflict", detail)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )
