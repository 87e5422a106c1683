"""An existing database upgraded from the first release's schema (0001), on each backend: the data stays,
the schema ends up as the models say (the PostgreSQL search indexes included), and the way back works."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select

import subscribers.models  # noqa: F401  (registers the subscriber tables on Base)
from digest.store import Base, alembic_config, engine_for, migrate, schema_filter, session_factory
from subscribers import lifecycle
from subscribers.models import Membership, MembershipStatus, Subscriber
from subscribers.search import Query, search

TRGM = {"ix_subscribers_email_key_trgm", "ix_subscribers_name_trgm"}


def _to(url: str, revision: str, *, down: bool = False) -> None:
    with engine_for(url).begin() as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def _indexes(url: str) -> set[str]:
    return {i["name"] for i in inspect(engine_for(url)).get_indexes("subscribers") if i["name"]}


def test_a_database_of_the_first_release_upgrades_with_its_data(database_url: str, backend: str) -> None:
    url = database_url
    _to(url, "0001")
    with session_factory(url)() as s:  # readers as release 0001 stored them (its subscriber tables)
        weekly = lifecycle.ensure_list(s)
        for i, name in enumerate(["Ann Lee", "Bob Ray", "Cy Twombly"], start=1):
            address = lifecycle.normalize(f"Reader{i}@Example.com")
            # Core inserts naming 0001's columns only: the models have columns later revisions add
            sub_id = s.execute(insert(Subscriber.__table__).values(email=address.email, email_key=address.key,
                                                                   name=name).returning(Subscriber.__table__.c.id)
                               ).scalar_one()
            s.execute(insert(Membership.__table__).values(subscriber_id=sub_id, list_id=weekly.id,
                                                          status=MembershipStatus.ACTIVE))
        s.commit()
    assert not (_indexes(url) & TRGM)

    migrate(url)  # what `digest` does at start: upgrade to the newest
    with engine_for(url).connect() as conn:
        opts = {"compare_type": False, "include_object": schema_filter(conn.dialect.name)}
        assert compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata) == []
    assert (_indexes(url) & TRGM) == (TRGM if backend == "postgresql" else set())
    with session_factory(url)() as s:
        assert [r.email for r in search(s, Query(q="twomb")).rows] == ["Reader3@example.com"]
        assert [r.name for r in search(s, Query(q="READER", status="active")).rows] == ["Cy Twombly", "Bob Ray",
                                                                                          "Ann Lee"]
        assert s.scalar(select(Subscriber.name).where(Subscriber.email_key == "reader1@example.com")) == "Ann Lee"

    _to(url, "0002_batches", down=True)  # the way back to 0002 drops the search indexes, keeps the data
    assert not (_indexes(url) & TRGM)
    with session_factory(url)() as s:
        assert len(list(s.scalars(select(Subscriber.id)))) == 3
    migrate(url)
    assert (_indexes(url) & TRGM) == (TRGM if backend == "postgresql" else set())
