"""The one grammar of the ids clients name: in paths and in request bodies, in every
service.

SKUs, lot codes, warehouse ids, session, order and pick ids all appear in Redis keys,
Kafka keys, URLs and logs. They are 1-64 ASCII letters, digits and `.` `_` `:` `-`,
starting with a letter or digit: no `{` or `}` (a crafted id never reaches into another
key's Redis Cluster hash tag), no `/` or `%` (a path stays a path), no whitespace or control
character (a log line stays one line), nothing that needs escaping anywhere. The ids the
services generate (uuid4 hex, uuid5 text) are inside it.

The JSON Schemas of request bodies (`schemas/http/`) repeat `ID_PATTERN` on every id field;
tests/unit/test_identifiers.py holds them to this one.
"""

from __future__ import annotations

import re
from typing import TypeGuard

ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
ID_RULE = "1-64 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit"

# fullmatch: `$` alone would also accept a trailing newline.
_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))


def is_valid_id(value: object) -> TypeGuard[str]:
    """Whether `value` is an id of the grammar above."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None
