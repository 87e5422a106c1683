"""CSV bad input: cells a spreadsheet would run are neutralised in every CSV written (OWASP CSV injection)
and restored on import; any file, however built, imports in bounded memory or is a one-line error."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from digest.cli.main import app
from digest.config import Settings
from subscribers import lifecycle
from subscribers.csv_export import export_csv
from subscribers.csv_import import import_csv
from subscribers.csv_read import MAX_FIELDS, MAX_RECORD, CSVError
from subscribers.csv_safe import restore, safe
from subscribers.models import Subscriber
from tests.conftest import SECRET, run_cli

NASTY = ["=HYPERLINK(\"http://evil.example\",\"click\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
         "\tTAB", "\rCR", "'=quoted already", "''+twice", "'plain", "plain", "", "a=b", "-"]


@pytest.mark.parametrize("value", NASTY)
def test_a_neutralised_cell_never_starts_a_formula_and_restores_exactly(value: str) -> None:
    out = safe(value)
    assert not out.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert restore(out) == value


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_export_neutralises_formulas_and_import_round_trips(settings: Settings, session: Session,
                                                            tmp_path: Path) -> None:
    lifecycle.subscribe(session, "a@example.com", name=NASTY[0], source="t", confirmed=True)
    lifecycle.subscribe(session, "-b@example.com", name="@SUM(A1)", source="t", confirmed=True)
    sub = lifecycle.find(session, "a@example.com")
    sub.attributes = {"=region": "+NSW", "note": "-x", "plain": "'quoted"}
    session.commit()
    out = io.StringIO()
    export_csv(session, out)
    rows = _cells(out.getvalue())
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (cell, row)
    assert "'=HYPERLINK" in out.getvalue() and "'-b@example.com" in out.getvalue() and "'=region" in rows[0]

    before = sorted((x.email, x.name, x.attributes) for x in session.scalars(select(Subscriber)))
    path = tmp_path / "export.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    for x in list(session.scalars(select(Subscriber))):
        x.name, x.attributes = "", {}
    session.commit()
    report = import_csv(session, path, preconfirmed=True, source="round trip")
    assert report.rejected == 0
    session.expire_all()
    after = sorted((x.email, x.name, x.attributes) for x in session.scalars(select(Subscriber)))
    assert after == before


def test_the_rejects_file_neutralises_what_it_copies(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('email,name\n"=HYPERLINK(""http://x"")",@SUM(1)\nok@example.com,+ok\n', encoding="utf-8")
    report = import_csv(session, path)
    assert report.rejected == 1 and report.added == 1
    assert report.rejects_path is not None
    header, row = _cells(report.rejects_path.read_text(encoding="utf-8"))
    assert row[3:] == ["'=HYPERLINK(\"http://x\")", "'@SUM(1)"]
    assert lifecycle.find(session, "ok@example.com").name == "+ok"  # a plain + in a file as typed is kept


def test_the_listings_report_neutralises_supplier_names(workdir: Path) -> None:
    directory = workdir / "sample" / "directory.csv"
    directory.write_text(directory.read_text(encoding="utf-8") +
                         '"=HYPERLINK(""http://evil.example"")",https://x.example,Evil,Fitness,,\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["listings", "report", "-c", str(workdir / "digest.toml"),
                                      "--csv", str(workdir / "report.csv")], env={"DIGEST_SECRET_KEY": SECRET})
    assert result.exit_code == 0, result.output
    cells = [c for row in _cells((workdir / "report.csv").read_text(encoding="utf-8")) for c in row]
    assert "'=HYPERLINK(\"http://evil.example\")" in cells
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)


def test_too_many_fields_and_too_long_records_are_one_reject_each(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    wide = ",".join(["ab"] * (MAX_FIELDS + 1))
    long = "x@example.com," + "y" * (MAX_RECORD + 10)
    chained = '"a\n",' * (MAX_RECORD // 4)  # a record spanning many lines inside quotes
    path.write_text(f"email,name\na@example.com,A\n{wide}\n{long}\nb@example.com,B\n{chained}\n",
                    encoding="utf-8")
    report = import_csv(session, path)
    assert report.added == 2
    reasons = [r["_reason"] for r in csv.DictReader(io.StringIO(report.rejects_path.read_text()))]  # type: ignore[union-attr]
    assert reasons[0] == f"has {MAX_FIELDS + 1:,} fields (at most {MAX_FIELDS:,} are read)"
    assert reasons[1].startswith(f"is over {MAX_RECORD:,} characters")
    assert any(r.startswith(f"is over {MAX_RECORD:,} characters") for r in reasons[2:])
    assert lifecycle.find(session, "b@example.com") is not None  # the rows after a bad one are read


def test_a_field_over_the_limit_is_a_reject(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(f"email,name,note\na@example.com,A,{'n' * 70_000}\nb@example.com,B,\n", encoding="utf-8")
    report = import_csv(session, path)
    assert (report.added, report.rejected) == (1, 1)


@pytest.mark.parametrize(("content", "message"), [
    ("email" + ",ab" * (MAX_RECORD // 3 + 1) + "\n", "the first line is over"),
    ('"' + "e" * 200_000 + '"\n', "the header cannot be read as CSV"),
    ("email" + ",c" * MAX_FIELDS + "\n", f"columns (at most {MAX_FIELDS:,})"),
])
def test_an_unreadable_header_is_a_one_line_error(session: Session, tmp_path: Path, content: str,
                                                  message: str) -> None:
    path = tmp_path / "in.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CSVError, match=re.escape(message)) as e:
        import_csv(session, path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_folder_is_not_a_file(session: Session, tmp_path: Path) -> None:
    with pytest.raises(CSVError, match="cannot open"):
        import_csv(session, tmp_path)


# The child's own peak: VmHWM of its address space. Not getrusage's ru_maxrss, which Linux carries over
# from the process before exec (exec_mmap keeps the old mm's high-water mark): subprocess starts the child
# with vfork or fork, so ru_maxrss would include the pytest worker's own size at that moment.
_PEAK = """
import sys
from pathlib import Path
from digest.cli.main import main
sys.argv = ["digest", *sys.argv[1:]]
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code
hwm = next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
print("PEAK", hwm, code, file=sys.stderr)
"""


def _peak_import(workdir: Path, path: Path) -> tuple[int, int, str]:
    """(peak RSS in MB, exit code, stderr) of `digest subscribers import PATH` in a process of its own."""
    env = {**os.environ, "DIGEST_SECRET_KEY": SECRET}
    done = subprocess.run([sys.executable, "-c", _PEAK, "subscribers", "import", str(path)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    last = done.stderr.strip().splitlines()[-1].split()
    assert last[0] == "PEAK", done.stderr
    return int(last[1]) // 1024, int(last[2]), done.stderr


def _write_big(path: Path, head: str, piece: str, size: int, tail: str = "\n") -> Path:
    with path.open("w", encoding="utf-8") as f:
        f.write(head)
        block = piece * (1_000_000 // len(piece))
        for _ in range(size // len(block)):
            f.write(block)
        f.write(tail)
    return path


@pytest.mark.slow
def test_pathological_files_import_in_bounded_memory(workdir: Path) -> None:
    """200 MB of `ab,` in one row, in many long rows, and as the header: under 200 MB peak, no traceback."""
    size = 200_000_000
    path = workdir / "bad.csv"
    _write_big(path, "email,name\na@example.com,A\n", "ab,", size)
    peak, code, errors = _peak_import(workdir, path)
    assert code == 0 and peak < 200, (peak, errors)

    _write_big(path, "email,name\n", ("ab," * 300_000) + "\n", size)  # 222 rows of 900 KB
    peak, code, errors = _peak_import(workdir, path)
    assert code == 0 and peak < 200, (peak, errors)

    _write_big(path, "email", ",ab", size)
    peak, code, errors = _peak_import(workdir, path)
    assert code == 2 and peak < 200, (peak, errors)
    lines = [line for line in errors.splitlines() if not line.startswith("PEAK")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "the first line is over" in lines[0]
    path.unlink()


@pytest.mark.slow
def test_an_unreadable_file_exits_2_with_one_line(workdir: Path) -> None:
    (workdir / "bin.csv").write_bytes(b"\x00\x01" * 10)
    done = run_cli("subscribers", "import", str(workdir), cwd=workdir)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot open" in done.stderr
