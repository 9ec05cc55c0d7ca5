"""The shapes of the files Augur reads back, checked at the boundary: one schema per kind of row.

A schema maps a key to the types its value may have (bool is never a number here). `split_rows` keeps the
rows that fit and counts the others, so a folder holding foreign or corrupt rows is collected with one
warning naming the count, never a traceback deep inside a table.
"""

from __future__ import annotations

import sys
from typing import Any

NUMBER = (int, float)
Schema = dict[str, tuple[type, ...]]


def fits(row: Any, schema: Schema) -> bool:
    if not isinstance(row, dict):
        return False
    for key, types in schema.items():
        v = row.get(key, KeyError)
        if v is KeyError or (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
            return False
    return True


def split_rows(rows: list[Any], schema: Schema, what: str, where: str, warn: bool = True) -> list[dict[str, Any]]:
    """The rows that fit `schema`; the others are left out with one warning (on stderr) naming their count."""
    good = [r for r in rows if fits(r, schema)]
    if warn and len(good) < len(rows):
        print(f"warning: {where}: left out {len(rows) - len(good)} row(s) that are not {what} (a key missing or "
              "of the wrong type)", file=sys.stderr)
    return good
