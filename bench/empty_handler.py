"""L0 of `make bench`: the cheapest aiohttp JSON POST handler, as its own process.

It does what every order request costs at least (aiohttp parses the request, the handler
reads the body, `orjson.loads` it and answers a small JSON) and nothing else, so the
order path's req/s divided by this one's says how far the order path is from the speed of
the web framework on this machine.

    python -m bench.empty_handler --port 8090 [--loop uvloop|asyncio]

It runs on the event loop the services run on (`LC_EVENT_LOOP`, uvloop unless set to
asyncio; the harness passes the stack's choice), so the ratio compares handlers, not
loops. `GET /healthz` answers 200 (the harness polls it to know the process is serving).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import sys
from collections.abc import Sequence

import orjson
from aiohttp import web

ANSWER = orjson.dumps({"order_id": "0" * 32, "status": "reserved"})


async def post(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(body=ANSWER, status=201, content_type="application/json")


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/{tail:.*}", post)
    return app


def default_loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        loop: asyncio.AbstractEventLoop = importlib.import_module("uvloop").new_event_loop()
        return loop
    return asyncio.new_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default=default_loop())
    args = parser.parse_args(argv)
    # No access log: the services run without one too (services/common/web_app.py).
    web.run_app(
        create_app(),
        loop=new_loop(args.loop),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
