"""The import's staging tables: a parsed file, sorted and checked as a whole, then written in batches.

An import first appends every good row of the file to a temporary table (`staged`), then copies it
in address order (`ordered`, one sort by the database) and works on the set: a repeat of an earlier
row sits right after it, erased addresses are one join, and the rows are written to the store in
batches of consecutive addresses. So each batch lands on its own stretch of the unique address index
instead of all over it (a million-row import writes each index page about once, not once per batch),
and a batch's subscribers, memberships and consent events are each one INSERT ... SELECT.

Temporary tables belong to one database connection (SQLite keeps them in a scratch file, PostgreSQL
in the session): the import runs on a connection of its own, and `Stage.close` drops them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ColumnElement,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    false,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session

from digest.errors import DigestError
from digest.store import UTCDateTime, utcnow
from subscribers import lifecycle
from subscribers.bulk import among, load_rows
from subscribers.csv_read import RejectRow
from subscribers.import_report import ImportReport
from subscribers.models import WITHDRAWN, Membership, MembershipStatus, Subscriber, Suppression

_META = MetaData()
#: a row's `lists` cell as the parser read it: (list slug, the status it names or None to join), ...
ListsCell = tuple[tuple[str, MembershipStatus | None], ...]


def _row_columns() -> list[Column[Any]]:
    return [
        Column("file_row", Integer, nullable=False),
        Column("file_line", Integer, nullable=False),
        Column("email", String(320), nullable=False),
        Column("email_key", String(320), nullable=False),
        Column("name", String(255), nullable=False),
        Column("attributes", JSON, nullable=False),  # only the cells given (an update merges them)
        Column("categories", JSON, nullable=False),
        Column("categories_given", Boolean, nullable=False),
        Column("plan", Integer, nullable=False),  # the row's `lists` cell, numbered by the parser
        Column("created_at", UTCDateTime, nullable=True),
        Column("fields", Text, nullable=False),  # the record as read (see `pack`), for the rejects report
        Column("email_hash", String(64), nullable=True),  # only when there are suppressions to check
        Column("timezone", String(64), nullable=True),  # an IANA name (checked by the parser), or not given
    ]


#: the file's good rows as read: what the subscribers table stores, plus where each came from
staged = Table("digest_import_rows", _META, *_row_columns(), prefixes=["TEMPORARY"])
STAGED_COLUMNS = tuple(c.name for c in staged.c)
#: the same rows in address order (then row order): `seq` numbers them so
ordered = Table("digest_import_ordered", _META, Column("seq", Integer, primary_key=True), *_row_columns(),
                prefixes=["TEMPORARY"])

#: each staged row with the person stored under its address
STORED = ordered.join(Subscriber.__table__, Subscriber.email_key == ordered.c.email_key)

#: the memberships a new person gets, per `lists` cell: (plan, list id, status)
plans = Table(
    "digest_import_plans", _META,
    Column("plan", Integer, primary_key=True, autoincrement=False),
    Column("list_id", Integer, primary_key=True, autoincrement=False),
    Column("status", String(16), nullable=False),
    prefixes=["TEMPORARY"],
)

#: every row not applied as written, kept until the report is written in row order
rejected = Table(
    "digest_import_rejects", _META,
    Column("file_row", Integer, nullable=False),
    Column("file_line", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("fields", Text, nullable=True),
    prefixes=["TEMPORARY"],
)

_SEP, _JSON_MARK = "\x1f", "\x1e"


def pack(fields: list[str]) -> str:
    """A record as one text: unit separators between fields; JSON (ASCII, escaped) for the rare record
    that holds one itself, holds a NUL (PostgreSQL text cannot) or is not UTF-8 (its undecodable bytes
    come back as they were, for the rejects report)."""
    text = _SEP.join(fields)
    if text.count(_SEP) != len(fields) - 1 or _JSON_MARK in text or "\x00" in text \
            or not text.isascii() and _surrogates(text):
        return _JSON_MARK + json.dumps(fields)
    return text


def _surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unpack(text: str | None) -> list[str]:
    if not text:
        return [] if text is None else [""]
    if text.startswith(_JSON_MARK):
        return list(json.loads(text[1:]))
    return text.split(_SEP)


class Stage:
    """The staging tables on one connection of the store, for one import."""

    def __init__(self, session: Session) -> None:
        self.session = session
        if session.get_bind().dialect.name == "sqlite":
            # scratch data in large pages (as the store's own), sorted with a helper thread
            for pragma in ("temp.page_size=16384", "threads=2"):
                session.connection().exec_driver_sql(f"PRAGMA {pragma}")
        _META.drop_all(session.connection(), checkfirst=True)  # left by an import that crashed
        _META.create_all(session.connection())
        session.commit()

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        """Stage good rows (tuples in STAGED_COLUMNS order; JSON columns already converted): COPY on
        PostgreSQL, executemany on SQLite (`bulk.load_rows`)."""
        load_rows(self.session.connection(), staged, STAGED_COLUMNS, rows, converted=("attributes", "categories"))

    def reject(self, rows: Iterable[RejectRow]) -> None:
        data = [(row, line, reason, None if fields is None else pack(fields)) for row, line, reason, fields in rows]
        if data:
            load_rows(self.session.connection(), rejected, ("file_row", "file_line", "reason", "fields"), data)

    def sort(self) -> None:
        """Copy the rows into address order (one sort by the database), then drop the unsorted copy."""
        columns = [ordered.c[name] for name in STAGED_COLUMNS]
        self.session.execute(insert(ordered).from_select(
            columns, select(staged).order_by(staged.c.email_key, staged.c.file_row)))
        self.session.commit()
        staged.drop(self.session.connection())
        if self.session.get_bind().dialect.name == "postgresql":
            # autovacuum never analyzes temporary tables: without statistics the planner guesses the sorted
            # copy's size and joins each batch badly (https://www.postgresql.org/docs/current/sql-analyze.html)
            self.session.connection().exec_driver_sql(f"ANALYZE {ordered.name}")
        self.session.commit()

    def drop_duplicates(self) -> int:
        """Reject every row whose address an earlier row already gave; returns how many. In address
        order a repeat comes right after the row it repeats: one pass over neighbours finds them all."""
        before = ordered.alias("before")
        rows = self.session.execute(
            select(ordered.c.seq, ordered.c.file_row, ordered.c.file_line, ordered.c.email, ordered.c.fields,
                   before.c.seq, before.c.file_row)
            .join(before, before.c.seq == ordered.c.seq - 1).where(before.c.email_key == ordered.c.email_key)
            .order_by(ordered.c.seq))
        out: list[RejectRow] = []
        seqs: list[int] = []
        first: dict[int, int] = {}  # seq of a repeat -> the row it repeats (a third repeats the first too)
        for seq, row, line, email, fields, prev_seq, prev_row in rows:
            first[seq] = first.pop(prev_seq, prev_row)
            seqs.append(seq)
            out.append((row, line, f"duplicate of row {first[seq]} (the same address: {email})", unpack(fields)))
        return self._drop(seqs, out)

    def drop_suppressed(self) -> int:
        """Reject every row whose address was erased on request (the hashes were staged); returns how many."""
        rows = self.session.execute(
            select(ordered.c.seq, ordered.c.file_row, ordered.c.file_line)
            .join(Suppression, Suppression.email_hash == ordered.c.email_hash)).all()
        return self._drop([seq for seq, _, _ in rows], [
            (row, line, "suppressed: this address was erased on request and is never added again", None)
            for _, row, line in rows])

    def _drop(self, seqs: list[int], rows: list[RejectRow]) -> int:
        for i in range(0, len(rows), 10_000):
            self.reject(rows[i:i + 10_000])
            self.session.execute(delete(ordered).where(ordered.c.seq.in_(seqs[i:i + 10_000])))
        self.session.commit()
        return len(rows)

    def batches(self, size: int) -> Iterator[tuple[Any, int]]:
        """(condition, number of rows) per batch of at most `size` rows, in address order."""
        last = self.session.scalar(select(func.max(ordered.c.seq))) or 0
        for low in range(0, last, size):
            condition = ordered.c.seq.between(low + 1, low + size)
            count = self.session.scalar(select(func.count()).select_from(ordered).where(condition)) or 0
            if count:
                yield condition, count

    def set_plans(self, rows: list[tuple[int, int, MembershipStatus]]) -> None:
        self.session.execute(delete(plans))
        if rows:
            self.session.execute(insert(plans), [{"plan": p, "list_id": lid, "status": s} for p, lid, s in rows])

    def rejects(self) -> Iterator[tuple[int, int, str, list[str]]]:
        """Every rejected row, in row order."""
        rows = self.session.execute(select(rejected).order_by(rejected.c.file_row)
                                    .execution_options(yield_per=5000))
        for row, line, reason, fields in rows:
            yield row, line, reason, unpack(fields)

    def close(self) -> None:
        self.session.rollback()
        _META.drop_all(self.session.connection(), checkfirst=True)
        self.session.commit()


class Writer:
    """Writes the staged rows to the store, one batch (a stretch of addresses) per transaction.

    New people are inserted straight from the staging table (the unique address index skips the ones
    already stored) with their memberships and `imported` events (`lifecycle.join_imported`); people
    already stored are compared in Python and changed through `lifecycle.apply_imported`. A dry run
    does the same and rolls each batch back: its counts are the real import's."""

    def __init__(self, stage: Stage, cells: dict[int, ListsCell], *, preconfirmed: bool,
                 dry_run: bool, source: str, file_name: str) -> None:
        self.stage = stage
        self.session = stage.session
        self.dialect = self.session.get_bind().dialect.name
        self.cells = cells
        self.preconfirmed = preconfirmed
        self.dry_run = dry_run
        self.source = source[:255]
        self.file_name = file_name
        self.lists: dict[str, int] = {}
        self.notes: dict[int, int] = {}  # plan -> memberships a new person gets as pending though asked active
        self._planned = False

    def write(self, condition: Any, count: int, report: ImportReport) -> None:
        session = self.session
        rejects: list[RejectRow] = []
        try:
            self._write(condition, count, report, rejects)
        except DigestError:
            session.rollback()
            raise
        except Exception as e:
            session.rollback()
            first, last = session.execute(select(func.min(ordered.c.email), func.max(ordered.c.email))
                                          .where(condition)).one()
            raise DigestError(f"{count} rows of {self.file_name} (addresses {first} to {last}) could not be "
                              f"written ({e.__class__.__name__}: {e}); earlier batches are saved, this one is not: "
                              "fix the cause and run the import again") from e
        if self.dry_run:
            session.rollback()
        else:
            session.commit()
            self._planned = True
        self.stage.reject(rejects)
        session.commit()

    def _plan(self) -> None:
        """The lists the file names (created if new) and the memberships each `lists` cell gives a new person."""
        session = self.session
        slugs = {slug for cell in self.cells.values() for slug, _ in cell}
        self.lists = {slug: lifecycle.ensure_list(session, slug).id for slug in sorted(slugs)}
        rows = []
        for plan, cell in self.cells.items():
            self.notes[plan] = 0
            for slug, wanted in cell:
                new, note = lifecycle.import_status(None, wanted, preconfirmed=self.preconfirmed)
                assert new is not None  # a new membership always gets a status
                rows.append((plan, self.lists[slug], new))
                self.notes[plan] += bool(note)
        self.stage.set_plans(rows)

    def _write(self, condition: Any, count: int, report: ImportReport, rejects: list[RejectRow],
               ) -> None:
        session = self.session
        if not self._planned:  # once, in the first batch's transaction (every batch's, in a dry run)
            self._plan()
        now = utcnow()
        stamp = literal(now, UTCDateTime())
        rows = (select(ordered.c.email, ordered.c.email_key, ordered.c.name, ordered.c.attributes, ordered.c.categories,
                       func.coalesce(ordered.c.created_at, stamp), ordered.c.timezone)
                .where(condition).order_by(ordered.c.email_key))
        new_ids = session.scalars(  # .all(): one fetchall, not a fetchone per new reader
            dialect_insert(self.dialect, cast(Table, Subscriber.__table__))
            .from_select(["email", "email_key", "name", "attributes", "categories", "created_at", "timezone"], rows)
            .on_conflict_do_nothing(index_elements=["email_key"]).returning(Subscriber.id)).all()
        report.added += len(new_ids)
        is_new: ColumnElement[bool] = false()
        if new_ids:
            low, high = min(new_ids), max(new_ids)
            is_new = Subscriber.id.between(low, high) if high - low + 1 == len(new_ids) else \
                among(self.dialect, Subscriber.id, new_ids)
            people = (select(Subscriber.id, plans.c.list_id, plans.c.status, ordered.c.file_row)
                      .select_from(STORED).join(plans, plans.c.plan == ordered.c.plan).where(condition, is_new))
            lifecycle.join_imported(session, people, source=self.source, detail_prefix=f"{self.file_name} row ",
                                    now=now)
            if any(self.notes.values()):
                report.pending_only += sum(self.notes[plan] * n for plan, n in session.execute(
                    select(ordered.c.plan, func.count()).select_from(STORED).where(condition, is_new)
                    .group_by(ordered.c.plan)))
        if len(new_ids) < count:
            self._known(condition, is_new, report, rejects, now)

    def _known(self, condition: Any, is_new: Any, report: ImportReport,
               rejects: list[RejectRow], now: datetime) -> None:
        """The batch's people already stored: merge what changed, plan their memberships."""
        session = self.session
        known = session.execute(
            select(ordered.c.file_row, ordered.c.file_line, ordered.c.name, ordered.c.attributes, ordered.c.categories,
                   ordered.c.categories_given, ordered.c.plan, ordered.c.fields, ordered.c.timezone,
                   Subscriber.id, Subscriber.name, Subscriber.attributes, Subscriber.categories, Subscriber.timezone)
            .select_from(STORED).where(condition, ~is_new)
            .execution_options(yield_per=2000))
        updates: list[dict[str, Any]] = []
        statuses: list[lifecycle.ImportedStatus] = []
        for part in known.partitions():  # a few thousand at a time: memory stays flat
            members = {(sid, lid): (mid, status) for mid, sid, lid, status in session.execute(
                select(Membership.id, Membership.subscriber_id, Membership.list_id, Membership.status)
                .where(among(self.dialect, Membership.subscriber_id, [k.id for k in part])))}
            for (row, line, name, given, cats, cats_given, plan, fields, zone, sid, old_name, attrs, old_cats,
                 old_zone) in part:
                change: dict[str, Any] = {}
                if zone and zone != old_zone:  # an empty cell keeps the reader's zone
                    change["timezone"] = zone
                if name and name != old_name:
                    change["name"] = name
                if given and {**attrs, **given} != attrs:
                    change["attributes"] = {**attrs, **given}
                if cats_given and cats != old_cats:
                    change["categories"] = cats
                if change:
                    updates.append({"id": sid, **change})
                if self._memberships(row, line, sid, plan, fields, members, statuses, report, rejects) or change:
                    report.updated += 1
                else:
                    report.unchanged += 1
        for group in lifecycle.same_columns(updates):
            session.execute(update(Subscriber), group)
        lifecycle.apply_imported(session, statuses, source=self.source, now=now)

    def _memberships(self, row: int, line: int, sid: int, plan: int, fields: str,
                     members: dict[tuple[int, int], tuple[int, MembershipStatus]], out: list[lifecycle.ImportedStatus],
                     report: ImportReport, rejects: list[RejectRow]) -> bool:
        """Plan a known person's memberships as the row's `lists` asks; returns whether any changes."""
        notes = []
        changed = False
        for slug, wanted in self.cells[plan]:
            lid = self.lists[slug]
            mid, old = members.get((sid, lid), (None, None))
            new, note = lifecycle.import_status(old, wanted, preconfirmed=self.preconfirmed)
            if note:
                if old in WITHDRAWN:
                    notes.append(f"{slug}: {note}")
                else:
                    report.pending_only += 1
            if new is not None:
                out.append(lifecycle.ImportedStatus(sid, lid, mid, old, new, detail=f"{self.file_name} row {row}"))
                changed = True
        if notes:
            report.kept_withdrawn += 1
            rejects.append((row, line, "; ".join(notes), unpack(fields)))
        return changed


def dialect_insert(dialect: str, table: Table) -> Any:
    """INSERT with ON CONFLICT for the dialect (SQLite and PostgreSQL have it)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
