"""Check a lot's journal chain from the command line (what GET .../journal/verify answers):

    python -m services.inventory.journal verify --sku crab --lot L1 --env-file .run/stack.env

Prints `{"ok": ..., "entries": N, "first_bad_seq": ...}` and exits 0 when the chain holds,
1 when it is broken, 2 when there is no such lot. Redis comes from LC_REDIS_URL and
LC_REDIS_PREFIX (or `--env-file`), with the services' defaults, and LC_REDIS_PASSWORD,
LC_REDIS_USERNAME and LC_REDIS_SSL_CAFILE when set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from services.common.mint_token import read_env_file
from services.common.redis_scripts import create_redis
from services.inventory.journal_store import JournalStore
from services.inventory.lot_journal import check_chain

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_REDIS_PREFIX = "lc:"


async def verify(
    redis_url: str,
    prefix: str,
    sku: str,
    lot_code: str,
    security: dict[str, Any] | None = None,
) -> int:
    redis = create_redis(redis_url, security=security)
    try:
        journal = await JournalStore(redis, prefix).read(sku, lot_code)
    finally:
        await redis.aclose()
    if journal is None:
        print(f"no lot {lot_code!r} of sku {sku!r}", file=sys.stderr)
        return 2
    check = check_chain(journal.entries)
    print(orjson.dumps(check.as_dict()).decode())
    return 0 if check.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="recompute a lot's hash chain")
    check.add_argument("--sku", required=True)
    check.add_argument("--lot", required=True)
    check.add_argument("--env-file", type=Path, help="read LC_REDIS_* from this file")
    args = parser.parse_args(argv)
    env = read_env_file(args.env_file) if args.env_file else dict(os.environ)
    redis_url = env.get("LC_REDIS_URL") or DEFAULT_REDIS_URL
    prefix = env.get("LC_REDIS_PREFIX") or DEFAULT_REDIS_PREFIX
    # As the services connect (transport_security.redis_security_kwargs).
    security: dict[str, Any] = {
        option: env[variable]
        for option, variable in (
            ("password", "LC_REDIS_PASSWORD"),
            ("username", "LC_REDIS_USERNAME"),
            ("ssl_ca_certs", "LC_REDIS_SSL_CAFILE"),
        )
        if env.get(variable)
    }
    return asyncio.run(verify(redis_url, prefix, args.sku, args.lot, security))


if __name__ == "__main__":
    sys.exit(main())
