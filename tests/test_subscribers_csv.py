"""CSV import and export: ugly files, rejects with row numbers, idempotence, consent rules, round trip."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, literal, select, union_all
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.errors import DigestError, NotFound
from digest.sources.categories import known_categories
from digest.store import migrate, session_factory
from subscribers import csv_import, lifecycle
from subscribers.csv_export import export_csv
from subscribers.csv_import import import_csv
from subscribers.csv_read import CSVError
from subscribers.import_report import ImportReport
from subscribers.models import Event, MailingList, Membership, MembershipStatus, Subscriber


def _write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _rejects(report: ImportReport) -> list[dict[str, str]]:
    assert report.rejects_path is not None
    # the report keeps a row's bytes as they were, even when they are not UTF-8
    with open(report.rejects_path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return list(csv.DictReader(f))


def _statuses(session: Session) -> dict[tuple[str, str], str]:
    return {(email, slug): status for email, slug, status in session.execute(
        select(Subscriber.email, MailingList.slug, Membership.status)
        .join(Membership, Membership.subscriber_id == Subscriber.id)
        .join(MailingList, MailingList.id == Membership.list_id))}


UGLY = (
    "\ufeffEmail;Name;Region;categories\r\n"
    "ann@example.com;Ann Smith;NSW;Aquatics / fitness\r\n"
    '"bob@example.com";"Bob; ""the builder""\r\nsecond line";VIC;\r\n'
    "not-an-email;X;QLD;\r\n"
    "ANN@EXAMPLE.COM;Ann again;NSW;\r\n"
    "\r\n"
    "carla@bücher.example;Carla;WA;Underwater Basket Weaving\r\n"
    "dmitri@example.com;Dmitri;SA\r\n"
    "eve@example.com;Eve;TAS;;extra\r\n"
    "zoë@example.org;Zoë;NT;Fitness\r\n"
)


def test_an_ugly_file_imports_what_is_good_and_reports_every_bad_row(settings: Settings, session: Session,
                                                                     tmp_path: Path) -> None:
    """BOM, semicolons, CRLF, quoted delimiters, quotes and newlines in fields, blank lines, bad rows."""
    path = _write(tmp_path / "ugly.csv", UGLY)
    report = import_csv(session, path, categories=known_categories(settings))
    assert (report.rows, report.added, report.rejected, report.blank) == (8, 3, 5, 1)
    assert (report.updated, report.unchanged, report.suppressed) == (0, 0, 0)

    bob = lifecycle.find(session, "bob@example.com")
    # the multi-line cell is read whole; its line break becomes a space (subscribers.names, issue 13)
    assert bob.name == 'Bob; "the builder" second line' and bob.attributes == {"Region": "VIC"}
    ann = lifecycle.find(session, "ann@example.com")
    assert ann.name == "Ann Smith" and ann.categories == ["Aquatics", "Fitness"]
    assert lifecycle.find(session, "zoë@example.org").email == "zoë@example.org"
    assert set(_statuses(session).values()) == {MembershipStatus.PENDING}  # no consent evidence: pending

    rejects = _rejects(report)
    # _row counts records as a spreadsheet does (header = 1); _line is where the record starts in the file
    assert [(r["_row"], r["_line"]) for r in rejects] == [("4", "5"), ("5", "6"), ("6", "8"), ("7", "9"),
                                                          ("8", "10")]
    reasons = [r["_reason"] for r in rejects]
    assert "not a valid email address" in reasons[0]
    assert reasons[1].startswith("duplicate of row 2")
    assert "unknown category 'Underwater Basket Weaving'" in reasons[2]
    assert "3 fields but the header has 4" in reasons[3]
    assert "5 fields but the header has 4" in reasons[4]
    assert rejects[0]["Email"] == "not-an-email" and rejects[0]["Region"] == "QLD"  # the row as it was


def test_non_utf8_rows_are_rejected_not_garbled(session: Session, tmp_path: Path) -> None:
    data = b"email,name\nok@example.com,Ok\n" + "bad@example.com,Jos\xe9\n".encode("latin-1") + \
        b"ok2@example.com,Fine\n"
    report = import_csv(session, _write(tmp_path / "latin1.csv", data))
    assert (report.added, report.rejected) == (2, 1)
    [reject] = _rejects(report)
    assert reject["_row"] == "3" and "UTF-8" in reject["_reason"]
    assert lifecycle.find(session, "bad@example.com") is None


def test_commas_and_multiline_quoted_fields_with_windows_line_endings(session: Session, tmp_path: Path) -> None:
    data = ('email,name,lists\r\n"a@example.com","Smith, Ann","weekly"\r\n'
            '"b@example.com","Line one\r\nLine two, with comma",weekly\r\n')
    report = import_csv(session, _write(tmp_path / "c.csv", data))
    assert (report.added, report.rejected) == (2, 0) and report.rejects_path is None
    assert lifecycle.find(session, "a@example.com").name == "Smith, Ann"
    # read whole, then made one line: a name goes into a To: header (subscribers.names, issue 13)
    assert lifecycle.find(session, "b@example.com").name == "Line one Line two, with comma"


def test_the_file_must_have_an_email_column_and_no_repeated_columns(session: Session, tmp_path: Path) -> None:
    with pytest.raises(CSVError, match="no `email` column"):
        import_csv(session, _write(tmp_path / "a.csv", "name,region\nAnn,NSW\n"))
    with pytest.raises(CSVError, match="appears twice"):
        import_csv(session, _write(tmp_path / "b.csv", "email,Email\na@example.com,b@example.com\n"))
    with pytest.raises(CSVError, match="empty"):
        import_csv(session, _write(tmp_path / "c.csv", ""))
    with pytest.raises(CSVError, match="cannot open"):
        import_csv(session, tmp_path / "missing.csv")


def test_reimporting_is_idempotent_and_updates_are_counted(session: Session, tmp_path: Path) -> None:
    path = _write(tmp_path / "r.csv", "email,name,region\na@example.com,Ann,NSW\nb@example.com,Bob,VIC\n")
    first = import_csv(session, path)
    assert (first.added, first.updated, first.unchanged) == (2, 0, 0)
    events = session.scalar(select(func.count()).select_from(Event))
    again = import_csv(session, path)
    assert (again.added, again.updated, again.unchanged, again.rejected) == (0, 0, 2, 0)
    assert session.scalar(select(func.count()).select_from(Event)) == events  # nothing recorded twice
    changed = import_csv(session, _write(tmp_path / "r2.csv", "email,name,region\na@example.com,Ann B,NSW\n"
                                                               "b@example.com,,\n"))
    assert (changed.added, changed.updated, changed.unchanged) == (0, 1, 1)
    assert lifecycle.find(session, "a@example.com").name == "Ann B"
    assert lifecycle.find(session, "b@example.com").name == "Bob"  # an empty cell changes nothing


def test_an_import_never_reactivates_a_withdrawn_membership_and_says_so(session: Session, tmp_path: Path) -> None:
    for email in ("gone@example.com", "bounced@example.com"):
        lifecycle.subscribe(session, email, source="test", confirmed=True)
    lifecycle.unsubscribe(session, lifecycle.find(session, "gone@example.com"), source="reader")
    lifecycle.apply_event(session, lifecycle.find(session, "bounced@example.com").id, "bounce", source="webhook")
    session.commit()
    path = _write(tmp_path / "back.csv", "email,lists\ngone@example.com,weekly:active\nbounced@example.com,weekly\n")
    report = import_csv(session, path, preconfirmed=True, source="old CRM export")
    assert report.kept_withdrawn == 2 and report.unchanged == 2 and report.added == 0
    assert _statuses(session) == {("gone@example.com", "weekly"): MembershipStatus.UNSUBSCRIBED,
                                  ("bounced@example.com", "weekly"): "bounced"}
    reasons = [r["_reason"] for r in _rejects(report)]
    assert reasons == ["weekly: kept unsubscribed: an import never changes a withdrawn membership (only the reader "
                       "can)", "weekly: kept bounced: an import never changes a withdrawn membership (only the "
                       "reader can)"]


def test_withdrawals_in_a_file_are_honoured_at_once(session: Session, tmp_path: Path) -> None:
    lifecycle.subscribe(session, "leaving@example.com", source="test", confirmed=True)
    session.commit()
    report = import_csv(session, _write(tmp_path / "u.csv", "email,lists\nleaving@example.com,weekly:unsubscribed\n"))
    assert report.updated == 1
    assert _statuses(session) == {("leaving@example.com", "weekly"): MembershipStatus.UNSUBSCRIBED}


def test_preconfirmed_needs_a_source_and_records_it_as_consent_evidence(session: Session, tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "email\np@example.com\n")
    with pytest.raises(DigestError, match="--source"):
        import_csv(session, path, preconfirmed=True)
    report = import_csv(session, path, preconfirmed=True, source="paper sign-up sheets, Expo 2024")
    assert report.added == 1
    member = session.scalars(select(Membership)).one()
    assert member.status == MembershipStatus.ACTIVE and member.confirmed_at is not None
    event = session.scalars(select(Event)).one()
    assert (event.kind, event.new_status, event.source) == ("imported", MembershipStatus.ACTIVE,
                                                            "paper sign-up sheets, Expo 2024")
    assert event.detail == "p.csv row 2"


def test_active_in_the_file_without_consent_evidence_is_pending(session: Session, tmp_path: Path) -> None:
    report = import_csv(session, _write(tmp_path / "a.csv", "email,lists\na@example.com,weekly:active\n"))
    assert report.pending_only == 1
    assert _statuses(session) == {("a@example.com", "weekly"): MembershipStatus.PENDING}


def test_erased_addresses_are_suppressed_and_never_come_back(session: Session, tmp_path: Path) -> None:
    lifecycle.subscribe(session, "forget.me@example.com", source="test", confirmed=True)
    session.commit()
    lifecycle.erase(session, "forget.me@example.com")
    session.commit()
    path = _write(tmp_path / "s.csv", "email,name\nFORGET.ME@example.com,Again\nkeep@example.com,Keep\n")
    report = import_csv(session, path, preconfirmed=True, source="old list")
    assert (report.added, report.suppressed) == (1, 1)
    assert lifecycle.find(session, "forget.me@example.com") is None
    [reject] = _rejects(report)
    assert reject["_row"] == "2" and "erased on request" in reject["_reason"]
    assert "forget" not in (tmp_path / "s.rejects.csv").read_text().lower()  # the report keeps no trace of them


def test_lists_column_unknown_lists_and_statuses_are_rejected(session: Session, tmp_path: Path) -> None:
    lifecycle.create_list(session, "offers", "Offers")
    session.commit()
    data = ("email,lists\na@example.com,weekly;offers:unsubscribed\nb@example.com,events\n"
            "c@example.com,weekly:maybe\nd@example.com,weekly|weekly\ne@example.com,\n")
    report = import_csv(session, _write(tmp_path / "l.csv", data))
    assert (report.added, report.rejected) == (2, 3)
    assert _statuses(session) == {("a@example.com", "weekly"): MembershipStatus.PENDING,
                                  ("a@example.com", "offers"): MembershipStatus.UNSUBSCRIBED}
    assert lifecycle.find(session, "e@example.com").memberships == []  # an empty `lists` cell: no list
    reasons = [r["_reason"] for r in _rejects(report)]
    assert "unknown list 'events'" in reasons[0] and "unknown status 'maybe'" in reasons[1]
    assert "named twice" in reasons[2]
    created = import_csv(session, _write(tmp_path / "l2.csv", "email,lists\nb@example.com,events\n"),
                         create_lists=True)
    assert created.added == 1 and _statuses(session)[("b@example.com", "events")] == MembershipStatus.PENDING


def test_an_unknown_target_list_is_an_error_unless_created(session: Session, tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "email\nt@example.com\n")
    with pytest.raises(NotFound, match="lists create vip"):
        import_csv(session, path, list_slug="vip")
    assert import_csv(session, path, list_slug="vip", create_lists=True).added == 1
    assert _statuses(session) == {("t@example.com", "vip"): MembershipStatus.PENDING}


def test_a_dry_run_writes_nothing_but_counts_and_reports_everything(session: Session, tmp_path: Path) -> None:
    lifecycle.subscribe(session, "old@example.com", source="test", confirmed=True)
    session.commit()
    rows = "".join(f"r{i}@example.com\n" for i in range(30)) + "r3@example.com\nold@example.com\nbad\n"
    report = import_csv(session, _write(tmp_path / "d.csv", "email\n" + rows), dry_run=True, batch_size=7,
                        create_lists=True, list_slug="brand-new")
    assert (report.added, report.updated, report.rejected, report.dry_run) == (30, 1, 2, True)
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 1
    assert session.scalar(select(func.count()).select_from(MailingList).where(MailingList.slug == "brand-new")) == 0
    assert [r["_reason"][:18] for r in _rejects(report)] == ["duplicate of row 5", "'bad' is not a val"]


def test_duplicates_across_batches_are_found_with_the_first_row(session: Session, tmp_path: Path) -> None:
    rows = [f"user{i}@example.com" for i in range(40)]
    rows += ["USER3@example.com", "user39@EXAMPLE.com", "User3@example.com"]
    report = import_csv(session, _write(tmp_path / "d.csv", "email\n" + "\n".join(rows) + "\n"), batch_size=8)
    assert (report.added, report.rejected) == (40, 3)
    assert [r["_reason"].split(" (")[0] for r in _rejects(report)] == [
        "duplicate of row 5", "duplicate of row 41", "duplicate of row 5"]  # a third names the first too
    assert [r["email"] for r in _rejects(report)] == rows[40:]


def test_the_import_commits_the_callers_session_and_leaves_no_staging_tables(session: Session,
                                                                            tmp_path: Path) -> None:
    lifecycle.ensure_list(session, "pending-write")  # not committed: the import's own connection must not wait
    report = import_csv(session, _write(tmp_path / "s.csv", "email,lists\na@example.com,pending-write\n"))
    assert report.added == 1 and _statuses(session) == {("a@example.com", "pending-write"): MembershipStatus.PENDING}
    with session.get_bind().connect() as conn:  # the pool hands back the import's connection
        temp_tables = {"sqlite": "SELECT name FROM sqlite_temp_master",
                       "postgresql": "SELECT relname FROM pg_class WHERE relnamespace = pg_my_temp_schema()"}
        assert conn.exec_driver_sql(temp_tables[conn.dialect.name]).all() == []


@pytest.mark.parametrize("fields", [["a@example.com", "Ann"], ["", ""], ["x\x1fy", "z"], ["\x1eq", "\udce9"], ["solo"]])
def test_a_staged_record_comes_back_as_it_was_read(fields: list[str]) -> None:
    from subscribers.staging import pack, unpack

    packed = pack(fields)
    packed.encode("utf-8")  # storable as text, even a record that was not UTF-8
    assert unpack(packed) == fields


def test_each_batch_is_all_or_nothing_and_a_rerun_completes(session: Session, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "b.csv", "email\n" + "".join(f"b{i}@example.com\n" for i in range(25)))
    real = lifecycle.join_imported
    calls = {"n": 0}

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "join_imported", failing)
    # batches go in address order ("@" sorts after digits): b0, b10 ... b18 first, then b19, b1, b20 ... b4
    with pytest.raises(DigestError, match=r"10 rows of b.csv \(addresses b19@example.com to b4@example.com\) "
                                          r"could not be written .*disk full"):
        import_csv(session, path, batch_size=10)
    # the first batch is saved whole; of the failed batch not even the subscriber rows remain
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 10
    assert session.scalar(select(func.count()).select_from(Membership)) == 10
    monkeypatch.setattr(lifecycle, "join_imported", real)
    report = import_csv(session, path, batch_size=10)
    assert (report.added, report.unchanged) == (15, 10)
    assert session.scalar(select(func.count()).select_from(Membership)) == 25


def _fresh(url: str) -> Session:
    migrate(url)
    return session_factory(url)()


def test_export_then_import_into_a_fresh_database_round_trips(settings: Settings, session: Session, tmp_path: Path,
                                                              another_database: Callable[[str], str]) -> None:
    lifecycle.create_list(session, "offers", "Offers")
    lifecycle.subscribe(session, "a@example.com", name="Ann, the first", source="t", confirmed=True,
                        categories=["Aquatics", "Fitness"])
    lifecycle.subscribe(session, "a@example.com", source="t", list_slug="offers")
    lifecycle.subscribe(session, "Zoë@Bücher.example", name='Zoë "Z"\nQuinn', source="t", confirmed=True)
    lifecycle.subscribe(session, "gone@example.com", source="t", confirmed=True)
    lifecycle.unsubscribe(session, lifecycle.find(session, "gone@example.com"), source="reader")
    lifecycle.subscribe(session, "b@example.com", source="t", confirmed=True)
    lifecycle.apply_event(session, lifecycle.find(session, "b@example.com").id, "bounce", source="webhook")
    lifecycle.subscribe(session, "c@example.com", source="t", confirmed=True)
    lifecycle.apply_event(session, lifecycle.find(session, "c@example.com").id, "spamreport", source="webhook")
    sub = lifecycle.find(session, "a@example.com")
    sub.attributes = {"print_subscriber": "yes", "region": "NSW"}
    session.commit()

    out = io.StringIO()
    assert export_csv(session, out) == 5
    (tmp_path / "export.csv").write_text(out.getvalue(), encoding="utf-8")

    with _fresh(another_database("fresh")) as other:
        report = import_csv(other, tmp_path / "export.csv", preconfirmed=True, source="export of the old database",
                            create_lists=True)
        assert (report.added, report.rejected) == (5, 0)

        def people(s: Session) -> list[tuple]:
            return sorted((x.email, x.email_key, x.name, x.attributes, x.categories, x.created_at)
                          for x in s.scalars(select(Subscriber)))

        assert people(other) == people(session)
        assert _statuses(other) == _statuses(session)
        again = io.StringIO()
        export_csv(other, again)

        def rows(text: str) -> list[list[str]]:
            header, *body = csv.reader(io.StringIO(text))
            return [header, *sorted(body)]

        assert rows(again.getvalue()) == rows(out.getvalue())  # the same file, up to row order


def test_export_filters_by_list_and_status(session: Session) -> None:
    lifecycle.create_list(session, "offers", "Offers")
    lifecycle.subscribe(session, "a@example.com", source="t", confirmed=True)
    lifecycle.subscribe(session, "a@example.com", source="t", list_slug="offers")
    lifecycle.subscribe(session, "b@example.com", source="t")
    session.commit()
    out = io.StringIO()
    assert export_csv(session, out, list_slug="weekly", status=MembershipStatus.ACTIVE) == 1
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["email"], r["lists"]) for r in rows] == [("a@example.com", "weekly:active")]
    out = io.StringIO()
    assert export_csv(session, out, status=MembershipStatus.PENDING) == 2
    assert [r["lists"] for r in csv.DictReader(io.StringIO(out.getvalue()))] == ["offers:pending", "weekly:pending"]
    with pytest.raises(NotFound):
        export_csv(session, io.StringIO(), list_slug="nope")
    with pytest.raises(DigestError):
        export_csv(session, io.StringIO(), status="gone")


def test_a_large_file_imports_in_batches_with_progress(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name", "region"])
        for i in range(12_000):
            w.writerow([f"person{i}@domain{i % 97}.example.com", f"Person {i}", ("NSW", "VIC")[i % 2]])
    seen: list[tuple[int, int]] = []
    report = import_csv(session, path, batch_size=2500, progress=lambda done, total: seen.append((done, total)))
    assert report.added == 12_000 and report.rejected == 0
    assert session.scalar(select(func.count()).select_from(Membership)) == 12_000
    assert session.scalar(select(func.count()).select_from(Event)) == 12_000
    # reading the file is the first half of the bar, writing the batches the second
    assert len(seen) >= 5 and seen[-1][0] == seen[-1][1] == 2 * path.stat().st_size
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_new_and_known_people_mixed_after_a_gap_in_the_ids(session: Session, tmp_path: Path) -> None:
    """Inserting first and looking up after (and the fallback when the newest person was erased)."""
    for i in range(5):
        lifecycle.subscribe(session, f"old{i}@example.com", name=f"Old {i}", source="t", confirmed=True)
    session.commit()
    lifecycle.erase(session, "old4@example.com")  # the newest id is now a gap that is never reused
    session.commit()
    lines = ["email,name,lists"]
    for i in range(12):
        lines.append(f"new{i}@example.com,New {i},weekly")
        if i < 4:
            lines.append(f"old{i}@example.com,Old {i} renamed,weekly")
    report = import_csv(session, _write(tmp_path / "mix.csv", "\n".join(lines) + "\n"), batch_size=6)
    assert (report.added, report.updated, report.rejected) == (12, 4, 0)
    statuses = _statuses(session)
    assert all(statuses[(f"new{i}@example.com", "weekly")] == MembershipStatus.PENDING for i in range(12))
    assert all(statuses[(f"old{i}@example.com", "weekly")] == MembershipStatus.ACTIVE for i in range(4))
    for i in range(12):  # each new membership and event belongs to its own person
        sub = lifecycle.find(session, f"new{i}@example.com")
        assert sub.name == f"New {i}"
        detail = session.scalar(select(Event.detail).where(Event.subscriber_id == sub.id))
        assert detail == f"mix.csv row {lines.index(f'new{i}@example.com,New {i},weekly') + 1}"
    assert lifecycle.find(session, "old2@example.com").name == "Old 2 renamed"


def _rows(session: Session, table: type, skip: tuple[str, ...] = ("id",)) -> list[tuple]:
    cols = [c for c in table.__table__.c if c.name not in skip]
    return sorted(tuple(r) for r in session.execute(select(*cols)))


def test_join_imported_writes_exactly_what_apply_imported_writes(session: Session) -> None:
    """New people's memberships straight from a query give the same rows and events as one by one."""
    weekly = lifecycle.ensure_list(session, "weekly")
    offers = lifecycle.ensure_list(session, "offers")
    people = [lifecycle.upsert_subscriber(session, lifecycle.normalize(f"p{i}@example.com"))[0] for i in range(6)]
    session.commit()
    now = lifecycle.utcnow()
    plan = [(people[0].id, weekly.id, MembershipStatus.PENDING, 2),
            (people[1].id, weekly.id, MembershipStatus.ACTIVE, 3),
            (people[2].id, offers.id, MembershipStatus.UNSUBSCRIBED, 4),
            (people[3].id, weekly.id, MembershipStatus.PENDING, 7),
            (people[3].id, offers.id, MembershipStatus.ACTIVE, 7), (people[4].id, offers.id, "bounced", 11)]
    lifecycle.apply_imported(session, [lifecycle.ImportedStatus(sid, lid, None, None, new, f"f.csv row {row}")
                                       for sid, lid, new, row in plan], source="src", now=now)
    session.commit()
    expected = (_rows(session, Membership), _rows(session, Event))
    assert len(expected[0]) == len(expected[1]) == 6
    session.execute(Event.__table__.delete())
    session.execute(Membership.__table__.delete())
    session.commit()
    query = union_all(*(select(literal(sid), literal(lid), literal(new), literal(row)) for sid, lid, new, row in plan))
    lifecycle.join_imported(session, select(query.subquery()), source="src", detail_prefix="f.csv row ", now=now)
    session.commit()
    assert (_rows(session, Membership), _rows(session, Event)) == expected
    assert session.scalar(select(Membership.confirmed_at).where(Membership.subscriber_id == people[1].id)) == now
    assert session.scalar(select(Event.detail).where(Event.subscriber_id == people[4].id)) == "f.csv row 11"


def test_the_parsing_thread_holds_one_batch_ahead_not_two() -> None:
    """Memory: while a batch is written, only the next one is parsed (two batches in memory, not three)."""
    import time

    produced: list[int] = []

    def items():
        for i in range(5):
            produced.append(i)
            yield i

    chunks = csv_import._ahead(items())
    assert next(chunks) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time enough for the thread to run ahead, if it would
    assert produced == [0, 1]
    assert list(chunks) == [1, 2, 3, 4]


def test_reimport_merges_changed_attributes_into_stored_ones(session: Session, tmp_path: Path) -> None:
    import_csv(session, _write(tmp_path / "a.csv", "email,region,plan\na@example.com,NSW,gold\n"))
    report = import_csv(session, _write(tmp_path / "b.csv", "email,region,plan\na@example.com,VIC,\n"))
    assert (report.updated, report.unchanged) == (1, 0)
    session.expire_all()
    assert lifecycle.find(session, "a@example.com").attributes == {"region": "VIC", "plan": "gold"}
