"""Streaming CSV import and export of subscribers, with a rejects report next to the input.

The file is read row by row into the import's staging tables (`subscribers.staging`), checked as a
whole there and written to the store in batches (one transaction each), so a million rows import in
constant memory. Every row that is not applied as written (bad, duplicate, erased, or asking to
re-activate a withdrawn membership) gets a line in `<input>.rejects.csv` with its row number and the
reason. Statuses change only through the rules of `subscribers.lifecycle`.

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
import itertools
import json
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.errors import DigestError, NotFound
from subscribers import lifecycle, staging
from subscribers.bulk import json_converter
from subscribers.categories import UnknownCategory, canonical
from subscribers.lifecycle import InvalidEmail
from subscribers.models import STATUSES, MailingList, Membership, Subscriber, Suppression

COLUMNS = ("email", "name", "lists", "categories", "created_at")
ALIASES = {"e-mail": "email", "email address": "email", "email_address": "email", "e-mail address": "email",
           "mail": "email"}
_LIST_SPLIT = re.compile(r"[;|,]")
_CATEGORY_SPLIT = re.compile(r"[/;|]")
_DELIMITERS = (",", ";", "\t")
NAME_MAX = 255
#: rows per transaction: in address order each batch fills its own stretch of the address index, so
#: batches need not be large; a failed batch is re-done whole by a re-run
BATCH_SIZE = 20_000
#: rows the parser hands over at a time (two chunks are in memory at once)
CHUNK_SIZE = 10_000
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


class _Parser:
    """Turns one CSV record into a staged row (`staging.STAGED_COLUMNS`), or raises _Reject with the reason.

    Each distinct `lists` cell gets a number, its plan (`cells` maps it back); repeated cells are
    parsed once."""

    def __init__(self, layout: _Layout, lists: set[str], create_lists: bool,
                 categories: tuple[str, ...] | None, default_list: str, convert_json: Callable[[Any], Any],
                 hash_keys: bool) -> None:
        self.convert_json = convert_json
        self.layout = layout
        self.lists = lists  # its own copy: lists named in the file are created when written
        self.create_lists = create_lists
        self.categories = categories
        self.hash_keys = hash_keys
        self.cells: dict[int, tuple[tuple[str, str | None], ...]] = {0: ((default_list, None),)}
        self._plans: dict[tuple[tuple[str, str | None], ...], int] = {self.cells[0]: 0}
        self._list_cells: dict[str, int | str] = {}
        self._category_cells: dict[str, list[str] | str] = {}
        self.width = len(layout.names)
        self._empty = convert_json([])
        self._attribute_json: dict[Any, Any] = {}
        columns = [i for i, _ in layout.attributes]
        self._attribute_cells = (itemgetter(*columns) if len(columns) > 1 else
                                 (lambda f: f[columns[0]]) if columns else (lambda f: None))

    def parse(self, fields: list[str], row: int, line: int) -> tuple[Any, ...]:
        lay = self.layout
        if len(fields) != self.width:
            raise _Reject(f"has {len(fields)} fields but the header has {self.width} "
                          "(a stray quote or delimiter?)")
        joined = "".join(fields)
        if not joined.isascii():
            try:
                joined.encode("utf-8")
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
        plan = self._plan(fields[lay.lists]) if lay.lists is not None else 0
        cats = self._categories(fields[lay.categories]) if lay.categories is not None else None
        created = self._created(fields[lay.created_at]) if lay.created_at is not None else None
        return (row, line, address.email, address.key, name, self._attributes(fields),
                self._empty if cats is None else self.convert_json(cats), cats is not None, plan, created,
                staging.pack(fields), address.hash if self.hash_keys else None)

    def _attributes(self, fields: list[str]) -> Any:
        """The row's non-empty attribute cells as the database stores them (the same cells, once)."""
        cells = self._attribute_cells(fields)
        cached = self._attribute_json.get(cells)
        if cached is None:
            cached = self.convert_json({key: v for i, key in self.layout.attributes if (v := fields[i].strip())})
            if len(self._attribute_json) < 10_000:
                self._attribute_json[cells] = cached
        return cached

    def _plan(self, cell: str) -> int:
        cached = self._list_cells.get(cell)
        if cached is None:
            try:
                lists = self._parse_lists(cell)
                cached = self._plans.get(lists)
                if cached is None:
                    cached = self._plans[lists] = len(self.cells)
                    self.cells[cached] = lists
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
    consent evidence. The file is read whole into staging tables first, then written in batches, one
    transaction each: a failure keeps earlier batches and names the failing one; re-run after fixing.
    The import writes on a connection of its own: `session` is committed first.
    """
    path = Path(path)
    if preconfirmed and not source.strip():
        raise DigestError("--preconfirmed needs --source: say where and when these readers gave consent "
                          "(e.g. \"signup form on example.com, 2019-2024\")")
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed below; the text wrapper reads through it)
    except OSError as e:
        raise CSVError(f"{path}: cannot open: {e.strerror}") from None
    session.commit()
    engine = session.get_bind()
    if engine.dialect.name not in ("sqlite", "postgresql"):
        raw.close()
        raise DigestError(f"importing needs SQLite or PostgreSQL (ON CONFLICT DO NOTHING), not {engine.dialect.name}")
    with _fewer_collections(), engine.connect() as conn, Session(bind=conn, expire_on_commit=False) as own:
        return _import(own, path, raw, list_slug=list_slug, preconfirmed=preconfirmed, source=source,
                       dry_run=dry_run, create_lists=create_lists, categories=categories, batch_size=batch_size,
                       progress=progress)


def _import(session: Session, path: Path, raw: io.BufferedReader, *, list_slug: str, preconfirmed: bool,
            source: str, dry_run: bool, create_lists: bool, categories: tuple[str, ...] | None, batch_size: int,
            progress: Progress | None) -> ImportReport:
    size = max(1, path.stat().st_size)
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
    report = ImportReport(path, dry_run=dry_run)
    rejects_path = path.with_name(path.stem + ".rejects.csv")
    rejects_path.unlink(missing_ok=True)  # a stale report from an earlier run would mislead
    stage: staging.Stage | None = None
    header: list[str] = []
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
        lists = set(session.scalars(select(MailingList.slug))) | {lifecycle.DEFAULT_LIST}
        if layout.lists is None and list_slug not in lists:
            if list_slug != lifecycle.DEFAULT_LIST and not create_lists:
                raise NotFound(f"no list named {list_slug!r}: create it with "
                               f"`digest subscribers lists create {list_slug}` (or use --create-lists)")
            lists.add(list_slug)
        check_suppressed = session.scalar(select(Suppression.email_hash).limit(1)) is not None
        parser = _Parser(layout, lists, create_lists, categories, list_slug,
                         json_converter(session.connection(), staging.staged, "attributes"), check_suppressed)
        stage = staging.Stage(session)
        # 1. the whole file into the staging table; parsing (CSV, addresses) runs one chunk ahead in a
        #    thread, so on two cores the next chunk is parsed while this one is stored
        chunks = _ahead(_parse(text, raw, delimiter, parser, CHUNK_SIZE))
        for chunk in chunks:
            report.rows += chunk.rows
            report.blank += chunk.blank
            report.rejected += len(chunk.rejects)
            stage.reject(chunk.rejects)
            stage.add(chunk.good)
            session.commit()
            if progress:
                progress(chunk.position, 2 * size)
        # 2. checks on the whole set, then the writes in address order
        stage.sort()
        report.rejected += stage.drop_duplicates()
        if check_suppressed:
            report.suppressed += stage.drop_suppressed()
        writer = staging.Writer(stage, parser.cells, preconfirmed=preconfirmed, dry_run=dry_run,
                                source=source.strip() or f"import of {path.name}", file_name=path.name)
        batches = list(stage.batches(batch_size))
        for done, (condition, count) in enumerate(batches, 1):
            writer.write(condition, count, report)
            if progress:
                progress(size + size * done // len(batches), 2 * size)
        if progress:
            progress(2 * size, 2 * size)
    finally:
        if chunks is not None:
            chunks.close()  # stops the parsing thread before the file is closed
        text.close()
        if stage is not None:
            try:
                report.rejects_path = _write_rejects(rejects_path, header, stage.rejects())
            finally:
                stage.close()
    return report


def _write_rejects(path: Path, header: list[str], rows: Iterator[tuple[int, int, str, list[str]]]) -> Path | None:
    """`<input>.rejects.csv`: one line per row not applied as written, in row order (none: no file)."""
    first = next(rows, None)
    if first is None:
        return None
    with open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["_row", "_line", "_reason", *header])
        for row, line, reason, fields in itertools.chain([first], rows):
            writer.writerow([row, line, reason, *fields])
    return path


@dataclass
class _Chunk:
    """What the parser hands over: up to a chunk of good rows (staged tuples) and the rejects met on the way."""

    good: list[tuple[Any, ...]]
    rejects: list[staging.RejectRow]
    rows: int
    blank: int
    position: int


def _parse(text: TextIO, raw: io.BufferedReader, delimiter: str, parser: _Parser, chunk_size: int,
           ) -> Iterator[_Chunk]:
    """Chunks of parsed rows and rejects; a record csv cannot read is a reject with its error text."""
    reader = csv.reader(text, delimiter=delimiter, doublequote=True, skipinitialspace=False, strict=False)
    chunk = _Chunk([], [], 0, 0, 0)
    row = line = 1  # the header was row 1, line 1
    parse = parser.parse
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
        except _Reject as e:
            chunk.rejects.append((row, start, str(e), fields))
        if len(chunk.good) >= chunk_size or len(chunk.rejects) >= 20_000:  # mostly bad rows: memory stays flat
            chunk.position = raw.tell()
            yield chunk
            chunk = _Chunk([], [], 0, 0, 0)
    chunk.position = raw.tell()
    yield chunk


_DONE = object()


def _ahead(items: Iterator[Any]) -> Generator[Any, None, None]:
    """Run an iterator in a thread, one item ahead of the consumer; its errors are re-raised here, and
    closing this generator stops the thread.

    The thread asks for the next item only once the consumer has taken the last one: two chunks are
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
