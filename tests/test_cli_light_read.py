"""`digest status` and `digest subscribers show` read without SQLAlchemy and pydantic (issue 16): the config's
database URL and zone through digest.config_file, the database through digest.dbapi's read-only runner.

Held here: the runner's own connection reads exactly what a SQLAlchemy session's connection reads with the
same SQL (figures, zones, a person's record, on both databases); config_file's rules are the ones
load_settings applies (the same URL, the same one-line errors); the runner's binding (datetimes as
UTCDateTime stores them, lists, PostgreSQL casts and literal %); a bad config is still exit 2 with one line.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from digest import dbapi
from digest.config import load_settings
from digest.config_file import ENV_DATABASE_URL, basics
from digest.errors import ConfigError
from digest.reports import feature_report, issue_figures, zone_progress
from digest.revisions import migration_heads
from digest.store import Delivery, DeliveryEvent, IssueRow, ListingFeature, session_factory
from subscribers import lifecycle
from subscribers.profile import profile
from tests.conftest import edit_config, run_cli

NOW = datetime(2026, 10, 5, 6, 30, tzinfo=UTC)


def _seed(url: str) -> None:
    """Two issues: #1 sent with local delivery in two zones (queued, submitted ahead and past, failed,
    claimed, events of every counted kind, a reader both bounced and dropped, one opening twice), #2 a
    recalled draft; a reader with memberships and a consent history; a featured supplier."""
    with session_factory(url)() as s:
        lifecycle.subscribe(s, "Ana@Example.COM", name="Ana", source="test form", ip="192.0.2.7",
                            categories=["ports", "rail"])
        person = lifecycle.find(s, "ana@example.com")
        assert person is not None
        person.attributes = {"company": "Tidewell", "city": "Perth"}
        s.flush()
        readers = [lifecycle.upsert_subscriber(s, lifecycle.normalize(f"r{i}@example.com"))[0] for i in range(8)]
        s.flush()
        one = IssueRow(number=1, subject="Ports and rail", status="sent", content={}, sent_at=NOW - timedelta(hours=2))
        two = IssueRow(number=2, subject="Held back", status="draft", content={}, recalled_at=NOW - timedelta(hours=1),
                       recalled_by="editor@example.com")
        s.add_all([one, two])
        s.flush()
        perth, auckland = "Australia/Perth", "Pacific/Auckland"
        rows = [  # (reader, status, zone, due_at, send_at)
            (0, "submitted", perth, NOW - timedelta(hours=1), NOW - timedelta(minutes=30)),
            (1, "submitted", perth, NOW - timedelta(hours=1), NOW + timedelta(hours=3)),
            (2, "queued", auckland, NOW + timedelta(hours=5), None),
            (3, "queued", auckland, NOW - timedelta(hours=5), None),
            (4, "failed", perth, NOW - timedelta(hours=1), None),
            (5, "claimed", auckland, NOW + timedelta(hours=5), None),
            (6, "skipped", None, None, None),
            (7, "submitted", None, None, NOW + timedelta(days=1)),
        ]
        s.execute(insert(Delivery), [
            {"issue_id": one.id, "subscriber_id": readers[r].id, "email": readers[r].email, "status": st, "zone": z,
             "due_at": due, "send_at": at, "updated_at": NOW - timedelta(minutes=40 - r)}
            for r, st, z, due, at in rows])
        events = [(0, "delivered"), (0, "open"), (0, "open"), (0, "click"), (1, "delivered"), (7, "bounce"),
                  (7, "dropped"), (4, "spamreport"), (6, "blocked"), (1, "delivered")]
        s.execute(insert(DeliveryEvent), [
            {"provider_event_id": f"ev-{n}", "issue_id": one.id, "subscriber_id": readers[r].id, "kind": kind,
             "at": NOW - timedelta(minutes=20 - n), "payload": {}} for n, (r, kind) in enumerate(events)])
        s.add_all([ListingFeature(issue_id=one.id, issue_number=1, listing_key="k1", name="Tidewell"),
                   ListingFeature(issue_id=two.id, issue_number=2, listing_key="k2", name="Harbour Co")])
        s.commit()


def _reads(db: dbapi.Reader) -> tuple[object, ...]:
    figures = issue_figures(db, now=NOW)
    return ([asdict(f) for f in figures], zone_progress(db, [f.issue for f in figures], now=NOW),
            profile(db, " ANA@example.com "), feature_report(db, [], last=None), feature_report(db, [], last=1))


def test_the_runner_reads_what_the_session_reads(settings) -> None:  # type: ignore[no-untyped-def]
    url = settings.database_url
    _seed(url)
    with session_factory(url)() as s:
        through_session = _reads(dbapi.reader(s))
        assert _reads(s) == through_session  # a Session is taken as it is
    with dbapi.connect(url) as db:
        assert dbapi.schema_version(db) == migration_heads()
        own = _reads(db)
    assert own == through_session
    figures, zones, person, features, last = own
    first = next(f for f in figures if f["issue"] == 1)
    assert {k: first[k] for k in ("readers", "submitted", "failed", "skipped", "unknown", "queued", "delivered",
                                  "bounced", "complained", "opened", "clicked", "scheduled")} == {
        "readers": 8, "submitted": 3, "failed": 1, "skipped": 1, "unknown": 1, "queued": 2, "delivered": 2,
        "bounced": 1, "complained": 1, "opened": 1, "clicked": 1, "scheduled": 2}
    assert first["delivered_at"] == NOW + timedelta(days=1)  # the last send_at, an aware UTC moment
    second = next(f for f in figures if f["issue"] == 2)
    assert (second["recalled_at"], second["recalled_by"], second["readers"]) == \
        (NOW - timedelta(hours=1), "editor@example.com", 0)
    assert [z.zone for z in zones[1]] == ["Pacific/Auckland", "Australia/Perth"]  # earliest moment first
    perth = zones[1][1]
    assert (perth.readers, perth.submitted, perth.failed, perth.scheduled, perth.delivered) == (3, 2, 1, 1, 2)
    assert perth.out_at == NOW + timedelta(hours=3) and perth.delivered_at == NOW - timedelta(minutes=11)
    auckland = zones[1][0]
    assert (auckland.queued, auckland.unknown, auckland.scheduled) == (2, 1, 1)  # one queued zone not yet due
    assert person.subscriber.email == "Ana@example.com" and person.subscriber.name == "Ana"
    assert person.subscriber.attributes == {"company": "Tidewell", "city": "Perth"}
    assert person.subscriber.categories == ["ports", "rail"]
    assert [(m.slug, m.status) for m in person.memberships] == [("weekly", "pending")]
    assert person.history and person.history[0].source == "test form" and person.history[0].ip == "192.0.2.7"
    assert person.subscriber.created_at.tzinfo is UTC
    assert [(f.name, f.issues) for f in features[0]] == [("Harbour Co", (2,)), ("Tidewell", (1,))]
    assert (features[1], last[1]) == ([1, 2], [2])


def test_show_finds_a_person_by_lifecycles_key(settings) -> None:  # type: ignore[no-untyped-def]
    from digest.errors import NotFound

    _seed(settings.database_url)
    with dbapi.connect(settings.database_url) as db:
        for typed in ("ana@example.com", "  ANA@EXAMPLE.COM", "Ana@example.com"):
            assert profile(db, typed).subscriber.email == "Ana@example.com"
        with pytest.raises(NotFound, match="no subscriber 'nobody@example.com'"):
            profile(db, " nobody@example.com ")
        with pytest.raises(NotFound, match="no subscriber 'not an address'"):
            profile(db, "not an address")
    with session_factory(settings.database_url)() as s:
        found = lifecycle.find(s, "  ANA@EXAMPLE.COM")
        assert found is not None and found.email == "Ana@example.com"


def test_the_runner_binds_as_sqlalchemy_does(settings) -> None:  # type: ignore[no-untyped-def]
    _seed(settings.database_url)
    with dbapi.connect(settings.database_url) as db:
        # a datetime compares with the stored ones in time order (SQLite: as text in SQLAlchemy's format)
        sql = "SELECT count(*) FROM deliveries WHERE send_at > :now"
        assert db.rows(sql, now=NOW)[0][0] == 2
        assert db.rows(sql, now=NOW - timedelta(hours=1))[0][0] == 3
        with pytest.raises(ValueError, match="naive"):
            db.rows(sql, now=NOW.replace(tzinfo=None))
        # lists expand; an empty one matches nothing (no `IN ()`, which PostgreSQL refuses)
        assert db.rows("SELECT count(*) FROM issues WHERE number IN (:n)", n=[1, 2, 3])[0][0] == 2
        assert db.rows("SELECT count(*) FROM issues WHERE number IN (:n)", n=[])[0][0] == 0
        # a literal % and `12:30` are not parameters
        assert db.rows("SELECT count(*) FROM issues WHERE subject LIKE '%rail%' AND '12:30' = '12:30'")[0][0] == 1
        if db.dialect == "postgresql":
            assert db.rows("SELECT :n::text", n=5)[0][0] == "5"  # a cast stays a cast
        with pytest.raises(KeyError, match=":missing"):
            db.rows("SELECT :missing")
        with pytest.raises(Exception, match="(?i)read.only|readonly"):  # noqa: PT011 (sqlite3 or psycopg error)
            db.rows("DELETE FROM issues")


def test_config_file_finds_the_database_load_settings_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from digest.demo import init

    init(tmp_path)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)  # a relative SQLite path is the config file's folder's, not the working folder's
    monkeypatch.setenv("DIGEST_SECRET_KEY", "x" * 32)
    cfg = tmp_path / "digest.toml"
    cases = ['url = "sqlite:///digest.db"', 'url = "sqlite:///data/d.db"', 'url = ""',
             'url = "sqlite:////var/lib/digest/x.db"', 'url = "postgresql+psycopg://u@h/db"']
    current = 'url = "sqlite:///digest.db"'
    for line in cases:
        edit_config(tmp_path, current, line)
        current = line
        assert basics(cfg).database_url == load_settings(cfg).database_url, line
        assert basics(cfg).timezone == load_settings(cfg).publication.timezone
    assert basics(cfg).database_url == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv(ENV_DATABASE_URL, "sqlite:///from-env.db")
    assert basics(cfg).database_url == load_settings(cfg).database_url == f"sqlite:///{tmp_path / 'from-env.db'}"


@pytest.mark.parametrize(("old", "new"), [
    ('timezone = "', 'timezone = "Mars/Olympus"  # '),
    ('timezone = "', 'timezone = 7  # "'),
    ('url = "sqlite:///digest.db"', 'url = "digest.db"'),
    ('url = "sqlite:///digest.db"', 'url = 5'),
    ('[database]', 'database = 3'),
])
def test_config_file_errors_are_load_settings_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str,
                                                     new: str) -> None:
    from digest.demo import init

    init(tmp_path)
    monkeypatch.setenv("DIGEST_SECRET_KEY", "x" * 32)
    text = (tmp_path / "digest.toml").read_text()
    assert old in text
    # `database = 3`: a key of the top level, written before the first table (its own table renamed)
    text = new + "\n" + text.replace(old, "[renamed]", 1) if old == "[database]" else text.replace(old, new, 1)
    (tmp_path / "digest.toml").write_text(text)
    with pytest.raises(ConfigError) as light:
        basics(tmp_path / "digest.toml")
    with pytest.raises(ConfigError) as full:
        load_settings(tmp_path / "digest.toml")
    assert str(light.value) in str(full.value).splitlines(), (str(light.value), str(full.value))
    assert str(light.value).startswith(f"{(tmp_path / 'digest.toml').resolve()}: ")


def test_env_database_url_errors_name_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digest.demo import init

    init(tmp_path)
    monkeypatch.setenv(ENV_DATABASE_URL, "nonsense")
    with pytest.raises(ConfigError) as light:
        basics(tmp_path / "digest.toml")
    monkeypatch.setenv("DIGEST_SECRET_KEY", "x" * 32)
    with pytest.raises(ConfigError) as full:
        load_settings(tmp_path / "digest.toml")
    assert str(light.value) == str(full.value)
    assert f"database.url (from {ENV_DATABASE_URL}) 'nonsense' is not a database URL" in str(light.value)


@pytest.mark.slow
@pytest.mark.nodb
@pytest.mark.parametrize("args", [("status",), ("subscribers", "show", "a@example.com")])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    from digest.demo import init

    init(tmp_path)
    cfg = tmp_path / "digest.toml"
    cfg.write_text(cfg.read_text().replace('timezone = "', 'timezone = "Nowhere/Atall"  # "', 1))
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"error: {cfg}: publication.timezone 'Nowhere/Atall' is not a known time zone"
    cfg.write_text("[publication\n")
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("error: digest.toml: not valid TOML")
    assert not (tmp_path / "digest.db").exists()  # nothing created on the way to the error


@pytest.mark.slow
def test_status_and_show_print_the_same_on_both_paths(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The light path (own connection) and the fallback (a SQLAlchemy session, as for a database to migrate)
    print the same text."""
    _seed(settings.database_url)
    folder = settings.path.parent
    env = {"COLUMNS": "200"}
    light = [run_cli(*a, cwd=folder, env=env) for a in (("status",), ("subscribers", "show", "ana@example.com"))]
    assert all(r.returncode == 0 for r in light), [r.stderr for r in light]
    assert "Ports and rail" in light[0].stdout and "Australia/Perth" in light[0].stdout
    assert "Ana@example.com (Ana)" in light[1].stdout and "source: test form" in light[1].stdout
    # force the fallback: the database's recorded revision is not the newest, so status migrates it first
    # (the real upgrade path: a database left by an older digest); a URL option keeps it on SQLAlchemy too
    if settings.database_url.startswith("sqlite"):
        env[ENV_DATABASE_URL] = settings.database_url + "?timeout=30"
        assert not dbapi.readable(env[ENV_DATABASE_URL])
        heavy = [run_cli(*a, cwd=folder, env=env) for a in (("status",), ("subscribers", "show", "ana@example.com"))]
        assert [r.stdout for r in heavy] == [r.stdout for r in light]
    assert os.environ.get(ENV_DATABASE_URL) is None


@pytest.mark.nodb
def test_the_runner_opens_plain_sqlite_files_and_psycopg_urls_only() -> None:
    """Anything else (options in the URL, another driver, an in-memory database) is read through SQLAlchemy."""
    assert dbapi.readable("sqlite:////var/lib/digest/digest.db")
    assert dbapi.readable("postgresql+psycopg://digest:pw@localhost/digest")
    for url in ("sqlite:///digest.db?timeout=5", "sqlite:///:memory:", "postgresql://u@h/db",
                "postgresql+psycopg://u@h/db?sslmode=require", "mysql+pymysql://u@h/db"):
        assert not dbapi.readable(url), url
        with pytest.raises(ValueError, match="not a database URL digest.dbapi reads"), dbapi.connect(url):
            pass
