"""The ending every chaos test shares: the figures of the run, then the reconciliation of
the Kafka log with inventory's Redis and live_orders' orders (services.inventory.reconcile),
which must find nothing."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable

from services.common.settings import Settings
from services.inventory.reconcile import Report, reconcile
from services.inventory.reconciliation import render_table
from tests.waiting import eventually


async def reconciled(
    settings: Settings, *, label: str, accepted: int, final_states: Iterable[str]
) -> Report:
    """Print orders accepted, final states reached and the reconciliation's differences;
    the report (the caller asserts it found none).

    A difference that is only in flight (an outcome the consumers are still applying when
    the test's last read came back) goes away within a few seconds; one that stays is real.
    """
    last: list[Report] = []

    async def agree() -> bool:
        last[:] = [await reconcile(settings)]
        return not last[0].differences

    # A disagreement that stays is reported below and asserted by the caller.
    with contextlib.suppress(AssertionError):
        await eventually(agree, timeout=15, interval=0.5, what="log and stores agree")
    report = last[0]
    states = Counter(final_states)
    print(
        f"\n{label}: orders accepted {accepted}; final states {dict(sorted(states.items()))}; "
        f"reconciliation: {report.events_read} events, {len(report.log.orders)} orders, "
        f"{len(report.differences)} differences"
    )
    if report.differences:
        print(render_table(report.differences[:50]))
    return report
