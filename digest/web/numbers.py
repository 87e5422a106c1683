"""Row numbers at the door: one rule for every id or issue number in a path, query or form.

Our ids are 64-bit signed integers in the database (SQLite INTEGER, PostgreSQL BIGINT): a number of
2^63 or more cannot be bound as a parameter at all (SQLite raises OverflowError), and Python's int()
accepts what is no id (`²`, `1_000`, ` 12 `) or refuses a string of over 4,300 digits with ValueError.
So a number is plain ASCII digits, at most 18 of them (10^18 - 1 < 2^63, far above any id we issue),
checked here before it reaches a query: in a path it makes the route not match (404), in a query or form
it is no number at all (the page treats it as absent, or NotFound names it).
"""

from __future__ import annotations

import re

from starlette.convertors import Convertor, register_url_convertor

from digest.errors import NotFound

#: the digits an id may have: 18 keeps every such number below 2^63 (the largest signed 64-bit integer)
ID_DIGITS = 18
_ID = re.compile(rf"[0-9]{{1,{ID_DIGITS}}}")


class IdConvertor(Convertor[int]):
    """`{name:id}` in a route path: only ids match, so `/issues/99999999999999999999` is a plain 404."""

    regex = rf"[0-9]{{1,{ID_DIGITS}}}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(int(value))


register_url_convertor("id", IdConvertor())


def parse_id(value: str | None) -> int | None:
    """The id a query or form field holds, or None when it holds no id (empty, too long, not ASCII digits)."""
    if value is None or not _ID.fullmatch(value):
        return None
    return int(value)


def issue_number(value: str) -> int:
    """An issue number from a form; NotFound (a 404 page) when it is not one."""
    number = parse_id(value.strip())
    if number is None:
        raise NotFound(f"there is no issue {value[:40]!r}")
    return number

