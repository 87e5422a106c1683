"""Streaming CSV import of subscribers, with a rejects report next to the input: the driver of reading
(`csv_read`), parsing (`csv_rows`), staging and writing (`staging`). Export is `csv_export`.

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
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from digest.errors import DigestError
from subscribers import counts, lifecycle, staging
from subscribers.bulk import json_converter
from subscribers.csv_read import Chunk, open_file, read_chunks, read_header
from subscribers.csv_rows import RowParser
from subscribers.csv_safe import safe_row
from subscribers.import_report import ImportReport
from subscribers.models import MailingList, Suppression

#: rows per transaction: in address order each batch fills its own stretch of the address index, so
#: batches need not be large; a failed batch is re-done whole by a re-run
BATCH_SIZE = 20_000
#: rows the parser hands over at a time (two chunks are in memory at once)
CHUNK_SIZE = 10_000
Progress = Callable[[int, int], None]


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
    raw, text = open_file(path)
    session.commit()
    engine = session.get_bind()
    if not isinstance(engine, Engine):  # the import opens a connection of its own
        text.close()
        raise TypeError("import_csv needs a session bound to an engine, not to one connection")
    if engine.dialect.name not in ("sqlite", "postgresql"):
        text.close()
        raise DigestError(f"importing needs SQLite or PostgreSQL (ON CONFLICT DO NOTHING), not {engine.dialect.name}")
    with _fewer_collections(), engine.connect() as conn, Session(bind=conn, expire_on_commit=False) as own:
        report = _import(own, path, raw, text, list_slug=list_slug, preconfirmed=preconfirmed, source=source,
                         dry_run=dry_run, create_lists=create_lists, categories=categories, batch_size=batch_size,
                         progress=progress)
    if not dry_run:
        counts.refresh(session)  # the admin's list counts show the import now, not at the next refresh
    return report


def _import(session: Session, path: Path, raw: io.BufferedReader, text: io.TextIOWrapper, *, list_slug: str,
            preconfirmed: bool,
            source: str, dry_run: bool, create_lists: bool, categories: tuple[str, ...] | None, batch_size: int,
            progress: Progress | None) -> ImportReport:
    size = max(1, path.stat().st_size)
    report = ImportReport(path, dry_run=dry_run)
    rejects_path = path.with_name(path.stem + ".rejects.csv")
    rejects_path.unlink(missing_ok=True)  # a stale report from an earlier run would mislead
    stage: staging.Stage | None = None
    header: list[str] = []
    chunks: Generator[Chunk, None, None] | None = None
    try:
        delimiter, header, layout = read_header(text, path)
        unnamed = [str(i + 1) for i in layout.ignored if layout.names[i] == ""]
        if unnamed:
            report.warnings.append(f"column(s) {', '.join(unnamed)} have no name in the header: ignored")
        lists = set(session.scalars(select(MailingList.slug))) | {lifecycle.DEFAULT_LIST}
        if layout.lists is None and list_slug not in lists:
            if list_slug != lifecycle.DEFAULT_LIST and not create_lists:
                raise lifecycle.unknown_list(session, list_slug, "create it with "
                                             f"`digest subscribers lists create {list_slug}` (or use --create-lists)")
            lists.add(list_slug)
        check_suppressed = session.scalar(select(Suppression.email_hash).limit(1)) is not None
        parser = RowParser(layout, lists, create_lists, categories, list_slug,
                           json_converter(session.connection(), staging.staged, "attributes"), check_suppressed)
        stage = staging.Stage(session)
        # 1. the whole file into the staging table; parsing (CSV, addresses) runs one chunk ahead in a
        #    thread, so on two cores the next chunk is parsed while this one is stored
        chunks = _ahead(read_chunks(text, raw, delimiter, parser.parse, CHUNK_SIZE, path))
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
        writer.writerow(safe_row(["_row", "_line", "_reason", *header]))  # neutralised, as export (csv_safe)
        for row, line, reason, fields in itertools.chain([first], rows):
            writer.writerow(safe_row([row, line, reason, *(fields or ())]))
    return path



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

