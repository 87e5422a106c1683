"""Admins' pages: subscribers (search, history, unsubscribe), CSV import and export, list counts and
per-issue delivery figures.

Statuses change only through subscribers.lifecycle; import and export are subscribers.csv_import's and
csv_export's; the figures are digest.reports'. These routes read forms, call those and show the result.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.deliver import zones as zone_recall
from digest.deliver.batches import canceller, recall, recall_preview
from digest.errors import DigestError, NotFound
from digest.issue_queries import deliveries_to
from digest.issue_status import IssueStatus, sources
from digest.issues import get_issue
from digest.reports import issue_figures, zone_progress
from digest.sources.categories import known_categories
from digest.store import User
from digest.web.auth import require_admin, require_user
from digest.web.csrf import check_csrf
from digest.web.deps import client_ip, get_db, get_settings
from digest.web.numbers import parse_id  # also registers the {name:id} path convertor used below
from digest.web.pages import flash, render
from subscribers import counts, csv_export, csv_import, lifecycle
from subscribers.models import MembershipStatus, Subscriber
from subscribers.profile import profile
from subscribers.queries import list_slugs, subscriber_by_id
from subscribers.search import Query, search

router = APIRouter(prefix="/admin",
                   dependencies=[Depends(require_user), Depends(require_admin), Depends(check_csrf)])


#: the issues a recall may apply to (the statuses the state machine moves to recalled from)
RECALLABLE = tuple(sources(IssueStatus.RECALLED))


@router.get("/subscribers")
def subscribers(request: Request, settings: Annotated[Settings, Depends(get_settings)],
                db: Annotated[Session, Depends(get_db)], q: str = "", status: str = "", list: str = "",  # noqa: A002
                before: str = "", after: str = "") -> Response:
    """Search and page through subscribers (digest.web.search: keyset pages, a capped count)."""
    query = Query(q=q.strip()[:320], status=status, list_slug=list, before=parse_id(before), after=parse_id(after),
                  size=settings.web.page_size)
    return render(request, "admin/subscribers.html", {"page": search(db, query), "query": query,
                                                      "statuses": tuple(MembershipStatus), "lists": list_slugs(db)})


def _subscriber(db: Session, subscriber_id: int) -> Subscriber:
    sub = subscriber_by_id(db, subscriber_id)
    if sub is None:
        raise NotFound(f"there is no subscriber {subscriber_id}")
    return sub


@router.get("/subscribers/{subscriber_id:id}")
def subscriber(request: Request, subscriber_id: int, db: Annotated[Session, Depends(get_db)]) -> Response:
    """One reader: memberships, the consent history (every event, newest first) and what was sent to them."""
    found = profile(db, _subscriber(db, subscriber_id).email)
    deliveries = deliveries_to(db, subscriber_id)
    return render(request, "admin/subscriber.html", {"sub": found.subscriber, "memberships": found.memberships,
                                                     "history": list(reversed(found.history)),
                                                     "deliveries": deliveries})


@router.post("/subscribers/{subscriber_id:id}/unsubscribe")
def unsubscribe(request: Request, subscriber_id: int, db: Annotated[Session, Depends(get_db)],
                user: Annotated[User, Depends(require_user)], list: Annotated[str, Form()] = "") -> Response:  # noqa: A002
    """Unsubscribe from one list, or from every list when none is named; recorded with the admin's name."""
    sub = _subscriber(db, subscriber_id)
    changed = lifecycle.unsubscribe(db, sub, list or None, source=f"admin {user.email} (web)", ip=client_ip(request))
    db.commit()
    where = f"list {list}" if list else "every list"
    flash(request, f"{sub.email} unsubscribed from {where}." if changed else
          f"{sub.email} was not subscribed to {where}: nothing changed.", "ok" if changed else "warn")
    return RedirectResponse(f"/admin/subscribers/{sub.id}", status_code=303)


def shown_counts(db: Session, settings: Settings) -> dict[str, object]:
    """The list counts a page shows (subscribers.counts: exact on a small database, else the stored ones)
    and, for stored ones, their age in words."""
    every = timedelta(minutes=settings.subscribers.counts_refresh_minutes)
    found = counts.current(db, every)
    return {"counts": found.lists, "counted_ago": counts.ago(found.age()) if found.stored else "",
            "counts_every": settings.subscribers.counts_refresh_minutes}


@router.get("/lists")
def lists(request: Request, settings: Annotated[Settings, Depends(get_settings)],
          db: Annotated[Session, Depends(get_db)]) -> Response:
    return render(request, "admin/lists.html", {**shown_counts(db, settings), "statuses": tuple(MembershipStatus)})


@router.post("/lists/count")
def count_now(request: Request, db: Annotated[Session, Depends(get_db)]) -> Response:
    """Recount now (the exact GROUP BY: a fraction of a second at a million members) and show the lists."""
    counts.refresh(db)
    flash(request, "Members counted.", "ok")
    return RedirectResponse("/admin/lists", status_code=303)


@router.get("/issues")
def figures(request: Request, db: Annotated[Session, Depends(get_db)]) -> Response:
    figures = issue_figures(db)
    zones = zone_progress(db, [f.issue for f in figures[:3]])  # local delivery: the newest issues by zone
    return render(request, "admin/issues.html", {"figures": figures, "recallable": RECALLABLE, "zones": zones})


# -- recall: cancel an issue's scheduled SendGrid batches (digest.deliver.batches) --------------------


@router.get("/issues/{number:id}/recall")
def recall_confirm(request: Request, number: int, settings: Annotated[Settings, Depends(get_settings)],
                   db: Annotated[Session, Depends(get_db)]) -> Response:
    """The confirmation step: what a recall would cancel now, and what it can no longer stop."""
    row = get_issue(db, number)
    if zone_recall.zone_by_zone(settings):  # local delivery, zone by zone: the zones not yet due
        waiting = zone_recall.recall_preview(db, row.id)
        return render(request, "admin/recall_zones.html", {"issue": row, "zones": waiting, "done": None,
                                                           "readers": sum(n for _, _, n in waiting)})
    able, late, at_once = recall_preview(db, row.id)
    return render(request, "admin/recall.html", {"issue": row, "able": able, "late": late, "at_once": at_once,
                                                 "readers": sum(b.readers for b in able), "done": None})


@router.post("/issues/{number:id}/recall")
def recall_issue(request: Request, number: int, settings: Annotated[Settings, Depends(get_settings)],
                 db: Annotated[Session, Depends(get_db)], user: Annotated[User, Depends(require_user)],
                 confirm: Annotated[str, Form()] = "") -> Response:
    """Recall, once the admin confirmed on the page above; the result lists what could not be recalled."""
    if confirm != "yes":
        return RedirectResponse(f"/admin/issues/{number}/recall", status_code=303)
    row = get_issue(db, number)
    if zone_recall.zone_by_zone(settings):
        zoned = zone_recall.recall_waiting(db, row, by=f"admin {user.email} (web)")
        return render(request, "admin/recall_zones.html", {"issue": row, "done": zoned})
    done = recall(db, row, canceller(settings), by=f"admin {user.email} (web)")
    return render(request, "admin/recall.html", {"issue": row, "done": done})


# -- CSV import and export (subscribers.csv_import, csv_export) -------------------------------------

IMPORTS_DIR = "imports"
#: uploaded files are deleted after the import; their rejects reports are kept this long to download
KEEP_REJECTS_SECONDS = 7 * 86400
REJECTS_SHOWN = 200
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_REJECTS_NAME = re.compile(r"\A[0-9]{8}T[0-9]{6}-[0-9a-f]{6}-[A-Za-z0-9._-]+\.rejects\.csv\Z")


def imports_dir(settings: Settings) -> Path:
    folder = Path(settings.resolve(IMPORTS_DIR))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _prune(folder: Path) -> None:
    cutoff = time.time() - KEEP_REJECTS_SECONDS
    for old in folder.glob("*.csv"):
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)


def _rejects_rows(path: Path | None, limit: int = REJECTS_SHOWN) -> tuple[list[str], list[list[str]]]:
    if path is None or not path.exists():
        return [], []
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = [row for _, row in zip(range(limit), reader, strict=False)]
    return header, rows


@router.get("/import")
def import_form(request: Request, db: Annotated[Session, Depends(get_db)]) -> Response:
    return render(request, "admin/import.html", {"lists": list_slugs(db)})


@router.post("/import")
def import_upload(request: Request, settings: Annotated[Settings, Depends(get_settings)],
                  db: Annotated[Session, Depends(get_db)], user: Annotated[User, Depends(require_user)],
                  file: Annotated[UploadFile, File()], list: Annotated[str, Form()] = lifecycle.DEFAULT_LIST,  # noqa: A002
                  preconfirmed: Annotated[bool, Form()] = False, source: Annotated[str, Form()] = "",
                  dry_run: Annotated[bool, Form()] = False) -> Response:
    """Import an uploaded CSV with csv_import (batches, rules of lifecycle) and show the report and rejects."""
    folder = imports_dir(settings)
    _prune(folder)
    original = Path(file.filename or "upload.csv").name
    stem = _SAFE_NAME.sub("_", Path(original).stem)[:60] or "upload"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = folder / f"{stamp}-{secrets.token_hex(3)}-{stem}.csv"
    with path.open("wb") as out:
        shutil.copyfileobj(file.file, out, 1 << 20)
    try:
        report = csv_import.import_csv(db, path, list_slug=list or lifecycle.DEFAULT_LIST, preconfirmed=preconfirmed,
                                  source=f"{source.strip()} (imported by {user.email})" if source.strip() else "",
                                  dry_run=dry_run, categories=known_categories(settings))
    except DigestError as e:
        db.rollback()
        return render(request, "admin/import.html", {
            "lists": list_slugs(db),
            "error": f"{original}: {e}".replace(str(path), original)}, status_code=400)
    finally:
        path.unlink(missing_ok=True)  # the upload holds personal data: only the rejects report is kept
    header, rejects = _rejects_rows(report.rejects_path)
    return render(request, "admin/import_result.html", {
        "report": report, "file_name": original, "header": header, "rejects": rejects,
        "rejects_name": report.rejects_path.name if report.rejects_path else "", "shown": REJECTS_SHOWN,
    })


@router.get("/import/rejects/{name}")
def rejects_download(name: str, settings: Annotated[Settings, Depends(get_settings)]) -> Response:
    path = imports_dir(settings) / name
    if not _REJECTS_NAME.match(name) or not path.is_file():
        raise NotFound("that rejects report is not there (reports are kept for 7 days)")
    return FileResponse(path, media_type="text/csv; charset=utf-8", filename=name.split("-", 2)[2])


@router.get("/export")
def export(db: Annotated[Session, Depends(get_db)], list: str = "", status: str = "") -> Response:  # noqa: A002
    """The CSV that csv_export writes (it re-imports to the same selection), streamed from a temporary file."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed when the response has streamed it)
    text = io.TextIOWrapper(spool, encoding="utf-8", newline="")
    try:
        csv_export.export_csv(db, text, list_slug=list or None, status=status or None)
        text.flush()
        text.detach()
    except BaseException:
        spool.close()
        raise
    spool.seek(0)

    def chunks() -> Iterator[bytes]:
        with spool:
            while block := spool.read(1 << 16):
                yield block

    name = f"subscribers-{list or 'all'}-{status or 'all'}-{datetime.now(UTC):%Y%m%d}.csv"
    return StreamingResponse(chunks(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})
