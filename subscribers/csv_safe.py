"""CSV cells safe to open in a spreadsheet, and back (CSV injection).

A cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is read by Excel, LibreOffice and
Google Sheets as a formula (`=HYPERLINK(...)`, `+cmd|' /C calc'!A0`, `@SUM(...)`). OWASP's advice
(https://owasp.org/www-community/attacks/CSV_Injection) is to prefix such a cell with a single quote,
which spreadsheets show as text. Every CSV the product writes goes through `safe`; the import reads
cells through `restore`, so an export imports back to exactly what was exported.

To keep the round trip exact for a value that itself starts with quotes before a trigger (`'=1`), the
prefix is added to any cell that is quotes followed by a trigger, and removed only from such a cell.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: OWASP's list of leading characters a spreadsheet may treat as the start of a formula
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def _needs_prefix(cell: str) -> bool:
    return cell.lstrip("'").startswith(TRIGGERS)


def safe(value: Any) -> Any:
    """The cell as written: text that a spreadsheet would run is prefixed with `'`; other values as given."""
    if isinstance(value, str) and value and _needs_prefix(value):
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    return [safe(v) for v in values]


def restore(cell: str) -> str:
    """The cell as it was before `safe` (a cell `safe` did not change is returned as it is)."""
    if cell.startswith("'") and _needs_prefix(cell[1:]):
        return cell[1:]
    return cell
