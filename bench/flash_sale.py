"""A simulated live flash sale, driven through the public HTTP API only (DESIGN 4).

Used by `make demo` (bench/demo.py), the benchmark (bench/reserve_burst.py) and the
end-to-end tests, so all three exercise the stack the same way a real client would.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from services.common.auth import Role, mint_token


@dataclass(frozen=True)
class Endpoints:
    live_orders: str
    inventory: str
    notifier: str
    jwt_secret: str

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Endpoints:
        return cls(
            live_orders=env["LC_LIVE_ORDERS_URL"],
            inventory=env["LC_INVENTORY_URL"],
            notifier=env["LC_NOTIFIER_URL"],
            jwt_secret=env["LC_JWT_SECRET"],
        )


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    seconds: float


@dataclass(frozen=True)
class Attempt:
    buyer: str
    key: str
    quantity: int
    answer: Answer
    started: float  # time.monotonic() when the request was sent


class ApiError(RuntimeError):
    pass


class SaleClient:
    """Thin client over the public API; tokens minted with the stack's secret."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        endpoints: Endpoints,
        live_orders_urls: Sequence[str] | None = None,
    ) -> None:
        self.http = http
        self.endpoints = endpoints
        # Several live_orders processes stand in for a load balancer: round robin.
        self._order_urls = list(live_orders_urls or [endpoints.live_orders])
        self._next = 0
        self._tokens: dict[tuple[str, str, str | None], str] = {}

    def token(self, role: Role, sub: str, warehouse_id: str | None = None) -> str:
        key = (role, sub, warehouse_id)
        if key not in self._tokens:
            self._tokens[key] = mint_token(
                self.endpoints.jwt_secret,
                sub=sub,
                role=role,
                warehouse_id=warehouse_id,
                ttl_s=12 * 3600,
            )
        return self._tokens[key]

    def headers(self, role: Role, sub: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}", **extra}

    def _orders_url(self) -> str:
        url = self._order_urls[self._next % len(self._order_urls)]
        self._next += 1
        return url

    async def call(
        self, method: str, url: str, *, headers: dict[str, str], json: Any = None
    ) -> Answer:
        started = time.perf_counter()
        async with self.http.request(method, url, headers=headers, json=json) as response:
            body = await response.json(content_type=None) if response.content_length != 0 else None
            return Answer(response.status, body, time.perf_counter() - started)

    async def expect(
        self, method: str, url: str, *, role: Role, sub: str, json: Any = None, ok: Sequence[int]
    ) -> Any:
        answer = await self.call(method, url, headers=self.headers(role, sub), json=json)
        if answer.status not in ok:
            raise ApiError(f"{method} {url} -> {answer.status}: {answer.body}")
        return answer.body

    # ------------------------------------------------------------------ set-up

    async def put_lot(
        self,
        sku: str,
        lot_code: str,
        *,
        warehouse_id: str,
        quantity: int,
        expires_on: str | None = None,
        origin: str | None = None,
        **trace: str,
    ) -> Any:
        """`trace`: the lot's other trace fields (producer, harvested_on, inspection)."""
        body: dict[str, Any] = {"warehouse_id": warehouse_id, "quantity": quantity, **trace}
        if expires_on is not None:
            body["expires_on"] = expires_on
        if origin is not None:
            body["origin"] = origin
        return await self.expect(
            "PUT",
            f"{self.endpoints.inventory}/v1/skus/{sku}/lots/{lot_code}",
            role="admin",
            sub="ops",
            json=body,
            ok=(200, 201),
        )

    async def sku(self, sku: str) -> Any:
        return await self.expect(
            "GET", f"{self.endpoints.inventory}/v1/skus/{sku}", role="admin", sub="ops", ok=(200,)
        )

    async def create_live_session(
        self,
        *,
        host_id: str,
        title: str,
        listings: Sequence[dict[str, Any]],
        start: bool = True,
        pavilion: str | None = None,
    ) -> Any:
        base = self.endpoints.live_orders
        body = {"title": title} if pavilion is None else {"title": title, "pavilion": pavilion}
        session = await self.expect(
            "POST", f"{base}/v1/sessions", role="host", sub=host_id, json=body, ok=(201,)
        )
        session_id = session["session_id"]
        for listing in listings:
            await self.expect(
                "POST",
                f"{base}/v1/sessions/{session_id}/listings",
                role="host",
                sub=host_id,
                json=dict(listing),
                ok=(201,),
            )
        if start:
            session = await self.expect(
                "POST",
                f"{base}/v1/sessions/{session_id}/start",
                role="host",
                sub=host_id,
                ok=(200,),
            )
        return session

    async def start_sale(
        self,
        sku: str,
        *,
        units: int,
        host_id: str,
        price_cents: int,
        per_user_limit: int,
        warehouse_id: str = "wh-1",
        title: str = "flash sale",
    ) -> str:
        """Stock `units` of `sku` in one lot, and a live session selling it; its id."""
        await self.put_lot(sku, "LOT-A", warehouse_id=warehouse_id, quantity=units)
        session = await self.create_live_session(
            host_id=host_id,
            title=title,
            listings=[
                {
                    "sku": sku,
                    "title": title,
                    "price_cents": price_cents,
                    "per_user_limit": per_user_limit,
                }
            ],
        )
        return str(session["session_id"])

    # ------------------------------------------------------------------ buying

    async def place_order(
        self, *, buyer: str, session_id: str, sku: str, quantity: int, key: str, wait: float = 2
    ) -> Answer:
        url = f"{self._orders_url()}/v1/sessions/{session_id}/orders?wait={wait:g}"
        return await self.call(
            "POST",
            url,
            headers=self.headers("buyer", buyer, **{"Idempotency-Key": key}),
            json={"sku": sku, "quantity": quantity},
        )

    async def order(self, *, buyer: str, order_id: str, wait: float = 0) -> Answer:
        url = f"{self._orders_url()}/v1/orders/{order_id}?wait={wait:g}"
        return await self.call("GET", url, headers=self.headers("buyer", buyer))

    async def pay(self, order_id: str, amount_cents: int, payment_ref: str) -> Answer:
        return await self.call(
            "POST",
            f"{self._orders_url()}/v1/orders/{order_id}/payment",
            headers=self.headers("payments", "psp"),
            json={"payment_ref": payment_ref, "amount_cents": amount_cents},
        )

    async def cancel(self, *, buyer: str, order_id: str) -> Answer:
        return await self.call(
            "POST",
            f"{self._orders_url()}/v1/orders/{order_id}/cancel",
            headers=self.headers("buyer", buyer),
        )


@dataclass
class BurstResult:
    attempts: list[Attempt] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    final: dict[str, Any] = field(default_factory=dict)  # order_id -> last order body seen

    def statuses(self) -> Counter[int]:
        return Counter(a.answer.status for a in self.attempts)

    def reasons(self) -> Counter[str]:
        return Counter(
            a.answer.body.get("reason", "?")
            for a in self.attempts
            if a.answer.status == 409 and isinstance(a.answer.body, dict)
        )

    def reserved(self) -> list[Attempt]:
        return [a for a in self.attempts if a.answer.status == 201]

    def units_by_buyer(self) -> dict[str, int]:
        units: dict[str, int] = defaultdict(int)
        for order in self.final.values():
            if order.get("status") in ("reserved", "paid"):
                units[order["buyer"]] += order["quantity"]
        return dict(units)

    def latency(self, q: float) -> float:
        values = sorted(a.answer.seconds for a in self.attempts)
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(q * len(values)))]

    def sold_out_after(self) -> float | None:
        """Seconds from the first attempt to the first `sold_out` answer."""
        times = [
            a.started + a.answer.seconds
            for a in self.attempts
            if a.answer.status == 409
            and isinstance(a.answer.body, dict)
            and a.answer.body.get("reason") == "sold_out"
        ]
        return min(times) - self.started if times else None

    def median(self) -> float:
        return statistics.median(a.answer.seconds for a in self.attempts) if self.attempts else 0.0


async def run_burst(
    client: SaleClient,
    *,
    session_id: str,
    sku: str,
    buyers: int,
    attempts: int,
    max_quantity: int,
    concurrency: int = 200,
    seed: int = 7,
    progress: Callable[[int, int], None] | None = None,
    buyer_prefix: str | None = None,
    spread_s: float = 0.0,
) -> BurstResult:
    """`attempts` presses of *buy* spread over `buyers` viewers, `concurrency` in flight;
    with `spread_s`, offered evenly over that many seconds (a load that must outlast a
    fault however fast the stack answers), else all at once. Every 202 is followed up
    with a long-poll until the order is decided."""
    rng = random.Random(seed)
    prefix = buyer_prefix or f"viewer-{uuid.uuid4().hex[:6]}"
    plan = [
        (f"{prefix}-{rng.randrange(buyers)}", rng.randint(1, max_quantity), uuid.uuid4().hex)
        for _ in range(attempts)
    ]
    result = BurstResult(started=time.monotonic())
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def press(index: int, buyer: str, quantity: int, key: str) -> None:
        nonlocal done
        if spread_s > 0:
            await asyncio.sleep(result.started + index * spread_s / attempts - time.monotonic())
        async with gate:
            started = time.monotonic()
            answer = await client.place_order(
                buyer=buyer, session_id=session_id, sku=sku, quantity=quantity, key=key
            )
            order = answer.body if isinstance(answer.body, dict) else {}
            while answer.status == 202:
                follow = await client.order(buyer=buyer, order_id=order["order_id"], wait=5)
                if follow.status != 200:
                    # Accepted, but not readable now (503 while a backend fails over): it
                    # stays a 202, kept in `final` for read_back to settle. Never taken
                    # for a rejection (a problem+json body has a numeric `status`).
                    break
                order = follow.body
                if order.get("status") != "pending":
                    answer = Answer(
                        201 if order["status"] == "reserved" else 409, order, answer.seconds
                    )
        result.attempts.append(Attempt(buyer, key, quantity, answer, started))
        if order.get("order_id"):
            result.final[order["order_id"]] = {**order, "buyer": buyer, "quantity": quantity}
        done += 1
        if progress is not None:
            progress(done, attempts)

    await asyncio.gather(*(press(i, *p) for i, p in enumerate(plan)))
    result.finished = time.monotonic()
    return result


async def read_back(
    client: SaleClient, result: BurstResult, *, rounds: int = 1, concurrency: int = 100
) -> dict[str, dict[str, Any]]:
    """Every order the burst created, as live_orders has it now (order_id -> order).
    Each read long-polls up to 10 s while the order is pending, `rounds` times at most."""
    gate = asyncio.Semaphore(concurrency)

    async def read(order_id: str, buyer: str) -> tuple[str, dict[str, Any]]:
        async with gate:
            for _ in range(rounds):
                answer = await client.order(buyer=buyer, order_id=order_id, wait=10)
                if answer.status != 200:
                    raise ApiError(f"GET order {order_id} -> {answer.status}: {answer.body}")
                if answer.body["status"] != "pending":
                    break
            return order_id, answer.body

    pairs = await asyncio.gather(*(read(oid, o["buyer"]) for oid, o in result.final.items()))
    return dict(pairs)


async def pay_orders(
    client: SaleClient, orders: Sequence[dict[str, Any]], concurrency: int = 100
) -> list[Answer]:
    gate = asyncio.Semaphore(concurrency)

    async def pay(order: dict[str, Any]) -> Answer:
        async with gate:
            return await client.pay(
                order["order_id"], order["total_cents"], f"pay-{order['order_id']}"
            )

    return list(await asyncio.gather(*(pay(o) for o in orders)))


def text_progress(label: str, width: int = 40) -> Callable[[int, int], None]:
    """A progress bar on one terminal line, redrawn at most 20 times a second; on a
    non-terminal (CI logs, pipes) one line per 10 %."""
    last = [0.0, -1.0]
    tty = sys.stdout.isatty()

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if tty and done != total and now - last[0] < 0.05:
            return
        if not tty and done != total and int(10 * done / total) == last[1]:
            return
        last[0], last[1] = now, int(10 * done / total)
        filled = int(width * done / total)
        bar = "█" * filled + "·" * (width - filled)
        print(
            f"\r{label} [{bar}] {done}/{total}",
            end="" if tty and done != total else "\n",
            flush=True,
        )

    return show
