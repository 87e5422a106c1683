"""Report pages for editors and admins: one issue's report (`/admin/issues/N`), the supplier report for
advertisers (`/admin/suppliers`, its CSV) and a list's growth (`/admin/lists/{slug}`, admins), and the
charts of the dashboard. The figures are digest.reporting's; the charts digest.web.charts'.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from markupsafe import Markup
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.errors import NotFound
from digest.reporting.issue import IssueReport, issue_report
from digest.reporting.suppliers import SupplierReach, supplier_reach
from digest.reporting.trends import AppealPoint, Week, appeal_over_time, list_growth
from digest.store import User
from digest.web.auth import require_admin, require_user
from digest.web.charts import chart
from digest.web.csrf import check_csrf
from digest.web.deps import get_db, get_settings
from digest.web.numbers import IdConvertor, parse_id  # noqa: F401 (IdConvertor registers {name:id})
from digest.web.pages import render
from subscribers.csv_safe import safe_row
from subscribers.queries import list_slugs

router = APIRouter(prefix="/admin", dependencies=[Depends(require_user), Depends(check_csrf)])

OPENS_NOTE = ("Opens are approximate: Apple Mail Privacy Protection loads the images of every message it "
              "receives, so many \"opens\" are pre-fetches nobody saw. Clicks are the figure to trust.")


def issue_chart(report: IssueReport) -> Markup:
    labels = [day for day, _, _ in report.timeline]
    return chart(f"Issue #{report.number}: readers who opened and clicked, day by day", labels,
                 [("clicked", [c for _, _, c in report.timeline]),
                  ("opened (approximate)", [o for _, o, _ in report.timeline])],
                 description="Readers with at least one click (or open) on each of the first 7 days after the "
                             "send; day 1 is its first 24 hours. Source: SendGrid's open and click events.")


def appeal_chart(points: list[AppealPoint]) -> Markup:
    issues = list(dict.fromkeys(p.issue for p in points))
    variants = list(dict.fromkeys(p.variant for p in points))
    by = {(p.issue, p.variant): p.readers for p in points}
    return chart("The appeal: readers who clicked it, per issue and variant", [f"#{n}" for n in issues],
                 [(v, [by.get((n, v)) for n in issues]) for v in variants],
                 description="Readers who clicked the appeal's button in each issue, one bar per variant they "
                             "were shown. Source: click events mapped to the appeal's URL.")


def growth_chart(weeks: list[Week], name: str) -> Markup:
    labels = [f"{w.start:%d %b}" for w in weeks]
    return chart(f"{name}: subscribers per week", labels,
                 [("new", [w.new for w in weeks]), ("confirmed", [w.confirmed for w in weeks]),
                  ("unsubscribed", [w.unsubscribed for w in weeks]), ("bounced", [w.bounced for w in weeks])],
                 kind="line",
                 description="Per week (starting Monday): sign-ups and imports (new), memberships made active "
                             "(confirmed), unsubscribed and bounced. Source: the consent history.")


def dashboard_reports(db: Session, settings: Settings, user: User) -> dict[str, Any]:
    """The dashboard's charts: the appeal over time (everyone), the list's growth (admins)."""
    points = appeal_over_time(db, settings)
    out: dict[str, Any] = {"appeal_points": points, "appeal_chart": appeal_chart(points) if points else None,
                           "growth": [], "growth_chart": None}
    if user.role == "admin":
        weeks = list_growth(db, settings.publication.tz)
        out.update(growth=weeks, growth_chart=growth_chart(weeks, "All lists"))
    return out


@router.get("/issues/{number:id}")
def issue_page(request: Request, number: int, settings: Annotated[Settings, Depends(get_settings)],
               db: Annotated[Session, Depends(get_db)]) -> Response:
    report = issue_report(db, settings, number)
    return render(request, "admin/issue_report.html", {
        "report": report, "chart": issue_chart(report) if report.timeline else None, "opens_note": OPENS_NOTE})


def _suppliers(db: Session, settings: Settings, last: int | None, supplier: str) -> list[SupplierReach]:
    rows = sorted(supplier_reach(db, settings, last=last).values(),
                  key=lambda r: (-r.readers, -r.reach, r.name.casefold()))
    if supplier:
        rows = [r for r in rows if r.key == supplier.strip().casefold()]
        if not rows:
            raise NotFound(f"no sent issue featured the supplier {supplier!r}")
    return rows


def _last(value: str) -> int | None:
    """`?last=N`: a count of issues, or None (every issue) for anything that is not one (parse_id: ASCII
    digits below 2^63, so `²` or 5,000 digits are no 500)."""
    number = parse_id(value)
    return number if number else None


@router.get("/suppliers")
def suppliers_page(request: Request, settings: Annotated[Settings, Depends(get_settings)],
                   db: Annotated[Session, Depends(get_db)], last: str = "", supplier: str = "") -> Response:
    rows = _suppliers(db, settings, _last(last), supplier)
    graph: Markup | None = None
    if supplier and rows:
        one = rows[0]
        graph = chart(f"{one.name}: readers reached and who clicked, per issue",
                      [f"#{p.issue}" for p in one.placements],
                      [("reached", [p.reach for p in one.placements]),
                       ("clicked", [p.readers for p in one.placements])],
                      description="Readers whose copy showed the listing and arrived, and those who clicked it.")
    elif rows:
        graph = chart("Readers who clicked each supplier's listing", [r.name for r in rows[:12]],
                      [("clicked", [r.readers for r in rows[:12]])],
                      description="Over the issues shown; the twelve most clicked suppliers.")
    return render(request, "admin/suppliers.html", {"rows": rows, "chart": graph, "last": _last(last) or "",
                                                    "supplier": supplier, "generated": datetime.now(UTC)})


@router.get("/suppliers.csv")
def suppliers_csv(settings: Annotated[Settings, Depends(get_settings)], db: Annotated[Session, Depends(get_db)],
                  last: str = "", supplier: str = "") -> Response:
    """One row per supplier and issue; cells a spreadsheet would run are neutralised (subscribers.csv_safe)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["supplier", "issue", "readers_reached", "readers_clicked", "clicks", "click_rate"])
    for r in _suppliers(db, settings, _last(last), supplier):
        for p in r.placements:
            writer.writerow(safe_row([r.name, p.issue, p.reach, p.readers, p.clicks,
                                      f"{p.rate:.4f}" if p.rate is not None else ""]))
    name = f"suppliers-{datetime.now(UTC):%Y%m%d}.csv"
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/lists/{slug}", dependencies=[Depends(require_admin)])
def list_page(request: Request, slug: str, settings: Annotated[Settings, Depends(get_settings)],
              db: Annotated[Session, Depends(get_db)]) -> Response:
    if slug not in list_slugs(db):
        raise NotFound(f"there is no list {slug!r}")
    weeks = list_growth(db, settings.publication.tz, list_slug=slug)
    return render(request, "admin/list_growth.html", {"slug": slug, "weeks": weeks,
                                                      "chart": growth_chart(weeks, f"List {slug}")})
