"""Reading a subscribers CSV: the file and its encoding, the delimiter, the header's layout, and the
records in chunks (each record handed to a parse function; a record it refuses is a reject).

The text is UTF-8 (a BOM, as Excel writes it, is skipped); bytes that are not UTF-8 are kept as
surrogates so that only the rows holding them are rejected, by number, not the whole file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from digest.errors import DigestError

#: the known columns, in the order export writes them; any other column is an attribute
COLUMNS = ("email", "name", "lists", "categories", "created_at")
ALIASES = {"e-mail": "email", "email address": "email", "email_address": "email", "e-mail address": "email",
           "mail": "email"}
_DELIMITERS = (",", ";", "\t")
#: a row not applied as written: (row, line, reason, the record as read)
RejectRow = tuple[int, int, str, list[str] | None]


class CSVError(DigestError):
    """A file that cannot be imported at all (no email column, repeated columns, unreadable)."""


class RowRejected(Exception):
    """Raised by a parse function: this record is not imported, for the reason given."""


def open_file(path: Path) -> tuple[io.BufferedReader, io.TextIOWrapper]:
    """The file's bytes (their position measures progress) and its text, read through them."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 (the caller closes the text, and so the file)
    except OSError as e:
        raise CSVError(f"{path}: cannot open: {e.strerror}") from None
    return raw, io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


@dataclass
class Layout:
    """Where each known column is in a header, and which columns are attributes."""

    names: list[str]
    email: int
    name: int | None
    lists: int | None
    categories: int | None
    created_at: int | None
    attributes: list[tuple[int, str]]
    ignored: list[int]


def _layout(header: list[str], path: Path) -> Layout:
    names = [h.strip() for h in header]
    seen: dict[str, int] = {}
    known: dict[str, int] = {}
    attributes: list[tuple[int, str]] = []
    ignored: list[int] = []
    for i, raw in enumerate(names):
        key = ALIASES.get(raw.casefold(), raw.casefold())
        if not raw or raw.startswith("_"):
            ignored.append(i)
            continue
        if key in seen:
            raise CSVError(f"{path}: column {raw!r} appears twice in the header (columns {seen[key] + 1} and {i + 1})")
        seen[key] = i
        if key in COLUMNS:
            known[key] = i
        else:
            attributes.append((i, raw))
    if "email" not in known:
        raise CSVError(f"{path}: the header has no `email` column (it has: {', '.join(n for n in names if n)})")
    return Layout(names, known["email"], known.get("name"), known.get("lists"), known.get("categories"),
                   known.get("created_at"), attributes, ignored)


def _delimiter(header_line: str) -> str:
    """The header's most used of comma, semicolon and tab (outside quotes)."""
    outside = re.sub(r'"[^"]*"', "", header_line)
    counts = {d: outside.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_header(text: TextIO, path: Path) -> tuple[str, list[str], Layout]:
    """The first line: (delimiter, the header's names as written, their layout)."""
    header_line = text.readline()
    if not header_line.strip():
        raise CSVError(f"{path}: the file is empty (a header with an `email` column is needed)")
    delimiter = _delimiter(header_line)
    header = next(csv.reader([header_line], delimiter=delimiter))
    return delimiter, header, _layout(header, path)


@dataclass
class Chunk:
    """What the parser hands over: up to a chunk of good rows (staged tuples) and the rejects met on the way."""

    good: list[tuple[Any, ...]]
    rejects: list[RejectRow]
    rows: int
    blank: int
    position: int


def read_chunks(text: TextIO, raw: io.BufferedReader, delimiter: str,
                parse: Callable[[list[str], int, int], tuple[Any, ...]], chunk_size: int) -> Iterator[Chunk]:
    """Chunks of parsed rows and rejects, after the header: `parse(fields, row, line)` makes a record a
    staged row or raises RowRejected; a record csv cannot read is a reject with its error text; blank
    records are counted, not numbered."""
    reader = csv.reader(text, delimiter=delimiter, doublequote=True, skipinitialspace=False, strict=False)
    chunk = Chunk([], [], 0, 0, 0)
    row = line = 1  # the header was row 1, line 1
    while True:
        start = line + 1  # the record's first line
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            line = reader.line_num + 1
            row += 1
            chunk.rows += 1
            chunk.rejects.append((row, start, f"cannot be read as CSV: {e}", None))
            continue
        line = reader.line_num + 1
        if not (fields and fields[0].strip()) and not any(f.strip() for f in fields):
            chunk.blank += 1
            continue
        row += 1
        chunk.rows += 1
        try:
            chunk.good.append(parse(fields, row, start))
        except RowRejected as e:
            chunk.rejects.append((row, start, str(e), fields))
        if len(chunk.good) >= chunk_size or len(chunk.rejects) >= 20_000:  # mostly bad rows: memory stays flat
            chunk.position = raw.tell()
            yield chunk
            chunk = Chunk([], [], 0, 0, 0)
    chunk.position = raw.tell()
    yield chunk

