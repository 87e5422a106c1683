"""Reading a subscribers CSV: the file and its encoding, the delimiter, the header's layout, and the
records in chunks (each record handed to a parse function; a record it refuses is a reject).

The text is UTF-8 (a BOM, as Excel writes it, is skipped); bytes that are not UTF-8 are kept as
surrogates so that only the rows holding them are rejected, by number, not the whole file.

Memory is bounded whatever the file holds: lines are read at most MAX_RECORD characters at a time and a
record (which may span lines inside quotes) longer than that is skipped to its end and rejected; a record
with more than MAX_FIELDS fields, or a field longer than MAX_FIELD, is one reject that keeps only its
reason; chunks are handed over after CHUNK_CHARS of input as well as after a number of rows. So no one
row, however built (a 200 MB line of `ab,`, a 200 MB header), makes the import hold more than a few MB.
Cells go through `csv_safe.restore`, undoing the quote that export puts before formula-like cells.
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
from subscribers.csv_safe import restore

#: the known columns, in the order export writes them; any other column is an attribute
COLUMNS = ("email", "name", "lists", "categories", "created_at", "timezone")
ALIASES = {"e-mail": "email", "email address": "email", "email_address": "email", "e-mail address": "email",
           "mail": "email"}
_DELIMITERS = (",", ";", "\t")
#: a row not applied as written: (row, line, reason, the record as read)
RejectRow = tuple[int, int, str, list[str] | None]
#: the longest record (characters, quoted newlines included) read; a subscriber row is a few hundred
MAX_RECORD = 1_000_000
#: the most fields a record may have, and the longest field kept (Python's csv refuses over 131,072)
MAX_FIELDS = 1_000
MAX_FIELD = 65_536
#: a chunk is handed over after this many characters of input even if it has few rows
CHUNK_CHARS = 4_000_000


class CSVError(DigestError):
    """A file that cannot be imported at all (no email column, repeated columns, unreadable)."""


class RowRejected(Exception):
    """Raised by a parse function: this record is not imported, for the reason given."""


def open_file(path: Path) -> tuple[io.BufferedReader, io.TextIOWrapper]:
    """The file's bytes (their position measures progress) and its text, read through them."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 (the caller closes the text, and so the file)
    except OSError as e:
        raise CSVError(f"{path}: cannot open: {e.strerror or e}") from None
    return raw, io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


class RecordTooLong(Exception):
    """Raised through csv.reader by `Lines`: the record being read is over MAX_RECORD characters."""


class Lines:
    """The text's lines for csv.reader, each read at most `limit` characters at a time: a line or a
    record longer than the limit is skipped to its end and RecordTooLong raised instead, so the csv module
    never holds more than `limit` characters of one record. `lines` counts the physical lines read."""

    def __init__(self, text: TextIO, path: Path, limit: int = MAX_RECORD) -> None:
        self.text, self.path, self.limit = text, path, limit
        self.lines = 0
        self.record = 0  # characters of the record being read so far
        self.chars = 0  # characters read in all

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        line = self._read()
        if not line:
            raise StopIteration
        self.lines += 1
        self.record += len(line)
        self.chars += len(line)
        if not line.endswith(("\n", "\r")) and len(line) >= self.limit:
            while line and not line.endswith(("\n", "\r")):  # the rest of the line, a piece at a time
                line = self._read()
            self.record = self.limit + 1
        if self.record > self.limit:
            self.record = 0
            raise RecordTooLong
        return line

    def start_record(self) -> None:
        self.record = 0

    def _read(self) -> str:
        try:
            return self.text.readline(self.limit)
        except OSError as e:
            raise CSVError(f"{self.path}: cannot be read: {e.strerror or e}") from None


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
    timezone: int | None = None  # the reader's IANA time zone (local delivery)


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
                   known.get("created_at"), attributes, ignored, known.get("timezone"))


def _delimiter(header_line: str) -> str:
    """The header's most used of comma, semicolon and tab (outside quotes)."""
    outside = re.sub(r'"[^"]*"', "", header_line)
    counts = {d: outside.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_header(text: TextIO, path: Path) -> tuple[str, list[str], Layout]:
    """The first line: (delimiter, the header's names as written, their layout)."""
    lines = Lines(text, path)
    try:
        header_line = next(lines, "")
    except RecordTooLong:
        raise CSVError(f"{path}: the first line is over {MAX_RECORD:,} characters: it is not a header "
                       "(email,name,...); is this a CSV file?") from None
    if not header_line.strip():
        raise CSVError(f"{path}: the file is empty (a header with an `email` column is needed)")
    delimiter = _delimiter(header_line)
    try:
        header = next(csv.reader([header_line], delimiter=delimiter))
    except (csv.Error, StopIteration) as e:
        raise CSVError(f"{path}: the header cannot be read as CSV: {e}") from None
    if len(header) > MAX_FIELDS:
        raise CSVError(f"{path}: the header has {len(header):,} columns (at most {MAX_FIELDS:,})")
    header = [restore(h) for h in header]
    return delimiter, header, _layout(header, path)


@dataclass
class Chunk:
    """What the parser hands over: up to a chunk of good rows (staged tuples) and the rejects met on the way."""

    good: list[tuple[Any, ...]]
    rejects: list[RejectRow]
    rows: int
    blank: int
    position: int


def _too_big(fields: list[str]) -> str | None:
    """Why a record is refused before it is parsed, keeping only the reason (None: it is not)."""
    if len(fields) > MAX_FIELDS:
        return f"has {len(fields):,} fields (at most {MAX_FIELDS:,} are read)"
    longest = max(map(len, fields), default=0)
    if longest > MAX_FIELD:
        return f"has a field of {longest:,} characters (at most {MAX_FIELD:,})"
    return None


def read_chunks(text: TextIO, raw: io.BufferedReader, delimiter: str,
                parse: Callable[[list[str], int, int], tuple[Any, ...]], chunk_size: int,
                path: Path = Path("-")) -> Iterator[Chunk]:
    """Chunks of parsed rows and rejects, after the header: `parse(fields, row, line)` makes a record a
    staged row or raises RowRejected; a record csv cannot read, or one over the limits above, is a
    reject with its reason; blank records are counted, not numbered."""
    lines = Lines(text, path)
    lines.lines = 1  # the header was line 1
    reader = csv.reader(lines, delimiter=delimiter, doublequote=True, skipinitialspace=False, strict=False)
    chunk = Chunk([], [], 0, 0, 0)
    row = 1  # the header was row 1
    chunk_start = lines.chars
    while True:
        start = lines.lines + 1  # the record's first line
        lines.start_record()
        refused: str | None = None
        try:
            fields = next(reader)
        except StopIteration:
            break
        except RecordTooLong:
            fields, refused = [], f"is over {MAX_RECORD:,} characters (a stray quote, or not a CSV file?)"
        except csv.Error as e:
            fields, refused = [], f"cannot be read as CSV: {e}"
        else:
            # a record shorter than MAX_FIELDS characters has neither too many fields nor too long a one
            refused = None if lines.record < MAX_FIELDS else _too_big(fields)
        if refused is not None:  # one reject keeping only its reason: the record may be huge
            row += 1
            chunk.rows += 1
            chunk.rejects.append((row, start, refused, None))
        else:
            if "'" in "".join(fields):  # only a cell starting with a quote can need restoring
                fields = [restore(f) for f in fields]
            if not (fields and fields[0].strip()) and not any(f.strip() for f in fields):
                chunk.blank += 1
                continue
            row += 1
            chunk.rows += 1
            try:
                chunk.good.append(parse(fields, row, start))
            except RowRejected as e:
                chunk.rejects.append((row, start, str(e), fields))
        # mostly bad rows, or long ones: memory stays flat
        if len(chunk.good) >= chunk_size or len(chunk.rejects) >= 20_000 or lines.chars - chunk_start > CHUNK_CHARS:
            chunk_start = lines.chars
            chunk.position = raw.tell()
            yield chunk
            chunk = Chunk([], [], 0, 0, 0)
    chunk.position = raw.tell()
    yield chunk

