"""The issue's life: draft (collect + compose + render + store), adjust, approve, send.

The CLI, the scheduler and the web app all call these functions; none of them composes on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.compose import FeatureHistory, compose
from digest.config import Settings
from digest.deliver import make_transport
from digest.deliver.base import Message, Personalizer, SendReport, Transport, deliver
from digest.editions import Editions
from digest.errors import DigestError, NotFound
from digest.models import Collected, Issue
from digest.render import Check, check_links, issue_links, personalize, public_values
from digest.sources.collect import collect, mark_sent
from digest.store import IssueRow, ListingFeature, session_factory, utcnow
from subscribers import lifecycle
from subscribers.models import ACTIVE, Membership, Subscriber

OPEN_STATUSES = ("draft", "approved", "sending")


@dataclass
class Draft:
    row: IssueRow
    issue: Issue
    collected: Collected
    checks: list[Check] = field(default_factory=list)


def feature_history(session: Session) -> FeatureHistory:
    featured: dict[str, list[int]] = defaultdict(list)
    for key, number in session.execute(select(ListingFeature.listing_key, ListingFeature.issue_number)
                                       .order_by(ListingFeature.issue_number)):
        featured[key].append(number)
    return FeatureHistory(dict(featured))


def open_issue(session: Session) -> IssueRow | None:
    """The issue in progress: one being sent first, then an approved one, then a draft."""
    for status in ("sending", "approved", "draft"):
        row = session.scalar(select(IssueRow).where(IssueRow.status == status).order_by(IssueRow.number.desc()))
        if row is not None:
            return row
    return None


def get_issue(session: Session, number: int | None = None) -> IssueRow:
    if number is None:
        row = open_issue(session)
        if row is None:
            raise NotFound("there is no draft: run `digest draft` first")
        return row
    row = session.scalar(select(IssueRow).where(IssueRow.number == number))
    if row is None:
        raise NotFound(f"there is no issue {number}")
    return row


def store_rendered(settings: Settings, row: IssueRow, issue: Issue, *, offline: bool = True) -> list[Check]:
    """Render the editor's edition and keep it (archive, preview, checks)."""
    rendered = Editions(settings, issue).get()
    found = list(rendered.checks)
    if not offline:
        found.append(check_links(issue_links(issue)))
    public = public_values(settings)
    row.subject = issue.subject
    row.html, row.text = personalize(rendered.html, public), personalize(rendered.text, public)
    row.html_bytes = rendered.html_bytes
    row.checks = [c.to_json() for c in found]
    row.content = issue.to_json()
    return found


def build_draft(settings: Settings, session: Session, *, now: datetime | None = None,
                pinned: Sequence[str] | None = None, excluded: Sequence[str] | None = None,
                featured: Sequence[str] | None = None, offline: bool = True) -> Draft:
    """Collect and compose the next issue into the current draft (created if there is none).

    Adjustments given here replace the draft's; those not given are kept. An approved issue that is
    changed becomes a draft again.
    """
    now = now or datetime.now(UTC)
    row = session.scalar(select(IssueRow).where(IssueRow.status.in_(("draft", "approved")))
                         .order_by(IssueRow.number.desc()))
    previous = Issue.from_json(row.content) if row is not None and row.content else None
    collected = collect(session, settings, now)
    number = row.number if row is not None else (session.scalar(select(func.max(IssueRow.number))) or 0) + 1
    issue = compose(
        settings, number, collected.articles, collected.listings, feature_history(session), now,
        pinned=pinned if pinned is not None else (previous.pinned if previous else []),
        excluded=excluded if excluded is not None else (previous.excluded if previous else []),
        featured=featured if featured is not None else (previous.featured if previous else []),
    )
    if row is None:
        row = IssueRow(number=number, list_slug=settings.delivery.list, status="draft", subject=issue.subject,
                       content={})
        session.add(row)
    elif row.status == "approved":
        row.status, row.approved_at, row.approved_by = "draft", None, None
    found = store_rendered(settings, row, issue, offline=offline)
    session.flush()
    return Draft(row, issue, collected, found)


def approve(session: Session, number: int | None = None, *, by: str = "cli") -> IssueRow:
    row = get_issue(session, number)
    if row.status != "draft":
        raise DigestError(f"issue {row.number} is {row.status}, not a draft: only a draft can be approved")
    row.status, row.approved_at, row.approved_by = "approved", utcnow(), by
    return row


def issue_of(row: IssueRow) -> Issue:
    return Issue.from_json(row.content)


def recipients(session: Session, list_slug: str) -> list[Subscriber]:
    mlist = lifecycle.ensure_list(session, list_slug)
    return list(session.scalars(select(Subscriber).join(Membership).where(
        Membership.list_id == mlist.id, Membership.status == ACTIVE).order_by(Subscriber.id)))


def start_sending(session: Session, row: IssueRow) -> None:
    """The moment an issue is committed to go out: its articles and featured listings are used up."""
    issue = issue_of(row)
    mark_sent(session, row.id, [a.key for a in issue.all_articles])
    existing = set(session.scalars(select(ListingFeature.listing_key).where(ListingFeature.issue_id == row.id)))
    for listing in issue.listings:
        if listing.key not in existing:
            session.add(ListingFeature(issue_id=row.id, issue_number=row.number, listing_key=listing.key,
                                       name=listing.name))


@dataclass
class SendOutcome:
    report: SendReport | None
    row: IssueRow | None
    message: str
    editions: int = 0


def send(settings: Settings, *, transport: Transport | None = None, progress: Callable[[int, int], None] | None = None,
         now: datetime | None = None, require_approval: bool = False) -> SendOutcome:
    """Send the issue in progress (resuming one being sent), or build the next one and send it."""
    factory = session_factory(settings.database_url)
    with factory() as session:
        row = open_issue(session)
        if row is None or row.status == "draft":
            if require_approval and row is not None:
                return SendOutcome(None, row, f"issue {row.number} is a draft, not approved: not sent")
            if row is None:
                draft = build_draft(settings, session, now=now)
                row = draft.row
            if not issue_of(row).articles:
                session.rollback()
                return SendOutcome(None, None, "nothing new to send since the last issue: not sent")
        if row.status != "sending":
            start_sending(session, row)
            if row.approved_by is None:
                row.approved_at, row.approved_by = utcnow(), "digest send"
        mlist = lifecycle.ensure_list(session, row.list_slug)
        session.commit()
        issue_id, list_id, issue = row.id, mlist.id, issue_of(row)
    editions = Editions(settings, issue)
    report = deliver(factory, settings, issue_id, transport or make_transport(settings), editions,
                     list_id=list_id, progress=progress)
    with factory() as session:
        row = session.get(IssueRow, issue_id)
    return SendOutcome(report, row, "sent" if report.ok else "finished with problems", editions.renders)


def send_test(settings: Settings, to: str, *, transport: Transport | None = None) -> str:
    """A test copy of the current draft to one address; nothing is recorded as sent."""
    address = lifecycle.normalize(to)
    factory = session_factory(settings.database_url)
    with factory() as session:
        row = open_issue(session) or build_draft(settings, session).row
        session.commit()
        issue = issue_of(row)
        mlist = lifecycle.ensure_list(session, row.list_slug)
        sub = lifecycle.find(session, address.email)
        session.commit()
        sid, name, list_id = (sub.id, sub.name, mlist.id) if sub else (0, "", mlist.id)
    editions = Editions(settings, issue)
    values, headers = Personalizer(settings).for_reader(sid, list_id, name)
    message = Message(0, sid, row.id, row.number, address.email, name, editions.get(editions.key(sub)),
                      values, headers)
    message = Message(**{**message.__dict__, "edition": _test_edition(message.edition)})
    transport = transport or make_transport(settings)
    try:
        outcome = transport.send([message])[0]
    finally:
        transport.close()
    if not outcome.ok:
        raise DigestError(f"test send to {address.email} failed: {outcome.error}")
    return f"test copy of issue {row.number} sent to {address.email}"


def _test_edition(rendered):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(rendered, subject=f"[TEST] {rendered.subject}")
