"""Mint a token for operators and demos:

    python -m services.common.mint_token --role host --sub host-1
    python -m services.common.mint_token --role warehouse --sub staff-7 --warehouse-id wh-hz

The secret comes from LC_JWT_SECRET (or `--env-file .run/stack.env`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import cast

from services.common.auth import ROLES, Role, mint_token


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", required=True, choices=sorted(ROLES))
    parser.add_argument("--sub", required=True)
    parser.add_argument("--warehouse-id")
    parser.add_argument("--ttl", type=int, default=12 * 3600, help="seconds (default 12 h)")
    parser.add_argument("--env-file", type=Path, help="read LC_JWT_SECRET from this file")
    args = parser.parse_args(argv)
    env = read_env_file(args.env_file) if args.env_file else dict(os.environ)
    secret = env.get("LC_JWT_SECRET")
    if not secret:
        print("LC_JWT_SECRET is not set (pass --env-file .run/stack.env)", file=sys.stderr)
        return 2
    if args.role == "warehouse" and not args.warehouse_id:
        print("--warehouse-id is required for a warehouse token", file=sys.stderr)
        return 2
    print(
        mint_token(
            secret,
            sub=args.sub,
            role=cast(Role, args.role),
            warehouse_id=args.warehouse_id,
            ttl_s=args.ttl,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
