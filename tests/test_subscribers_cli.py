"""`digest subscribers ...` as an admin runs it: the real command in a subprocess, a real SQLite file."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _ok(*args: str, cwd: Path) -> str:
    result = run_cli("subscribers", *args, cwd=cwd)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_an_admins_day_with_the_subscribers_commands(workdir: Path) -> None:
    out = _ok("add", "ann@example.com", "--name", "Ann", cwd=workdir)
    assert "confirmation email sent" in out
    assert len(list((workdir / "outbox").glob("*.eml"))) == 1
    out = _ok("add", "bob@example.com", "--confirmed", "--source", "signed paper form, Expo 2025", cwd=workdir)
    assert "active" in out and "consent recorded" in out
    assert "list 'offers'" in _ok("lists", "create", "offers", "--name", "Special offers", cwd=workdir)

    (workdir / "in.csv").write_text("email;name;lists;region\r\ncarl@example.com;Carl;weekly;NSW\r\n"
                                    "dee@example.com;Dee;weekly|offers;VIC\r\nbroken;X;weekly;\r\n", encoding="utf-8")
    out = _ok("import", "in.csv", "--preconfirmed", "--source", "old CRM export 2025-01", cwd=workdir)
    assert "3 rows: 2 added, 0 updated, 0 unchanged, 1 rejected, 0 suppressed" in out
    assert "in.rejects.csv" in out
    assert "broken" in (workdir / "in.rejects.csv").read_text()
    again = _ok("import", "in.csv", "--preconfirmed", "--source", "old CRM export 2025-01", cwd=workdir)
    assert "0 added, 0 updated, 2 unchanged, 1 rejected" in again

    out = _ok("lists", cwd=workdir)
    weekly = next(line for line in out.splitlines() if "weekly" in line)
    assert [c for c in weekly.replace("│", " ").split() if c.isdigit()] == ["1", "3", "0", "0", "0", "4"]

    out = _ok("list", "--status", "active", "--list", "weekly", cwd=workdir)
    assert "bob@example.com" in out and "carl@example.com" in out and "ann@example.com" not in out
    out = _ok("show", "dee@example.com", cwd=workdir)
    assert "offers" in out and "imported" in out and "old CRM export" in out and "region: VIC" in out

    _ok("remove", "carl@example.com", "--list", "weekly", cwd=workdir)
    out = _ok("show", "carl@example.com", cwd=workdir)
    assert "unsubscribed" in out and "admin (cli)" in out

    out = _ok("confirm-pending", "--dry-run", cwd=workdir)
    assert "would send 0" in out  # ann, the one pending reader, was sent hers by `add`
    out = _ok("export", cwd=workdir)
    rows = {r["email"]: r for r in csv.DictReader(io.StringIO(out))}
    assert rows["carl@example.com"]["lists"] == "weekly:unsubscribed"
    assert rows["dee@example.com"]["lists"] == "offers:active;weekly:active"
    assert rows["dee@example.com"]["region"] == "VIC"
    out = _ok("export", "--status", "active", "-o", "active.csv", cwd=workdir)
    assert "2 subscribers written" in out  # bob and dee (carl left weekly, ann is pending)
    assert (workdir / "active.csv").read_text().count("@") == 2

    out = _ok("remove", "dee@example.com", "--erase", cwd=workdir)
    assert "erased" in out and "suppressed" in out
    gone = run_cli("subscribers", "show", "dee@example.com", cwd=workdir)
    assert gone.returncode == 2 and "no subscriber" in gone.stderr
    back = run_cli("subscribers", "add", "dee@example.com", "--confirmed", "--source", "x", cwd=workdir)
    assert back.returncode == 2 and "erased" in back.stderr
    out = _ok("import", "in.csv", "--preconfirmed", "--source", "old CRM export 2025-01", cwd=workdir)
    assert "1 suppressed" in out


def test_confirm_pending_sends_to_imported_readers_once(workdir: Path) -> None:
    (workdir / "new.csv").write_text("email\n" + "".join(f"r{i}@example.com\n" for i in range(7)))
    out = _ok("import", "new.csv", cwd=workdir)
    assert "7 added" in out and "confirm-pending" in out
    assert "would send 7" in _ok("confirm-pending", "--dry-run", cwd=workdir)
    assert "7 confirmation emails sent, 0 failed" in _ok("confirm-pending", cwd=workdir)
    assert len(list((workdir / "outbox").glob("*.eml"))) == 7
    assert "0 confirmation emails sent" in _ok("confirm-pending", cwd=workdir)


@pytest.mark.parametrize(("args", "message"), [
    (("add", "not-an-address"), "not a valid email address"),
    (("add", "x@example.com", "--confirmed"), "--confirmed needs --source"),
    (("import", "missing.csv"), "cannot open"),
    (("import", "in.csv", "--preconfirmed"), "--preconfirmed needs --source"),
    (("import", "in.csv", "--list", "nope"), "no list named 'nope'"),
    (("list", "--status", "gone"), "unknown status 'gone'"),
    (("lists", "create", "Bad Slug"), "not a list name"),
    (("remove", "nobody@example.com"), "no subscriber"),
])
def test_mistakes_print_one_line_and_exit_2(workdir: Path, args: tuple[str, ...], message: str) -> None:
    (workdir / "in.csv").write_text("email\na@example.com\n")
    result = run_cli("subscribers", *args, cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
