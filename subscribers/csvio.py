"""Streaming CSV import and export of subscribers, with a rejects report next to the input.

The file is read row by row and written in batches (one transaction each, a handful of bulk
statements per batch), so a million rows import in constant memory. Every row that is not applied as
written (bad, duplicate, erased, or asking to re-activate a withdrawn membership) gets a line in
`<input>.rejects.csv` with its row number and the reason. Statuses change only through the rules of
`subscribers.lifecycle` (`import_status`, `apply_imported`).

Format (export writes it, import reads it, so the two round-trip):

    email,name,lists,categories,created_at,<attribute>,...
    ann@example.com,Ann,weekly:active;offers:unsubscribed,Aquatics / Fitness,2024-05-01T09:00:00+00:00,NSW

`lists` holds `slug` or `slug:status` items separated by `;` (`|` and `,` also accepted);
`categories` are separated by `/` (`;` and `|` also accepted); any other column is an attribute;
columns whose name starts with `_` (the rejects report's `_row`, `_line`, `_reason`) are ignored.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import queue
import re
import sqlite3
import tempfile
import threading
from array import array
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from digest.errors import DigestError, NotFound
from digest.store import utcnow
from subscribers import lifecycle
from subscribers.bulk import among, insert_rows, json_converter
from subscribers.categories import UnknownCategory, canonical
from subscribers.lifecycle import Address, ImportedStatus, InvalidEmail
from subscribers.models import STATUSES, MailingList, Membership, Subscriber, Suppression

COLUMNS = ("email", "name", "lists", "categories", "created_at")
SUBSCRIBER_COLUMNS = ("email", "email_key", "name", "attributes", "categories", "created_at")
ALIASES = {"e-mail": "email", "email address": "email", "email_address": "email", "e-mail address": "email",
           "mail": "email"}
_LIST_SPLIT = re.compile(r"[;|,]")
_CATEGORY_SPLIT = re.compile(r"[/;|]")
_DELIMITERS = (",", ";", "\t")
NAME_MAX = 255
#: rows per transaction: large enough that SQLite writes each index page once for many rows, small
#: enough that a million-row import stays well under 150 MB (two batches are in memory at once, ~0.8 KB
#: a row: 20,000-row batches measured 128 MB for a first import of a million rows, 151 MB re-running it)
BATCH_SIZE = 10_000
Progress = Callable[[int, int], None]


class CSVError(DigestError):
    """A file that cannot be imported at all (no email column, repeated columns, unreadable)."""


@dataclass
class ImportReport:
    path: Path
    dry_run: bool = False
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    suppressed: int = 0
    #: rows naming a withdrawn membership that the import left as it was (also counted above)
    kept_withdrawn: int = 0
    #: rows asking for `active` without --preconfirmed: joined (or left) as pending
    pending_only: int = 0
    blank: int = 0
    rejects_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.added} added", f"{self.updated} updated", f"{self.unchanged} unchanged",
                 f"{self.rejected} rejected", f"{self.suppressed} suppressed"]
        text = f"{self.rows} rows: " + ", ".join(parts)
        return f"{text} (dry run: nothing was written)" if self.dry_run else text


@dataclass(slots=True)
class _Row:
    """One good row, as small as it can be: a batch of tens of thousands is held at once. Attributes are
    not kept apart from `fields` (the record, kept for the rejects report): `attributes()` rebuilds them
    for the few rows that need them (people already stored)."""

    row: int
    line: int
    email: str
    key: str
    name: str
    lists: tuple[tuple[str, str | None], ...]
    categories: list[str] | None
    created_at: datetime | None
    fields: list[str]
    #: attributes and categories as the database stores them (converted in the parsing thread)
    attributes_json: Any
    categories_json: Any

    def attributes(self, columns: list[tuple[int, str]]) -> dict[str, str]:
        fields = self.fields
        return {key: v for i, key in columns if (v := fields[i].strip())}


class _Reject(Exception):
    pass


@dataclass
class _Layout:
    """Where each known column is in a header, and which columns are attributes."""

    names: list[str]
    email: int
    name: int | None
    lists: int | None
    categories: int | None
    created_at: int | None
    attributes: list[tuple[int, str]]
    ignored: list[int]


def _layout(header: list[str], path: Path) -> _Layout:
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
    return _Layout(names, known["email"], known.get("name"), known.get("lists"), known.get("categories"),
                   known.get("created_at"), attributes, ignored)


def _delimiter(header_line: str) -> str:
    """The header's most used of comma, semicolon and tab (outside quotes)."""
    outside = re.sub(r'"[^"]*"', "", header_line)
    counts = {d: outside.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


class _Seen:
    """Which row of this file first named each address, without holding a million addresses in memory.

    A person already in the database (or added by an earlier batch) is known by id: an array of row
    numbers indexed by subscriber id costs 4 bytes a person. Only in a dry run, where new people get
    no id, are their addresses kept, in a scratch SQLite file on disk.
    """

    def __init__(self, dry_run: bool) -> None:
        self._rows = array("I")
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._db: sqlite3.Connection | None = None
        if dry_run:
            self._dir = tempfile.TemporaryDirectory(prefix="digest-import-")
            self._db = sqlite3.connect(Path(self._dir.name) / "seen.db")
            self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                                   "CREATE TABLE seen (key TEXT PRIMARY KEY, row INTEGER) WITHOUT ROWID;")

    def by_id(self, subscriber_id: int, row: int) -> int:
        """The earlier row for this person, or 0 after noting `row` as theirs."""
        rows = self._rows
        if subscriber_id >= len(rows):
            rows.frombytes(bytes(rows.itemsize * (subscriber_id + 1 - len(rows) + len(rows) // 2)))
        earlier = rows[subscriber_id]
        if not earlier:
            rows[subscriber_id] = row
        return earlier

    def new_keys(self, pairs: list[tuple[str, int]]) -> dict[str, int]:
        """Dry run only: earlier rows of these new addresses; the rest are noted."""
        assert self._db is not None
        keys = [k for k, _ in pairs]
        found: dict[str, int] = {}
        for i in range(0, len(keys), 5000):
            chunk = keys[i:i + 5000]
            found.update(self._db.execute(
                f"SELECT key, row FROM seen WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall())
        self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", pairs)
        return found

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        if self._dir is not None:
            self._dir.cleanup()


class _Rejects:
    """`<input>.rejects.csv`: one line per row not applied as written, in row order, opened at the first."""

    def __init__(self, source: Path, header: list[str]) -> None:
        self.path = source.with_name(source.stem + ".rejects.csv")
        self.header = header
        self._file: TextIO | None = None
        self._writer: Any = None
        self._pending: list[tuple[int, int, str, list[str]]] = []
        self.path.unlink(missing_ok=True)  # a stale report from an earlier run would mislead

    def write(self, row: int, line: int, reason: str, fields: list[str] | None) -> None:
        self._pending.append((row, line, reason, fields or []))

    def flush(self) -> None:
        """Write what was found, in row order (parse errors and batch checks come at different times)."""
        if not self._pending:
            return
        if self._writer is None:
            self._file = open(self.path, "w", encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115
            self._writer = csv.writer(self._file)
            self._writer.writerow(["_row", "_line", "_reason", *self.header])
        self._pending.sort(key=lambda item: item[0])
        self._writer.writerows([row, line, reason, *fields] for row, line, reason, fields in self._pending)
        self._pending = []

    def close(self) -> Path | None:
        self.flush()
        if self._file is None:
            return None
        self._file.close()
        return self.path


class _Parser:
    """Turns one CSV record into a _Row, or raises _Reject with the reason. Repeated cells are cached."""

    def __init__(self, layout: _Layout, lists: set[str], create_lists: bool,
                 categories: tuple[str, ...] | None, default_list: str, convert_json: Callable[[Any], Any]) -> None:
        self.convert_json = convert_json
        self.layout = layout
        self.lists = lists  # its own copy: the writer fills in ids (and creates lists) on its side
        self.create_lists = create_lists
        self.categories = categories
        self.default = ((default_list, None),)
        self._list_cells: dict[str, tuple[tuple[str, str | None], ...] | str] = {}
        self._category_cells: dict[str, list[str] | str] = {}
        self.width = len(layout.names)

    def parse(self, fields: list[str], row: int, line: int) -> _Row:
        lay = self.layout
        if len(fields) != self.width:
            raise _Reject(f"has {len(fields)} fields but the header has {self.width} "
                          "(a stray quote or delimiter?)")
        try:
            "".join(fields).encode("utf-8")
        except UnicodeEncodeError:
            raise _Reject("is not UTF-8 text: save the file as CSV UTF-8 and import it again") from None
        email = fields[lay.email].strip()
        if not email:
            raise _Reject("email is empty")
        try:
            address = lifecycle.normalize(email)
        except InvalidEmail as e:
            raise _Reject(str(e)) from None
        name = fields[lay.name].strip() if lay.name is not None else ""
        if len(name) > NAME_MAX:
            raise _Reject(f"name is {len(name)} characters (at most {NAME_MAX})")
        lists = self._lists(fields[lay.lists]) if lay.lists is not None else self.default
        cats = self._categories(fields[lay.categories]) if lay.categories is not None else None
        created = self._created(fields[lay.created_at]) if lay.created_at is not None else None
        convert = self.convert_json
        attributes = {key: v for i, key in lay.attributes if (v := fields[i].strip())}
        return _Row(row, line, address.email, address.key, name, lists, cats, created, fields, convert(attributes),
                    convert(cats or []))

    def _lists(self, cell: str) -> tuple[tuple[str, str | None], ...]:
        cached = self._list_cells.get(cell)
        if cached is None:
            try:
                cached = self._parse_lists(cell)
            except _Reject as e:
                cached = str(e)
            if len(self._list_cells) < 10_000:
                self._list_cells[cell] = cached
        if isinstance(cached, str):
            raise _Reject(cached)
        return cached

    def _parse_lists(self, cell: str) -> tuple[tuple[str, str | None], ...]:
        out: dict[str, str | None] = {}
        for item in _LIST_SPLIT.split(cell):
            if not item.strip():
                continue
            slug, _, status = item.partition(":")
            slug, status = slug.strip().lower(), status.strip().lower()
            if status and status not in STATUSES:
                raise _Reject(f"lists: unknown status {status!r} for list {slug!r} (one of {', '.join(STATUSES)})")
            if slug not in self.lists:
                if not self.create_lists:
                    raise _Reject(f"lists: unknown list {slug!r} (create it with `digest subscribers lists create "
                                  f"{slug}`, or import with --create-lists)")
                if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", slug):
                    raise _Reject(f"lists: {slug!r} is not a list name (letters, digits, - and _)")
                self.lists.add(slug)  # created when first written
            if slug in out:
                raise _Reject(f"lists: list {slug!r} is named twice")
            out[slug] = status or None
        return tuple(out.items())

    def _categories(self, cell: str) -> list[str] | None:
        if not cell.strip():
            return None
        cached = self._category_cells.get(cell)
        if cached is None:
            try:
                cached = canonical(_CATEGORY_SPLIT.split(cell), self.categories)
            except UnknownCategory as e:
                cached = f"categories: {e}"
            if len(self._category_cells) < 10_000:
                self._category_cells[cell] = cached
        if isinstance(cached, str):
            raise _Reject(cached)
        return cached

    @staticmethod
    def _created(cell: str) -> datetime | None:
        cell = cell.strip()
        if not cell:
            return None
        try:
            value = datetime.fromisoformat(cell)
        except ValueError:
            raise _Reject(f"created_at {cell!r} is not a date (YYYY-MM-DD or ISO 8601)") from None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _records(text: TextIO, delimiter: str) -> Iterator[tuple[int, list[str] | str]]:
    """(first line of the record, fields) per record; a record csv cannot parse comes as its error text."""
    reader = csv.reader(text, delimiter=delimiter, doublequote=True, skipinitialspace=False, strict=False)
    line = 1  # the header was line 1
    while True:
        start = line + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            line = reader.line_num + 1
            yield start, f"cannot be read as CSV: {e}"
            continue
        line = reader.line_num + 1
        yield start, fields


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """The import allocates millions of short-lived objects and holds few: the collector's default pace
    would re-scan everything loaded (SQLAlchemy, the app) thousands of times. Collect less often, and
    not the objects that existed before."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def import_csv(session: Session, path: Path, *, list_slug: str = lifecycle.DEFAULT_LIST,
               preconfirmed: bool = False, source: str = "", dry_run: bool = False, create_lists: bool = False,
               categories: tuple[str, ...] | None = None, batch_size: int = BATCH_SIZE,
               progress: Progress | None = None) -> ImportReport:
    """Import a subscribers CSV (see the module doc). Re-running the same file changes nothing more.

    Without `preconfirmed` new memberships are `pending` (confirmation emails go out with
    `digest subscribers confirm-pending`); with it they are `active` and `source` is recorded as the
    consent evidence. Each batch is one transaction: a failure keeps earlier batches and loses none
    of the failing one's rows silently (the error names the row range); re-run after fixing.
    """
    path = Path(path)
    if preconfirmed and not source.strip():
        raise DigestError("--preconfirmed needs --source: say where and when these readers gave consent "
                          "(e.g. \"signup form on example.com, 2019-2024\")")
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed below; the text wrapper reads through it)
    except OSError as e:
        raise CSVError(f"{path}: cannot open: {e.strerror}") from None
    size = path.stat().st_size
    with _fewer_collections():
        return _import(session, path, raw, size, list_slug=list_slug, preconfirmed=preconfirmed, source=source,
                       dry_run=dry_run, create_lists=create_lists, categories=categories, batch_size=batch_size,
                       progress=progress)


def _import(session: Session, path: Path, raw: io.BufferedReader, size: int, *, list_slug: str,
            preconfirmed: bool, source: str, dry_run: bool, create_lists: bool, categories: tuple[str, ...] | None,
            batch_size: int, progress: Progress | None) -> ImportReport:
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
    report = ImportReport(path, dry_run=dry_run)
    seen: _Seen | None = None
    rejects: _Rejects | None = None
    chunks: Generator[_Chunk, None, None] | None = None
    try:
        header_line = text.readline()
        if not header_line.strip():
            raise CSVError(f"{path}: the file is empty (a header with an `email` column is needed)")
        delimiter = _delimiter(header_line)
        header = next(csv.reader([header_line], delimiter=delimiter))
        layout = _layout(header, path)
        unnamed = [str(i + 1) for i in layout.ignored if layout.names[i] == ""]
        if unnamed:
            report.warnings.append(f"column(s) {', '.join(unnamed)} have no name in the header: ignored")
        lists: dict[str, int | None] = dict(session.execute(select(MailingList.slug, MailingList.id)).all())
        lists.setdefault(lifecycle.DEFAULT_LIST, None)  # the default list always exists (made on first use)
        if layout.lists is None and list_slug not in lists:
            if list_slug != lifecycle.DEFAULT_LIST and not create_lists:
                raise NotFound(f"no list named {list_slug!r}: create it with "
                               f"`digest subscribers lists create {list_slug}` (or use --create-lists)")
            lists[list_slug] = None
        parser = _Parser(layout, set(lists), create_lists, categories, list_slug,
                         json_converter(session.connection(), Subscriber.__table__, "attributes"))
        seen = _Seen(dry_run)
        rejects = _Rejects(path, header)
        writer = _BatchWriter(session, lists, preconfirmed=preconfirmed, dry_run=dry_run,
                              source=source.strip() or f"import of {path.name}", file_name=path.name,
                              attribute_columns=layout.attributes)
        # parsing (CSV, addresses) runs one batch ahead in a thread: SQLite releases the GIL while it
        # writes, so on two cores the next batch is parsed while this one is stored
        chunks = _ahead(_parse(text, raw, delimiter, parser, batch_size))
        for chunk in chunks:
            report.rows += chunk.rows
            report.blank += chunk.blank
            report.rejected += len(chunk.rejects)
            for reject in chunk.rejects:
                rejects.write(*reject)
            if chunk.batch:
                writer.write(chunk.batch, seen, rejects, report)
            rejects.flush()
            if progress:
                progress(chunk.position, size)
        if progress:
            progress(size, size)
    finally:
        if chunks is not None:
            chunks.close()  # stops the parsing thread before the file is closed
        if session.get_bind().dialect.name == "sqlite":
            session.rollback()
            session.connection().exec_driver_sql("PRAGMA wal_autocheckpoint=1000")  # SQLite's default
            session.rollback()
        text.close()
        if seen is not None:
            seen.close()
        if rejects is not None:
            report.rejects_path = rejects.close()
    return report


@dataclass
class _Chunk:
    """What the parser hands the writer: up to a batch of good rows and the rejects met on the way."""

    batch: list[_Row]
    rejects: list[tuple[int, int, str, list[str] | None]]
    rows: int
    blank: int
    position: int


def _parse(text: TextIO, raw: io.BufferedReader, delimiter: str, parser: _Parser, batch_size: int,
           ) -> Iterator[_Chunk]:
    chunk = _Chunk([], [], 0, 0, 0)
    row = 1
    for line, fields in _records(text, delimiter):
        if isinstance(fields, list) and not any(f.strip() for f in fields):
            chunk.blank += 1
            continue
        row += 1
        chunk.rows += 1
        if isinstance(fields, str):
            chunk.rejects.append((row, line, fields, None))
        else:
            try:
                chunk.batch.append(parser.parse(fields, row, line))
            except _Reject as e:
                chunk.rejects.append((row, line, str(e), fields))
        if len(chunk.batch) >= batch_size or len(chunk.rejects) >= 20_000:  # mostly bad rows: memory stays flat
            chunk.position = raw.tell()
            yield chunk
            chunk = _Chunk([], [], 0, 0, 0)
    chunk.position = raw.tell()
    yield chunk


_DONE = object()


def _ahead(items: Iterator[Any]) -> Generator[Any, None, None]:
    """Run an iterator in a thread, one item ahead of the consumer; its errors are re-raised here, and
    closing this generator stops the thread.

    The thread asks for the next item only once the consumer has taken the last one: two batches are
    in memory at once (the one being written and the next, parsed meanwhile), not three."""
    q: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: Any, error: BaseException | None = None) -> bool:
        while not stop.is_set():
            try:
                q.put((item, error), timeout=0.1)
                break
            except queue.Full:
                continue
        with q.all_tasks_done:  # until the consumer has it
            while q.unfinished_tasks and not stop.is_set():
                q.all_tasks_done.wait(0.1)
        return not stop.is_set()

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, raised there)
            put(_DONE, e)

    thread = threading.Thread(target=run, name="digest-import-parse", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            q.task_done()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _subscriber_values(rows: list[_Row], now: datetime) -> Iterator[tuple[Any, ...]]:
    """The rows in SUBSCRIBER_COLUMNS order, made one at a time as the driver takes them."""
    return ((r.email, r.key, r.name, r.attributes_json, r.categories_json, r.created_at or now) for r in rows)


class _BatchWriter:
    """Applies one batch: a few reads, bulk writes, one commit (or a rollback in a dry run)."""

    def __init__(self, session: Session, lists: dict[str, int | None], *, preconfirmed: bool, dry_run: bool,
                 source: str, file_name: str, attribute_columns: list[tuple[int, str]]) -> None:
        self.session = session
        self.attribute_columns = attribute_columns
        self.lists = lists
        self.preconfirmed = preconfirmed
        self.dry_run = dry_run
        self.source = source[:255]
        self.file_name = file_name
        self._fake_ids = 0
        self.dialect = session.get_bind().dialect.name
        self._plans: dict[tuple[tuple[str, str | None], ...], list[tuple[int, str, str]]] = {}
        self.insert_first = True

    def _list_id(self, slug: str) -> int:
        lid = self.lists.get(slug)
        if lid is None:
            if self.dry_run:
                self._fake_ids -= 1
                lid = self._fake_ids
            else:
                lid = lifecycle.ensure_list(self.session, slug).id
            self.lists[slug] = lid
        return lid

    #: SQLite copies its write-ahead log into the database every 1000 pages by default (a checkpoint,
    #: with two fsyncs); a batch dirties thousands, so the import lets the log grow to ~40 MB first
    WAL_PAGES = 10_000

    def write(self, batch: list[_Row], seen: _Seen, rejects: _Rejects, report: ImportReport) -> None:
        try:
            if self.dialect == "sqlite":  # per batch: the session may hand out another pooled connection
                self.session.connection().exec_driver_sql(f"PRAGMA wal_autocheckpoint={self.WAL_PAGES}")
            self._write(batch, seen, rejects, report)
        except DigestError:
            self.session.rollback()
            raise
        except Exception as e:
            self.session.rollback()
            raise DigestError(f"rows {batch[0].row}-{batch[-1].row} of {self.file_name} could not be written "
                              f"({e.__class__.__name__}: {e}); earlier rows are saved, this batch is not: "
                              "fix the cause and run the import again") from e

    def _write(self, batch: list[_Row], seen: _Seen, rejects: _Rejects, report: ImportReport) -> None:
        session = self.session
        rows = self._unique(batch, rejects, report)
        rows = self._not_suppressed(rows, rejects, report)
        now = utcnow()
        if self.insert_first and not self.dry_run:
            known, new_rows, new_ids, existing = self._insert_then_look(rows, seen, rejects, report, now)
        else:
            known, new_rows, existing = self._look_then_insert(rows, seen, rejects, report)
            if self.dry_run:
                new_ids = list(range(-1, -len(new_rows) - 1, -1))
            else:
                new_ids = self._insert_subscribers(new_rows, now)
                for r, sid in zip(new_rows, new_ids, strict=True):
                    seen.by_id(sid, r.row)
        # a file of mostly new people is inserted first (its unique index finds the few known ones); a
        # file of mostly known people is looked up first (nothing to insert)
        self.insert_first = len(new_rows) >= len(known)
        members: dict[tuple[int, int], tuple[int, str]] = {}
        if known:
            ids = [existing[r.key][0] for r in known]
            members = {(sid, lid): (mid, status) for mid, sid, lid, status in session.execute(
                select(Membership.id, Membership.subscriber_id, Membership.list_id, Membership.status)
                .where(among(self.dialect, Membership.subscriber_id, ids)))}
        updates: list[dict[str, Any]] = []
        statuses: list[ImportedStatus] = []
        for r in known:
            sid, name, attrs, cats = existing[r.key]
            change: dict[str, Any] = {}
            if r.name and r.name != name:
                change["name"] = r.name
            given = r.attributes(self.attribute_columns)
            if given and {**attrs, **given} != attrs:
                change["attributes"] = {**attrs, **given}
            if r.categories is not None and r.categories != cats:
                change["categories"] = r.categories
            if change:
                updates.append({"id": sid, **change})
            joined = self._statuses(r, sid, members, statuses, rejects, report)
            if change or joined:
                report.updated += 1
            else:
                report.unchanged += 1
        report.added += len(new_rows)
        joins = self._join(new_rows, new_ids, report)
        if self.dry_run:
            session.rollback()
            return
        for group in lifecycle.same_columns(updates):
            session.execute(update(Subscriber), group)
        lifecycle.apply_imported(session, statuses, source=self.source, now=now)
        lifecycle.join_imported(session, joins, source=self.source, detail_prefix=f"{self.file_name} row ",
                                now=now)
        session.commit()

    def _unique(self, batch: list[_Row], rejects: _Rejects, report: ImportReport) -> list[_Row]:
        """The batch without repeats of an address met earlier in it."""
        firsts: dict[str, int] = {}
        rows: list[_Row] = []
        for r in batch:
            first = firsts.get(r.key)
            if first is not None:
                self._duplicate(r, first, rejects, report)
            else:
                firsts[r.key] = r.row
                rows.append(r)
        return rows

    def _not_suppressed(self, rows: list[_Row], rejects: _Rejects, report: ImportReport) -> list[_Row]:
        """The rows whose address was not erased (hashed only when there is any suppression at all)."""
        session = self.session
        if not rows or session.scalar(select(Suppression.email_hash).limit(1)) is None:
            return rows
        hashes = {Address(r.email, r.key).hash: r for r in rows}
        suppressed = set(session.scalars(select(Suppression.email_hash).where(
            among(self.dialect, Suppression.email_hash, list(hashes)))))
        for h in suppressed:
            r = hashes[h]
            report.suppressed += 1
            rejects.write(r.row, r.line, "suppressed: this address was erased on request and is never added again",
                          None)
        return [r for h, r in hashes.items() if h not in suppressed] if suppressed else rows

    def _existing(self, keys: list[str]) -> dict[str, tuple[int, str, dict[str, Any], list[str]]]:
        return {key: (sid, name, attrs, cats) for sid, key, name, attrs, cats in self.session.execute(
            select(Subscriber.id, Subscriber.email_key, Subscriber.name, Subscriber.attributes,
                   Subscriber.categories).where(among(self.dialect, Subscriber.email_key, keys)))}

    def _look_then_insert(self, rows: list[_Row], seen: _Seen, rejects: _Rejects, report: ImportReport,
                          ) -> tuple[list[_Row], list[_Row], dict[str, tuple[int, str, dict[str, Any], list[str]]]]:
        """(known people, new people in index order, what is stored of the known)."""
        existing = self._existing([r.key for r in rows])
        known: list[_Row] = []
        new_rows: list[_Row] = rows
        if existing:
            new_rows = []
            for r in rows:
                found = existing.get(r.key)
                if found is None:
                    new_rows.append(r)
                elif earlier := seen.by_id(found[0], r.row):
                    self._duplicate(r, earlier, rejects, report)
                else:
                    known.append(r)
        if self.dry_run and new_rows:
            earlier_rows = seen.new_keys([(r.key, r.row) for r in new_rows])
            for r in [r for r in new_rows if r.key in earlier_rows]:
                self._duplicate(r, earlier_rows[r.key], rejects, report)
            new_rows = [r for r in new_rows if r.key not in earlier_rows]
        new_rows.sort(key=attrgetter("key"))  # in index order: the email_key index is filled page by page
        return known, new_rows, existing

    def _insert_then_look(self, rows: list[_Row], seen: _Seen, rejects: _Rejects, report: ImportReport,
                          now: datetime) -> tuple[list[_Row], list[_Row], list[int],
                                                  dict[str, tuple[int, str, dict[str, Any], list[str]]]]:
        """Insert everyone, skipping addresses already stored: when all were new (the ids tell), no look-up
        is needed at all. (known people, new people, their ids, what is stored of the known)."""
        session = self.session
        rows.sort(key=attrgetter("key"))
        before = session.scalar(select(func.max(Subscriber.id))) or 0
        insert_rows(session.connection(), Subscriber.__table__, SUBSCRIBER_COLUMNS,
                    _subscriber_values(rows, now), converted=("attributes", "categories"),
                    skip_existing=("email_key",))
        after = session.scalar(select(func.max(Subscriber.id))) or 0
        if after - before == len(rows):
            ids = list(range(before + 1, after + 1))
            for r, sid in zip(rows, ids, strict=True):
                seen.by_id(sid, r.row)
            return [], rows, ids, {}
        existing = self._existing([r.key for r in rows])
        known: list[_Row] = []
        new_rows: list[_Row] = []
        new_ids: list[int] = []
        for r in rows:
            sid = existing[r.key][0]
            if sid > before:  # inserted just now
                new_rows.append(r)
                new_ids.append(sid)
                seen.by_id(sid, r.row)
            elif earlier := seen.by_id(sid, r.row):
                self._duplicate(r, earlier, rejects, report)
            else:
                known.append(r)
        return known, new_rows, new_ids, existing

    def _insert_subscribers(self, rows: list[_Row], now: datetime) -> list[int]:
        """Insert new people; their ids, in the order of `rows`.

        Ids only ever grow (AUTOINCREMENT on SQLite, a sequence elsewhere), each new one above every id
        before it: so when the largest id grew by exactly the number of rows, the new ids are exactly
        the ones in between, in insertion order. Otherwise (another writer meanwhile, a gap left by an
        erasure) they are looked up by address.
        """
        session = self.session
        before = session.scalar(select(func.max(Subscriber.id))) or 0
        insert_rows(session.connection(), Subscriber.__table__, SUBSCRIBER_COLUMNS,
                    _subscriber_values(rows, now), converted=("attributes", "categories"))
        after = session.scalar(select(func.max(Subscriber.id))) or 0
        if after - before == len(rows):
            return list(range(before + 1, after + 1))
        ids = dict(session.execute(select(Subscriber.email_key, Subscriber.id).where(
            among(self.dialect, Subscriber.email_key, [r.key for r in rows]))).all())
        return [ids[r.key] for r in rows]

    @staticmethod
    def _duplicate(r: _Row, earlier: int, rejects: _Rejects, report: ImportReport) -> None:
        report.rejected += 1
        rejects.write(r.row, r.line, f"duplicate of row {earlier} (the same address: {r.email})", r.fields)

    def _join(self, rows: list[_Row], ids: list[int], report: ImportReport,
              ) -> dict[tuple[int, str], list[tuple[int, int]]]:
        """New people's memberships, as (list id, status) -> [(subscriber id, row)]: planned once per
        distinct `lists` cell, not once per row (see `lifecycle.join_imported`)."""
        plans = self._plans
        preconfirmed = self.preconfirmed
        joins: dict[tuple[int, str], list[tuple[int, int]]] = {}
        for r, sid in zip(rows, ids, strict=True):
            plan = plans.get(r.lists)
            if plan is None:
                plan = plans[r.lists] = [((self._list_id(slug), new), note) for slug, wanted in r.lists
                                         for new, note in [lifecycle.import_status(None, wanted,
                                                                                   preconfirmed=preconfirmed)]]
            pair = (sid, r.row)
            for target, note in plan:
                if note:
                    report.pending_only += 1
                group = joins.get(target)
                if group is None:
                    group = joins[target] = []
                group.append(pair)
        return joins

    def _statuses(self, r: _Row, sid: int, members: dict[tuple[int, int], tuple[int, str]],
                  out: list[ImportedStatus], rejects: _Rejects, report: ImportReport) -> bool:
        """Plan the row's memberships; returns whether any is created or changed."""
        changed = False
        notes = []
        for slug, wanted in r.lists:
            lid = self._list_id(slug)
            mid, old = members.get((sid, lid), (None, None))
            new, note = lifecycle.import_status(old, wanted, preconfirmed=self.preconfirmed)
            if note:
                if old in lifecycle.WITHDRAWN:
                    notes.append(f"{slug}: {note}")
                else:
                    report.pending_only += 1
            if new is not None:
                out.append(ImportedStatus(sid, lid, mid, old, new, detail=f"{self.file_name} row {r.row}"))
                changed = True
        if notes:
            report.kept_withdrawn += 1
            rejects.write(r.row, r.line, "; ".join(notes), r.fields)
        return changed


# -- export ---------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def export_csv(session: Session, out: TextIO, *, list_slug: str | None = None, status: str | None = None,
               progress: Progress | None = None) -> int:
    """Write subscribers as CSV (one row per person, memberships in `lists`); returns the row count.

    With --list/--status only people with such a membership are written, and `lists` shows only
    the memberships that match, so the file re-imports to exactly that selection.
    """
    if status is not None and status not in STATUSES:
        raise DigestError(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
    list_id = lifecycle.get_list(session, list_slug).id if list_slug else None
    conditions = []
    if list_id is not None:
        conditions.append(Membership.list_id == list_id)
    if status is not None:
        conditions.append(Membership.status == status)
    keys: set[str] = set()
    for attrs in session.scalars(select(Subscriber.attributes).execution_options(yield_per=5000)):
        keys.update(attrs or {})
    attribute_keys = sorted(keys, key=str.casefold)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMNS, *attribute_keys])

    if conditions:
        chosen = select(Subscriber.id).join(Membership, Membership.subscriber_id == Subscriber.id).where(*conditions)
        total = session.scalar(select(func.count()).select_from(chosen.distinct().subquery())) or 0
        q = (select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.categories, Subscriber.created_at,
                    Subscriber.attributes, MailingList.slug, Membership.status)
             .join(Membership, Membership.subscriber_id == Subscriber.id)
             .join(MailingList, MailingList.id == Membership.list_id).where(*conditions))
    else:
        total = session.scalar(select(func.count(Subscriber.id))) or 0
        q = (select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.categories, Subscriber.created_at,
                    Subscriber.attributes, MailingList.slug, Membership.status)
             .outerjoin(Membership, Membership.subscriber_id == Subscriber.id)
             .outerjoin(MailingList, MailingList.id == Membership.list_id))
    q = q.order_by(Subscriber.id, MailingList.slug).execution_options(yield_per=5000)

    written = 0
    current: list[Any] | None = None
    memberships: list[str] = []

    def flush() -> None:
        nonlocal written
        if current is None:
            return
        _, email, name, cats, created, attrs = current
        attrs = attrs or {}
        writer.writerow([email, name, ";".join(memberships), " / ".join(cats or []),
                         created.isoformat() if created else "",
                         *(_cell(attrs[k]) if k in attrs else "" for k in attribute_keys)])
        written += 1
        if progress and written % 5000 == 0:
            progress(written, total)

    for sid, email, name, cats, created, attrs, slug, mstatus in session.execute(q):
        if current is None or current[0] != sid:
            flush()
            current, memberships = [sid, email, name, cats, created, attrs], []
        if slug is not None:
            memberships.append(f"{slug}:{mstatus}")
    flush()
    if progress:
        progress(written, total)
    return written
