"""Editors' pages: the current draft at desktop and phone width, its text part and checks, and the
actions on it (exclude / pin articles, choose featured listings, rebuild, send a test, approve).

Every action calls digest.issues, the same functions as `digest draft`, `digest send --to` and
`digest approve`; nothing here composes or renders on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from digest import issues
from digest.config import Settings
from digest.errors import DigestError
from digest.issue_queries import seen_articles
from digest.issue_status import IssueStatus
from digest.models import Article
from digest.reports import issue_figures
from digest.sources.collect import candidates
from digest.store import IssueRow, User
from digest.web.admin import shown_counts
from digest.web.auth import require_user
from digest.web.csrf import check_csrf
from digest.web.deps import get_db, get_settings
from digest.web.numbers import issue_number  # also registers the {name:id} path convertor used below
from digest.web.pages import flash, render
from digest.web.reports import dashboard_reports

router = APIRouter(prefix="/admin", dependencies=[Depends(require_user), Depends(check_csrf)])

#: what the editor can still change (a rebuild makes it a draft again); "sending" and "sent" are final
EDITABLE = (IssueStatus.DRAFT, IssueStatus.APPROVED, IssueStatus.HELD)
APPROVABLE = (IssueStatus.DRAFT, IssueStatus.HELD)
#: the draft's own HTML runs nothing and reaches nothing but images and styles, even inside our pages
PREVIEW_CSP = ("sandbox; default-src 'none'; img-src * data:; style-src 'unsafe-inline' https:; "
               "font-src https: data:; frame-ancestors 'self'")


@dataclass(frozen=True)
class ArticleRow:
    """One article the editor can act on, and where it stands in the draft."""

    key: str
    title: str
    link: str
    published: datetime | None
    place: str  # top | article | headline | waiting | excluded
    pinned: bool


def article_rows(settings: Settings, db: Session, row: IssueRow) -> list[ArticleRow]:
    issue = issues.issue_of(row)
    pinned = set(issue.pinned)
    out: list[ArticleRow] = []

    def add(a: Article, place: str) -> None:
        out.append(ArticleRow(a.key, a.title, a.link, a.published, place, a.key in pinned))

    for i, a in enumerate(issue.articles):
        add(a, "top" if i == 0 else "article")
    for a in issue.headlines:
        add(a, "headline")
    if row.status in EDITABLE:
        shown = {r.key for r in out} | set(issue.excluded)
        for a in candidates(db, settings, datetime.now(UTC)):
            if a.key not in shown:
                add(a, "waiting")
    if issue.excluded:
        found = seen_articles(db, issue.excluded)
        for key in issue.excluded:
            seen = found.get(key)
            out.append(ArticleRow(key, seen.title if seen else key, (seen.data or {}).get("link", "") if seen else "",
                                  seen.published_at if seen else None, "excluded", False))
    return out


def _version(row: IssueRow) -> str:
    return row.updated_at.isoformat() if row.updated_at else ""


@router.get("")
def dashboard(request: Request, settings: Annotated[Settings, Depends(get_settings)],
              db: Annotated[Session, Depends(get_db)], user: Annotated[User, Depends(require_user)]) -> Response:
    row = issues.current_issue(db)
    return render(request, "admin/dashboard.html", {
        "row": row, "figures": issue_figures(db, limit=5) if user.role == "admin" else [],
        **(shown_counts(db, settings) if user.role == "admin" else {"counts": []}),  # stored at scale
        **dashboard_reports(db, settings, user),  # the appeal and the list over time (digest.web.reports)
    })


@router.get("/draft")
def draft(request: Request, settings: Annotated[Settings, Depends(get_settings)],
          db: Annotated[Session, Depends(get_db)]) -> Response:
    row = issues.current_issue(db)
    if row is None:
        return render(request, "admin/draft.html", {"row": None})
    issue = issues.issue_of(row)
    chosen = {x.key for x in issue.listings}
    forced = {f.casefold().strip() for f in issue.featured}
    return render(request, "admin/draft.html", {
        "row": row, "issue": issue, "editable": row.status in EDITABLE, "version": _version(row),
        "articles": article_rows(settings, db, row), "listings": request.app.state.catalog.listings(),
        "chosen": chosen, "forced": forced, "featured_count": settings.sources.featured_listings,
        "new_articles": issues.new_article_count(row), "min_articles": settings.schedule.min_articles,
        "when_empty": settings.schedule.when_empty,
    })


@router.get("/preview/{number:id}.html")
def preview_html(number: int, db: Annotated[Session, Depends(get_db)]) -> Response:
    """The issue's HTML alone, for the preview frames (sandboxed: it can run nothing)."""
    row = issues.get_issue(db, number)
    return HTMLResponse(row.html, headers={"Content-Security-Policy": PREVIEW_CSP, "Cache-Control": "no-store"})


@router.get("/preview/{number:id}.txt")
def preview_text(number: int, db: Annotated[Session, Depends(get_db)]) -> Response:
    return PlainTextResponse(issues.get_issue(db, number).text, headers={"Cache-Control": "no-store"})


def _back() -> Response:
    return RedirectResponse("/admin/draft", status_code=303)


@router.post("/draft/build")
def build(request: Request, settings: Annotated[Settings, Depends(get_settings)],
          db: Annotated[Session, Depends(get_db)], user: Annotated[User, Depends(require_user)]) -> Response:
    """Collect again and rebuild the draft (keeping the editor's adjustments)."""
    d = issues.build_draft(settings, db, by=user.email)
    db.commit()
    flash(request, f"Draft of issue {d.row.number} rebuilt: {len(d.issue.articles)} articles, "
                   f"{len(d.issue.headlines)} headlines, {len(d.issue.listings)} listings.")
    for problem in d.collected.problems[:5]:
        flash(request, f"Source problem: {problem}", "warn")
    return _back()


@router.post("/draft/adjust")
def adjust(request: Request, settings: Annotated[Settings, Depends(get_settings)],
           db: Annotated[Session, Depends(get_db)], user: Annotated[User, Depends(require_user)],
           number_field: Annotated[str, Form(alias="number")],
           pin: Annotated[list[str] | None, Form()] = None, exclude: Annotated[list[str] | None, Form()] = None,
           feature: Annotated[list[str] | None, Form()] = None) -> Response:
    """Replace the draft's exclusions, pins and featured listings with the form's, and rebuild it."""
    number = issue_number(number_field)
    row = issues.current_issue(db)
    if row is None or row.number != number or row.status not in EDITABLE:
        raise DigestError(f"issue {number} can no longer be changed (it is not the open draft)")
    excluded = list(dict.fromkeys(exclude or []))
    pinned = [k for k in dict.fromkeys(pin or []) if k not in excluded]
    was_approved = row.status in (IssueStatus.APPROVED, IssueStatus.HELD)
    d = issues.build_draft(settings, db, pinned=pinned, excluded=excluded, featured=list(feature or []),
                           by=user.email)
    db.commit()
    flash(request, f"Draft of issue {d.row.number} updated: {len(excluded)} excluded, {len(pinned)} pinned, "
                   f"{len(d.issue.listings)} listings." + (" It needs approving again." if was_approved else ""))
    return _back()


@router.post("/draft/test")
def send_test(request: Request, settings: Annotated[Settings, Depends(get_settings)],
              user: Annotated[User, Depends(require_user)]) -> Response:
    """A test copy to the editor's own address (the only address this page can send to)."""
    try:
        flash(request, issues.send_test(settings, user.email))
    except DigestError as e:
        flash(request, f"The test was not sent: {e}", "error")
    return _back()


@router.post("/draft/approve")
def approve(request: Request, settings: Annotated[Settings, Depends(get_settings)],
            db: Annotated[Session, Depends(get_db)], user: Annotated[User, Depends(require_user)],
            number_field: Annotated[str, Form(alias="number")], version: Annotated[str, Form()] = "",
            allow_empty: Annotated[bool, Form()] = False) -> Response:
    """Approve exactly what the editor looked at: a draft rebuilt since then must be reviewed again. An
    issue with fewer than `min_articles` new articles needs the page's second, explicit confirmation."""
    number = issue_number(number_field)
    row = issues.get_issue(db, number)
    if row.status in APPROVABLE and version != _version(row):
        flash(request, f"Issue {number} changed since you loaded it: review it again before approving.", "error")
        return _back()
    try:
        issues.approve(db, number, by=user.email, min_articles=settings.schedule.min_articles,
                       allow_empty=allow_empty)
    except issues.TooFewArticles:
        flash(request, f"Issue {number} has fewer new articles than min_articles = "
                       f"{settings.schedule.min_articles}: confirm below that it should go out anyway.", "error")
        return _back()
    db.commit()
    flash(request, f"Issue {number} approved: it will go out at the scheduled time.")
    return _back()
