"""Subscriber tables: Subscriber, MailingList, Membership, ListCount, Event, Suppression.

Statuses live on the membership (one per person and list). They are changed only by
`subscribers.lifecycle`, which writes an Event row for every change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from digest.store import Base, UTCDateTime, utcnow
from subscribers.membership_status import MembershipStatus

__all__ = ["MembershipStatus"]  # declared apart, so a read without SQLAlchemy (subscribers.profile) has it too


#: Statuses that only the reader's own fresh double opt-in may leave.
WITHDRAWN = frozenset({MembershipStatus.UNSUBSCRIBED, MembershipStatus.BOUNCED, MembershipStatus.COMPLAINED})

#: The column type: VARCHAR(16) holding the values (no database enum, no CHECK: the schema is unchanged);
#: rows read back as MembershipStatus members.
_STATUS = Enum(MembershipStatus, native_enum=False, create_constraint=False, length=16,
               values_callable=lambda statuses: [s.value for s in statuses])


class Subscriber(Base):
    __tablename__ = "subscribers"
    #: ids are never reused after an erasure, so an old signed link can never point at someone else.
    #: On PostgreSQL, trigram GIN indexes (pg_trgm) serve the admin's substring search (`LIKE '%x%'`,
    #: `ILIKE`), which a B-tree cannot; SQLite has no such index and keeps its table scan.
    __table_args__ = (
        Index("ix_subscribers_email_key_trgm", "email_key", postgresql_using="gin",
              postgresql_ops={"email_key": "gin_trgm_ops"}).ddl_if(dialect="postgresql"),
        Index("ix_subscribers_name_trgm", "name", postgresql_using="gin",
              postgresql_ops={"name": "gin_trgm_ops"}).ddl_if(dialect="postgresql"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    #: normalised, case-folded address: the unique identity of a person
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: the reader's IANA time zone (validated at every door, `subscribers.zones`); NULL: the publication's
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", passive_deletes=True)


class MailingList(Base):
    __tablename__ = "lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "list_id", name="uq_membership_subscriber_list"),
        # the admin's list/status filters read an index range already in subscriber order (keyset pages,
        # capped counts: subscribers.search); migration 0008_admin_indexes
        Index("ix_memberships_list_status_subscriber", "list_id", "status", "subscriber_id"),
        Index("ix_memberships_status_subscriber", "status", "subscriber_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    status: Mapped[MembershipStatus] = mapped_column(_STATUS, default=MembershipStatus.PENDING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    confirm_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    subscriber: Mapped[Subscriber] = relationship(back_populates="memberships")
    mailing_list: Mapped[MailingList] = relationship()


class ListCount(Base):
    """How many members one list has in one status, as `subscribers.counts.refresh` counted them at
    `counted_at` (every row of one refresh shares it). An exact GROUP BY over a million memberships costs
    about 300 ms, too much for every view of the admin's pages, so it is run every few minutes instead and
    its result kept here (listmonk keeps its list subscriber counts the same way, in a materialized view
    refreshed periodically). Absent rows are zeros."""

    __tablename__ = "list_counts"

    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[MembershipStatus] = mapped_column(_STATUS, primary_key=True)
    members: Mapped[int] = mapped_column(Integer)
    counted_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Event(Base):
    """One change of consent or status: what, when, from where. The evidence an admin shows."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=True, index=True)
    list_id: Mapped[int | None] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    old_status: Mapped[MembershipStatus | None] = mapped_column(_STATUS, nullable=True)
    new_status: Mapped[MembershipStatus | None] = mapped_column(_STATUS, nullable=True)
    source: Mapped[str] = mapped_column(String(255), default="")
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Suppression(Base):
    """A hashed address that must never be added again (GDPR erasure leaves only this)."""

    __tablename__ = "suppressions"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
