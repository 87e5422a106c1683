"""The supplier report for advertisers: per supplier, the issues that featured it, the readers it reached
and their clicks (the page `/admin/suppliers`, its CSV, `digest listings report`).

Reach in one issue: the readers whose copy arrived (digest.reporting.issue.reached_by_edition) and
whose edition showed the supplier (a reader with category preferences sees only the listings of their
categories). Clicks: the readers who clicked the supplier's link in that issue. Click rate: clicking
readers over readers reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.models import Issue
from digest.reporting.issue import LISTING, issue_clicks, link_map, listing_reach, reached_by_edition
from digest.reporting.trends import SENT
from digest.store import IssueRow, ListingFeature


@dataclass(frozen=True)
class Placement:
    """One issue that featured a supplier."""

    issue: int
    reach: int
    readers: int  # who clicked
    clicks: int

    @property
    def rate(self) -> float | None:
        return self.readers / self.reach if self.reach else None


@dataclass
class SupplierReach:
    key: str
    name: str
    placements: list[Placement] = field(default_factory=list)

    @property
    def issues(self) -> tuple[int, ...]:
        return tuple(p.issue for p in self.placements)

    @property
    def reach(self) -> int:
        return sum(p.reach for p in self.placements)

    @property
    def readers(self) -> int:
        return sum(p.readers for p in self.placements)

    @property
    def clicks(self) -> int:
        return sum(p.clicks for p in self.placements)

    @property
    def rate(self) -> float | None:
        return self.readers / self.reach if self.reach else None


def supplier_reach(session: Session, settings: Settings, *, last: int | None = None) -> dict[str, SupplierReach]:
    """listing key -> its placements in the sent issues (all, or among the `last` N issue numbers), oldest first."""
    F = ListingFeature
    query = (select(F.issue_id, F.issue_number, F.listing_key, F.name)
             .join(IssueRow, IssueRow.id == ListingFeature.issue_id).where(IssueRow.status.in_(SENT))
             .order_by(ListingFeature.issue_number))
    if last:
        newest = session.scalar(select(ListingFeature.issue_number).order_by(ListingFeature.issue_number.desc())
                                .limit(1)) or 0
        query = query.where(ListingFeature.issue_number > newest - last)
    features = session.execute(query).all()
    out: dict[str, SupplierReach] = {}
    per_issue: dict[int, tuple[dict[str, int], dict[str, tuple[int, int]]]] = {}
    for issue_id, number, key, name in features:
        if issue_id not in per_issue:
            row = session.get(IssueRow, issue_id)
            assert row is not None
            issue = Issue.from_json(row.content)
            reached, _ = reached_by_edition(session, issue_id)
            clicks = issue_clicks(session, issue_id, issue, link_map(settings, issue))
            per_listing = {t.key: (len(clicks.readers.get(t, ())), clicks.clicks[t])
                           for t in clicks.clicks if t.kind == LISTING}
            per_issue[issue_id] = (listing_reach(issue, reached), per_listing)
        reach, clicked = per_issue[issue_id]
        readers, n = clicked.get(key, (0, 0))
        placement = Placement(number, reach.get(key, 0), readers, n)
        out.setdefault(key, SupplierReach(key, name)).placements.append(placement)
    return out
