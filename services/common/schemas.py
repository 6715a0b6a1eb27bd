"""JSON Schemas from the repository's `schemas/` folder, compiled once per process.

Events (`schemas/events/<type>.v<version>.json`) and HTTP request bodies
(`schemas/http/<name>.json`) are validated against the same files that document them.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

# The services run from the repository (or an image that keeps its layout).
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


@cache
def validator(relative_path: str) -> Draft202012Validator:
    """The compiled validator of `schemas/<relative_path>` (cached: files do not change)."""
    schema: dict[str, Any] = orjson.loads((SCHEMAS_DIR / relative_path).read_bytes())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def first_error(relative_path: str, instance: object) -> str | None:
    """A one-line description of the first way `instance` breaks the schema, or None."""
    errors = sorted(validator(relative_path).iter_errors(instance), key=lambda e: list(e.path))
    if not errors:
        return None
    error = errors[0]
    where = "/".join(str(part) for part in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message
