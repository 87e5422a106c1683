"""The database: engine and sessions, and the pipeline's tables (issues, deliveries, feed state, ...).

Subscriber tables live in `subscribers.models` on the same `Base`. The schema is created and upgraded
by Alembic (`migrations/`), never by `create_all`, so what tests run is what production runs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    Unicode,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from digest.dbapi import application_name
from digest.issue_status import IssueStatus
from digest.resources import MIGRATIONS
from digest.revisions import migration_heads


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class IssueRow(Base):
    """An issue: its frozen content, its rendered parts, and where it is in draft -> sent (`IssueStatus`,
    moved only by `digest.issue_status.move`)."""

    __tablename__ = "issues"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    list_slug: Mapped[str] = mapped_column(String(64), default="weekly")
    status: Mapped[str] = mapped_column(String(16), default=IssueStatus.DRAFT, index=True)
    subject: Mapped[str] = mapped_column(String(255))
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    html: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    html_bytes: Mapped[int] = mapped_column(Integer, default=0)
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    approved_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    snapshot_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    recalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    recalled_by: Mapped[str | None] = mapped_column(String(255), nullable=True)


class Delivery(Base):
    """The ledger: one row per issue and reader. Unique, so a second send of an issue is a no-op.

    queued -> claimed (a request is about to go out) -> submitted | failed; `skipped` when the reader
    left the list between snapshot and claim. A `claimed` row left by a dead process is of unknown fate
    and is resolved only by an admin (`digest deliveries resolve`).
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        # a reader once per issue; subscriber first, so that it also finds a reader's rows (an erasure, the
        # reports) and no index of its own is written for every row the snapshot inserts (migration
        # 0016_deliveries_keys)
        UniqueConstraint("subscriber_id", "issue_id", name="uq_delivery_subscriber_issue"),
        # the issue's rows in id order: the claim's pick (`id > after`), and every look at one issue's rows.
        # No index names `status` or `batch`, the columns a claim and a mark change: PostgreSQL then writes
        # both as heap-only tuples, without an entry in any index (PostgreSQL docs, "Heap-Only Tuples (HOT)"),
        # and SQLite rewrites the row alone. A batch's rows are found by primary key and batch (migration
        # 0014_deliveries_hot; the ledger's statements for 100,000 readers on PostgreSQL 6.0 -> 3.8 s)
        Index("ix_deliveries_issue_id", "issue_id", "id"),
        # provider_batch is NULL on every row but those scheduled: indexed only where set, so snapshotting,
        # claiming and marking a row write no entry (issue 16: the claim's UPDATE was the send's costliest
        # statement). Every lookup is `= value` (implies NOT NULL), which both SQLite and PostgreSQL match to a
        # partial index. `worker` has no index: every lookup by it also names the issue (migration
        # 0013_no_worker_index)
        Index("ix_deliveries_provider_batch", "provider_batch", sqlite_where=text("provider_batch IS NOT NULL"),
              postgresql_where=text("provider_batch IS NOT NULL")),
        # three quarters of each page left free: a claim rewrites every row of its pages in one transaction
        # (none of its old versions can be pruned before it commits), and a claimed row (batch, worker,
        # lease) is 160 bytes to the snapshot's 95, so each fits twice only on a page filled to a quarter;
        # the mark after it finds the claim's versions dead, prunes them and is heap-only too. At 50, 43,000
        # of a 100,000-reader send's 200,000 updates left their page (migration 0017_deliveries_room)
        {"postgresql_with": {"fillfactor": 25}},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # No foreign keys (migration 0016_deliveries_keys): PostgreSQL checks one per row inserted, a query of
    # its own each time, and the two were half of the snapshot's INSERT (issue 16). Every row is written by
    # `ledger.snapshot` alone, from a join with the subscribers, with the issue's row locked and erasures held
    # off until it commits (`digest.locks.hold_off_erasures`); issues are never deleted; an erasure
    # (`subscribers.lifecycle.erase`) blanks and unlinks the person's rows itself
    issue_id: Mapped[int] = mapped_column(Integer)
    subscriber_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    email: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    batch: Mapped[str | None] = mapped_column(String(64), nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # the provider's scheduled batch (SendGrid batch_id) and its send moment, recorded before the request
    # goes out: a request of unknown fate can then be cancelled, and a scheduled issue recalled. Set here
    # only for readers whose claim was split into several requests (and rows claimed before migration
    # 0015_batch_schedule); a claim's own is its batch's (`SendBatch.provider_batch`)
    provider_batch: Mapped[str | None] = mapped_column(String(128), nullable=True)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # local delivery ([schedule] local_delivery): the reader's zone at the snapshot and the moment their copy
    # is due there (the send moment's local clock time in that zone); NULL: due with the issue
    zone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the edition key (digest.editions) of the copy this reader was sent: which listings and which appeal
    # variant it showed, for the reports (a supplier's reach, the appeal per variant); None before 0005
    edition: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the lease of a claimed row (several send workers, digest.deliver.ledger): which worker holds it and
    # until when (renewed while it works). Whether its request was about to go out is its batch's
    # (SendBatch.posted_at): one row per batch, not a stamp on each reader's row
    worker: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SendBatch(Base):
    """A claimed batch of the ledger (`Delivery.batch`): whether its request was about to go out.

    Written once per batch instead of once per reader (migration 0012_send_batches, issue 16). `posted_at`
    set: the request may have gone out, so readers of this batch still claimed when their worker is gone
    are of unknown fate; NULL: they are queued again. `reaped_at`: another worker took the batch over; from
    then on its owner may not post it. Post and reap both write this one row, so its row lock orders them
    (digest.deliver.ledger.post / reap)."""

    __tablename__ = "send_batches"

    batch: Mapped[str] = mapped_column(String(64), primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"), index=True)
    posted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reaped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # a scheduled send's provider batch (SendGrid batch_id) and send moment for the claim's readers, written
    # once here instead of on each reader's row (migration 0015_batch_schedule): a row's own
    # `Delivery.provider_batch`, where set, comes first (`digest.deliver.ledger`, `_provider`)
    provider_batch: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the lowest and highest delivery id the claim took: its readers' rows are found by this range and the
    # batch (no index names `Delivery.batch`, migration 0014_deliveries_hot)
    first_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DeliveryEvent(Base):
    """A provider event (delivered, open, click, bounce, ...), idempotent on the provider's event id."""

    __tablename__ = "delivery_events"
    __table_args__ = (Index("ix_delivery_events_issue_kind", "issue_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    provider_event_id: Mapped[str] = mapped_column(String(128), unique=True)
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"), nullable=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class FeedState(Base):
    """Per feed: conditional-GET validators and health, so a failing feed is reported, not silent."""

    __tablename__ = "feed_state"

    url: Mapped[str] = mapped_column(String(2048), primary_key=True)
    etag: Mapped[str | None] = mapped_column(String(512), nullable=True)
    last_modified: Mapped[str | None] = mapped_column(String(128), nullable=True)
    last_fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_new_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    quiet_runs: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class SeenArticle(Base):
    """Every article ever collected: its identities, when first seen, and the issue that sent it."""

    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(2048), unique=True)
    link_key: Mapped[str | None] = mapped_column(String(2048), nullable=True, index=True)
    title_key: Mapped[str | None] = mapped_column(String(512), nullable=True, index=True)
    feed: Mapped[str] = mapped_column(String(2048), default="")
    title: Mapped[str] = mapped_column(Text, default="")
    #: the Article as last collected (JSON), so a feed answering 304 still offers its unsent items
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_issue_id: Mapped[int | None] = mapped_column(
        ForeignKey("issues.id", ondelete="SET NULL"), nullable=True, index=True)


class ListingFeature(Base):
    """Which supplier each issue featured: drives the fair rotation and `digest listings report`."""

    __tablename__ = "listing_features"
    __table_args__ = (UniqueConstraint("issue_id", "listing_key", name="uq_feature_issue_listing"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    issue_number: Mapped[int] = mapped_column(Integer, index=True)
    listing_key: Mapped[str] = mapped_column(String(512), index=True)
    name: Mapped[str] = mapped_column(String(512))


class User(Base):
    """An editor or admin of the web side (readers never log in)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProviderCancel(Base):
    """A cancel SendGrid holds for one of our scheduled batches. It takes one of the 10 slots of "batches
    cancelled or paused at one time" until it is deleted, and deleting it while the batch's send_at is still
    ahead would send the batch after all; so it is kept here until its send_at has passed (the mail was
    dropped), then deleted at SendGrid and here (`digest.deliver.batches`)."""

    __tablename__ = "provider_cancels"

    batch: Mapped[str] = mapped_column(String(128), primary_key=True)
    send_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lock(Base):
    """A named lock held by one process (a sender, the scheduler), with a heartbeat so a dead holder expires:
    see `digest.locks`."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RateHit(Base):
    """One counted attempt at a rate-limited door (a login, a sign-up) by a key (an IP address), shared by
    every `digest serve` worker through the database: see `digest.web.ratelimit`."""

    __tablename__ = "rate_hits"
    __table_args__ = (Index("ix_rate_hits_scope_key_at", "scope", "key", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


#: APScheduler 3's SQLAlchemyJobStore table, declared here (as that store defines it) so Alembic owns it
#: like every other table; the store's own create(checkfirst) then finds it and does nothing.
apscheduler_jobs = Table(
    "apscheduler_jobs", Base.metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)


def core_table(model: type[Base]) -> Table:
    """A mapped class's Core table, for bulk statements that need no ORM bookkeeping (SQLAlchemy types
    `__table__` as any FromClause; a declarative class always has a Table)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def schema_filter(dialect: str) -> Callable[..., bool]:
    """Alembic's `include_object` for one dialect: leaves out what the models create only on another
    (`Index(...).ddl_if(dialect="postgresql")`: the trigram search indexes), which autogenerate would
    otherwise report as missing on SQLite."""

    def include(obj: Any, _name: str | None, _type: str, _reflected: bool, _compare_to: Any) -> bool:
        only = getattr(getattr(obj, "_ddl_if", None), "dialect", None)
        return only is None or only == dialect

    return include


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # a new database only (an existing one keeps its own): SQLite's default 4 KiB pages. 16 KiB pages made
    # the send's ledger writes dearer (each row's claim and mark moves cells within a page, and every
    # commit writes and checksums its dirty pages whole into the WAL): 6,300 instructions more per reader,
    # against 2.6% fewer per row for the import (callgrind; docs/delivery.md, Speed)
    cur.execute("PRAGMA page_size=4096")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


_engines: weakref.WeakSet[Engine] = weakref.WeakSet()  # the engines made (`close_engines`); lru_cache keeps 16


@lru_cache(maxsize=16)
def engine_for(url: str) -> Engine:
    """One engine per URL per process; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        # each connection names its process (`application_name`), unless the URL names it itself
        named = {} if "application_name=" in url else {"application_name": application_name()}
        engine = create_engine(url, pool_pre_ping=True, connect_args=named)
    _engines.add(engine)
    return engine


def close_engines() -> None:
    """Close every engine's pooled connections (at the command's end, `digest.cli.main`)."""
    for engine in list(_engines):
        engine.dispose()


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _schema_version(conn: Connection) -> frozenset[str] | None:
    """The revisions Alembic recorded in the database, or None when it has none (a new database)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return frozenset(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def migrate(url: str) -> None:
    """Create or upgrade the schema to the newest migration (idempotent; cheap when it is current)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with engine_for(url).begin() as conn:
        if _schema_version(conn) == migration_heads():
            return
        from alembic import command

        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
