"""One issue's report: what readers received, opened and clicked, link by link (`/admin/issues/N`,
`digest report N`).

Sources: the ledger (`deliveries`: who was sent a copy, and which edition it was), provider events
(`delivery_events`: delivered, open, click, bounce, spam report; clicks also from our own redirect) and
the consent history (`events`: who unsubscribed). Figures count readers, not events, except `clicks`
per link, which also counts every click. Opens are approximate: Apple Mail Privacy Protection loads every
image of a message it receives, so an "open" may be a pre-fetch nobody saw; clicks lead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.editions import DEFAULT, shown_in
from digest.errors import NotFound
from digest.models import Issue
from digest.reporting.links import APPEAL, ARTICLE, LISTING, OTHER, LinkMap, Target
from digest.store import Delivery, DeliveryEvent, IssueRow, SendBatch, utcnow
from subscribers.models import Event, MailingList, MembershipStatus

SUBMITTED = "submitted"  # digest.deliver.ledger.DeliveryStatus.SUBMITTED (a layer above: named here)
#: provider event kinds (digest.deliver.events.kind_of) that mean the copy did not arrive / was reported
BOUNCE_KINDS = ("bounce", "dropped")
COMPLAINT_KINDS = ("spamreport",)
TIMELINE_DAYS = 7
SKEW = timedelta(hours=1)


@dataclass(frozen=True)
class LinkRow:
    """Clicks on one link: readers who clicked (unique), every click, and for a listing or an appeal
    variant the readers whose copy showed it and arrived (`reach`) and the click rate among them."""

    kind: str
    key: str
    label: str
    url: str = ""
    readers: int = 0
    clicks: int = 0
    reach: int | None = None

    @property
    def rate(self) -> float | None:
        return self.readers / self.reach if self.reach else None


@dataclass(frozen=True)
class EditionRow:
    """One edition of the issue: how many readers were sent it, the appeal variant and listings it showed."""

    key: str
    readers: int
    appeal: str | None
    listings: tuple[str, ...]

    @property
    def label(self) -> str:
        return "editor's edition" if self.key == DEFAULT else "by reader preferences / appeal rotation"


@dataclass
class IssueReport:
    number: int
    subject: str
    status: str
    list_slug: str
    sent_at: datetime | None
    sent: int = 0  # copies the transport accepted (the ledger's submitted)
    delivered: int | None = None  # provider-confirmed (None: the transport reports no deliveries)
    opened: int = 0
    clicked: int = 0
    unsubscribed: int = 0
    bounced: int = 0
    complained: int = 0
    timeline: list[tuple[str, int | None, int | None]] = field(default_factory=list)  # (day, opened, clicked)
    articles: list[LinkRow] = field(default_factory=list)
    listings: list[LinkRow] = field(default_factory=list)
    appeal: list[LinkRow] = field(default_factory=list)
    other: list[LinkRow] = field(default_factory=list)
    editions: list[EditionRow] = field(default_factory=list)
    unknown_edition: int = 0  # readers sent before editions were recorded: taken as the editor's edition

    @property
    def reached(self) -> int:
        return self.delivered if self.delivered is not None else max(self.sent - self.bounced, 0)

    def rate(self, value: int) -> float | None:
        return value / self.reached if self.reached else None


def appeal_urls(settings: Settings) -> dict[str, str]:
    """Every appeal variant the editions could carry (the rotation's and the print subscribers' thank-you)."""
    variants = list(settings.appeal.all_variants())
    if settings.appeal.thank_you is not None:
        variants.append(settings.appeal.thank_you)
    return {v.key: v.url for v in variants if v.url}


def link_map(settings: Settings, issue: Issue) -> LinkMap:
    return LinkMap(issue, appeal_urls(settings), settings.publication.public_url)


def _readers(session: Session, issue_id: int, kinds: tuple[str, ...]) -> int:
    return int(session.scalar(select(func.count(func.distinct(DeliveryEvent.subscriber_id)))
                              .where(DeliveryEvent.issue_id == issue_id, DeliveryEvent.kind.in_(kinds))) or 0)


def reached_by_edition(session: Session, issue_id: int) -> tuple[dict[str | None, int], bool]:
    """Readers whose copy arrived, per edition key: submitted and not bounced, and when the provider
    reports deliveries (SendGrid), with a `delivered` event. Also whether deliveries are reported."""
    confirmed = session.scalar(select(func.count()).select_from(DeliveryEvent).where(
        DeliveryEvent.issue_id == issue_id, DeliveryEvent.kind == "delivered")) or 0
    bounced = select(DeliveryEvent.subscriber_id).where(DeliveryEvent.issue_id == issue_id,
                                                        DeliveryEvent.kind.in_(BOUNCE_KINDS),
                                                        DeliveryEvent.subscriber_id.is_not(None))
    query = (select(Delivery.edition, func.count()).where(
        Delivery.issue_id == issue_id, Delivery.status == SUBMITTED,
        or_(Delivery.subscriber_id.is_(None), Delivery.subscriber_id.not_in(bounced))).group_by(Delivery.edition))
    if confirmed:
        delivered = select(DeliveryEvent.subscriber_id).where(DeliveryEvent.issue_id == issue_id,
                                                              DeliveryEvent.kind == "delivered")
        query = query.where(Delivery.subscriber_id.in_(delivered))
    return {key: int(n) for key, n in session.execute(query)}, bool(confirmed)


def listing_reach(issue: Issue, reached: dict[str | None, int]) -> dict[str, int]:
    """listing key -> readers whose arrived copy showed it."""
    out: Counter[str] = Counter()
    for key, n in reached.items():
        for listing in shown_in(issue, key)[0]:
            out[listing.key] += n
    return dict(out)


def appeal_reach(issue: Issue, reached: dict[str | None, int]) -> dict[str, int]:
    """appeal variant key -> readers whose arrived copy carried it."""
    out: Counter[str] = Counter()
    for key, n in reached.items():
        appeal = shown_in(issue, key)[1]
        if appeal is not None:
            out[appeal] += n
    return dict(out)


@dataclass
class Clicks:
    """An issue's clicks by target: the readers and the number of clicks on each."""

    readers: dict[Target, set[int]] = field(default_factory=dict)
    clicks: Counter[Target] = field(default_factory=Counter)
    urls: dict[Target, str] = field(default_factory=dict)

    def add(self, target: Target, subscriber_id: int | None, url: str) -> None:
        self.clicks[target] += 1
        self.urls.setdefault(target, url)
        if subscriber_id is not None:
            self.readers.setdefault(target, set()).add(subscriber_id)

    def row(self, target: Target, *, url: str = "", reach: int | None = None) -> LinkRow:
        return LinkRow(target.kind, target.key, target.label, url, len(self.readers.get(target, ())),
                       self.clicks.get(target, 0), reach)


def issue_clicks(session: Session, issue_id: int, issue: Issue, links: LinkMap) -> Clicks:
    """Every click of the issue, mapped to its link. A click on an appeal is credited to the variant the
    reader's own copy carried (variants may share a URL); without a recorded edition, to the URL's."""
    query = (select(DeliveryEvent.subscriber_id, DeliveryEvent.url, Delivery.edition)
             .join(Delivery, (Delivery.issue_id == DeliveryEvent.issue_id)
                   & (Delivery.subscriber_id == DeliveryEvent.subscriber_id), isouter=True)
             .where(DeliveryEvent.issue_id == issue_id, DeliveryEvent.kind == "click"))
    out = Clicks()
    for subscriber_id, url, edition in session.execute(query):
        target = links.target(url)
        if target.kind == APPEAL and edition is not None:
            carried = shown_in(issue, edition)[1]
            if carried is not None and carried != target.key:
                target = Target(APPEAL, carried, carried)
        if target.kind == APPEAL:
            target = Target(APPEAL, target.key, target.key)  # one row per variant, whatever the label
        out.add(target, subscriber_id, url or "")
    return out


def timeline(session: Session, issue_id: int, start: datetime | None,
             now: datetime | None = None) -> list[tuple[str, int | None, int | None]]:
    """Readers who opened and who clicked on each of the first 7 days after the send (day 1: its first 24
    hours); None for a day that has not begun yet (not a zero: nobody could have clicked)."""
    if start is None:
        return []
    begun = ((now or utcnow()) - start) // timedelta(days=1) + 1
    end = start + timedelta(days=TIMELINE_DAYS)
    # provider timestamps are whole seconds from another clock, and a copy can be delivered before the
    # ledger marks its batch: events up to SKEW before the recorded send moment count in day 1
    since = start - SKEW
    days: dict[str, list[set[int]]] = {k: [set() for _ in range(TIMELINE_DAYS)] for k in ("open", "click")}
    for kind, subscriber_id, at in session.execute(
            select(DeliveryEvent.kind, DeliveryEvent.subscriber_id, DeliveryEvent.at)
            .where(DeliveryEvent.issue_id == issue_id, DeliveryEvent.kind.in_(("open", "click")),
                   DeliveryEvent.at >= since, DeliveryEvent.at < end, DeliveryEvent.subscriber_id.is_not(None))):
        if subscriber_id is not None:
            days[kind][max(0, (at - start) // timedelta(days=1))].add(subscriber_id)
    return [(f"day {i + 1}", len(days["open"][i]), len(days["click"][i])) if i < begun else (f"day {i + 1}", None, None)
            for i in range(TIMELINE_DAYS)]


def unsubscribed_after(session: Session, row: IssueRow, start: datetime | None) -> int:
    """Readers of this issue who left its list (unsubscribed) within 7 days of the send: our own
    unsubscribe link and the provider's unsubscribe events both end in the consent history."""
    if start is None:
        return 0
    list_id = session.scalar(select(MailingList.id).where(MailingList.slug == row.list_slug))
    readers = select(Delivery.subscriber_id).where(Delivery.issue_id == row.id, Delivery.status == SUBMITTED)
    query = select(func.count(func.distinct(Event.subscriber_id))).where(
        Event.new_status == MembershipStatus.UNSUBSCRIBED, Event.subscriber_id.in_(readers),
        Event.at >= start, Event.at < start + timedelta(days=TIMELINE_DAYS))
    if list_id is not None:
        query = query.where(or_(Event.list_id == list_id, Event.list_id.is_(None)))
    return int(session.scalar(query) or 0)


def send_moment(session: Session, row: IssueRow) -> datetime | None:
    """When the issue went out: its scheduled send moment, else when it was finished, else its first copy."""
    first = session.scalar(select(func.min(Delivery.updated_at)).where(Delivery.issue_id == row.id,
                                                                       Delivery.status == SUBMITTED))
    # a reader's send moment is its row's own, else its claimed batch's (migration 0015_batch_schedule)
    scheduled = session.scalar(select(func.min(func.coalesce(Delivery.send_at, SendBatch.send_at)))
                               .select_from(Delivery).outerjoin(SendBatch, SendBatch.batch == Delivery.batch)
                               .where(Delivery.issue_id == row.id))
    return scheduled or first or row.sent_at


def issue_report(session: Session, settings: Settings, number: int) -> IssueReport:
    row = session.scalar(select(IssueRow).where(IssueRow.number == number))
    if row is None:
        raise NotFound(f"there is no issue #{number}")
    issue = Issue.from_json(row.content)
    start = send_moment(session, row)
    report = IssueReport(row.number, row.subject, row.status, row.list_slug, start)
    report.sent = int(session.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.issue_id == row.id, Delivery.status == SUBMITTED)) or 0)
    reached, confirmed = reached_by_edition(session, row.id)
    report.delivered = sum(reached.values()) if confirmed else None
    report.opened = _readers(session, row.id, ("open",))
    report.clicked = _readers(session, row.id, ("click",))
    report.bounced = _readers(session, row.id, BOUNCE_KINDS)
    report.complained = _readers(session, row.id, COMPLAINT_KINDS)
    report.unsubscribed = unsubscribed_after(session, row, start)
    report.timeline = timeline(session, row.id, start)

    links = link_map(settings, issue)
    clicks = issue_clicks(session, row.id, issue, links)
    report.articles = [clicks.row(Target(ARTICLE, a.key, a.title), url=a.link) for a in issue.all_articles]
    reach = listing_reach(issue, reached)
    report.listings = [clicks.row(Target(LISTING, x.key, x.name), url=x.url, reach=reach.get(x.key, 0))
                       for x in issue.listings]
    carried = appeal_reach(issue, reached)
    urls = appeal_urls(settings)
    variants = list(dict.fromkeys([*carried, *(t.key for t in clicks.clicks if t.kind == APPEAL)]))
    report.appeal = [clicks.row(Target(APPEAL, k, k), url=urls.get(k, ""), reach=carried.get(k, 0)) for k in variants]
    report.other = sorted((clicks.row(t) for t in clicks.clicks if t.kind == OTHER),
                          key=lambda r: (-r.readers, r.label))
    sent_by_edition: Counter[str] = Counter()
    for key, n in session.execute(select(Delivery.edition, func.count()).where(
            Delivery.issue_id == row.id, Delivery.status == SUBMITTED).group_by(Delivery.edition)):
        sent_by_edition[key or DEFAULT] += int(n)
        if key is None:
            report.unknown_edition = int(n)
    for key, n in sorted(sent_by_edition.items(), key=lambda kv: (kv[0] != DEFAULT, -kv[1])):
        listings, appeal = shown_in(issue, key)
        report.editions.append(EditionRow(key, n, appeal, tuple(x.name for x in listings)))
    return report


def as_dict(report: IssueReport) -> dict[str, Any]:
    """The headline figures, for the CLI's table and tests."""
    return {"sent": report.sent, "delivered": report.delivered, "opened": report.opened, "clicked": report.clicked,
            "unsubscribed": report.unsubscribed, "bounced": report.bounced, "complained": report.complained}
