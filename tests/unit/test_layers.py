"""Where the code may reach: domain modules import nothing that does I/O (not even through
another module of ours), and use cases and event handlers reach the servers only through
the stores and the publisher they are handed (Protocols), never by importing a client."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_PACKAGES = frozenset({"aiohttp", "aiokafka", "redis"})

DOMAIN = [
    "services/common/messages.py",
    "services/common/consumed.py",
    "services/live_orders/domain.py",
    "services/live_orders/order_events.py",
    "services/inventory/domain.py",
    "services/inventory/outcome_events.py",
    "services/inventory/lot_journal.py",
    "services/inventory/reconciliation.py",
    "services/notifier/projection.py",
    "services/notifier/pick_queue.py",
    "services/notifier/trace.py",
]
USE_CASES_AND_HANDLERS = [
    "services/live_orders/orders.py",
    "services/live_orders/sessions.py",
    "services/live_orders/handlers.py",
    "services/inventory/handlers.py",
    "services/notifier/handlers.py",
    "services/notifier/pick_completion.py",
]


@cache
def imports_of(relative: str) -> frozenset[str]:
    """The modules a file imports (absolute names)."""
    tree = ast.parse((ROOT / relative).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return frozenset(names)


def _file_of(module: str) -> str | None:
    path = ROOT / (module.replace(".", "/") + ".py")
    return str(path.relative_to(ROOT)) if path.exists() else None


def io_reached(relative: str) -> dict[str, str]:
    """I/O package -> the chain of our modules that reaches it."""
    found: dict[str, str] = {}
    stack = [(relative, relative)]
    seen = {relative}
    while stack:
        current, chain = stack.pop()
        for module in imports_of(current):
            root = module.split(".")[0]
            if root in IO_PACKAGES:
                found.setdefault(root, chain)
            elif root == "services" and (file := _file_of(module)) and file not in seen:
                seen.add(file)
                stack.append((file, f"{chain} -> {file}"))
    return found


@pytest.mark.parametrize("module", DOMAIN)
def test_domain_modules_reach_no_io_library(module: str) -> None:
    assert io_reached(module) == {}


@pytest.mark.parametrize("module", USE_CASES_AND_HANDLERS)
def test_use_cases_and_handlers_import_no_client(module: str) -> None:
    direct = {name.split(".")[0] for name in imports_of(module)} & IO_PACKAGES
    adapters = {
        name
        for name in imports_of(module)
        if name.endswith(("_store", "kafka_producer", "kafka_consumer", "redis_batch"))
    }
    assert (direct, adapters) == (set(), set())
