"""The issue's life: draft (collect + compose + render + store), adjust, approve, hold, skip, send.

The CLI, the scheduler and the web app all call these functions; none of them composes or changes an
issue's status on its own. Statuses: draft -> approved -> sending -> sent, or held / skipped. The newest
issue, while it is a draft, approved, held or skipped, is the one the next draft rebuilds (so readers
never see a gap in the numbers); an approved issue that is rebuilt becomes a draft again.
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
from digest.deliver import make_transport, send_outside_ledger
from digest.deliver.loop import deliver
from digest.deliver.personalizer import Personalizer
from digest.deliver.protocol import Message, SendReport, Transport
from digest.editions import Editions, appeal_clickers
from digest.errors import DigestError, NotFound
from digest.issue_status import IN_PROGRESS, REBUILDABLE, IssueStatus, move
from digest.locks import hold_send_start
from digest.models import Collected, Issue
from digest.moments import next_send_at
from digest.render import Check, check_links, issue_links, personalize, public_values
from digest.sources.seen import mark_sent
from digest.store import IssueRow, ListingFeature, session_factory, utcnow
from digest.wording import plural
from subscribers import lifecycle
from subscribers.models import Membership, MembershipStatus, Subscriber


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
    for status in IN_PROGRESS:
        row = session.scalar(select(IssueRow).where(IssueRow.status == status).order_by(IssueRow.number.desc()))
        if row is not None:
            return row
    return None


def newest_issue(session: Session) -> IssueRow | None:
    return session.scalar(select(IssueRow).order_by(IssueRow.number.desc()).limit(1))


def current_issue(session: Session) -> IssueRow | None:
    """The issue editors act on: the one in progress, else the newest if it is held."""
    row = open_issue(session)
    if row is not None:
        return row
    newest = newest_issue(session)
    return newest if newest is not None and newest.status == IssueStatus.HELD else None


def get_issue(session: Session, number: int | None = None) -> IssueRow:
    if number is None:
        row = current_issue(session)
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
                featured: Sequence[str] | None = None, offline: bool = True,
                send_at: datetime | None = None, by: str = "") -> Draft:
    """Collect and compose the next issue into the current draft (created if there is none).

    Adjustments given here replace the draft's; those not given are kept. An approved, held or skipped
    issue that is rebuilt becomes a draft again. `send_at` is the send moment the draft is for (default:
    the one it already has if still ahead, else the schedule's next).
    """
    # the sources' fetchers (httpx, feedparser) here: a send of a built issue fetches nothing (issue 16, the
    # start-up of `digest send`)
    from digest.sources.collect import collect, health_summary

    now = now or datetime.now(UTC)
    lifecycle.configured_list(session, settings.delivery.list)  # a mistyped list fails here, before any work
    newest = newest_issue(session)
    row = newest if newest is not None and newest.status in REBUILDABLE else None
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
        row = IssueRow(number=number, list_slug=settings.delivery.list, status=IssueStatus.DRAFT,
                       subject=issue.subject, content={}, note="")
        session.add(row)
    elif row.status != IssueStatus.DRAFT:
        move(row, IssueStatus.DRAFT, now=now, note=": rebuilt" + (f" by {by}" if by else ""))
    if send_at is None:
        send_at = row.send_at if row.send_at is not None and row.send_at > now else next_send_at(settings, now)
    row.send_at = send_at
    found = store_rendered(settings, row, issue, offline=offline)
    feeds = Check("feeds", *health_summary(collected.feed_health, settings.sources.stale_runs))
    # every feed failing is the first thing an editor must see (the checks and the notice lead with it)
    found.insert(0 if feeds.level == "fail" else len(found), feeds)
    row.checks = [c.to_json() for c in found]  # feed health is told to the editors with the other checks
    session.flush()
    return Draft(row, issue, collected, found)


class TooFewArticles(DigestError):
    """An approval of an issue with fewer new articles than `min_articles`, not confirmed as meant."""


def new_article_count(row: IssueRow) -> int:
    """The issue's new articles, headlines included: what `[schedule] min_articles` is compared with."""
    return len(issue_of(row).all_articles) if row.content else 0


def approve(session: Session, number: int | None = None, *, by: str = "cli", now: datetime | None = None,
            min_articles: int = 0, allow_empty: bool = False) -> IssueRow:
    """Freeze the draft (or a held issue) as it is: it goes out at its send moment, or by `send`.

    An issue with fewer than `min_articles` new articles is approved only with `allow_empty`: an
    approval wins over `when_empty`, so one click must not send an empty issue to everyone. Left
    unapproved, it follows `when_empty` at the send time."""
    row = get_issue(session, number)
    n = new_article_count(row)
    if n < min_articles and not allow_empty:
        raise TooFewArticles(f"issue {row.number} has {plural(n, 'new article')}, fewer than min_articles = "
                             f"{min_articles}: approve it with --allow-empty to send it anyway (unapproved, it "
                             "follows when_empty at the send time)")
    was_held = row.status == IssueStatus.HELD
    move(row, IssueStatus.APPROVED, now=now or utcnow(), by=by, note=f" by {by}" if was_held else None)
    return row


def reopen(session: Session, number: int | None = None, *, by: str = "cli", now: datetime | None = None
           ) -> IssueRow:
    """Unfreeze an approved (or held) issue without rebuilding it: it is a draft again."""
    row = get_issue(session, number)
    move(row, IssueStatus.DRAFT, now=now, note=f" by {by}", only=(IssueStatus.APPROVED, IssueStatus.HELD),
         action="reopened")
    return row


def hold(session: Session, number: int | None = None, *, by: str = "cli", reason: str = "",
         now: datetime | None = None) -> IssueRow:
    """Keep the issue from going out at its send moment; approve it later to send it by hand."""
    row = get_issue(session, number)
    move(row, IssueStatus.HELD, now=now, note=f" by {by}" + (f": {reason}" if reason else ""))
    return row


def skip(session: Session, number: int | None = None, *, by: str = "cli", reason: str = "",
         now: datetime | None = None) -> IssueRow:
    """Send nothing this time. The number is reused by the next draft, so readers see no gap."""
    row = get_issue(session, number)
    move(row, IssueStatus.SKIPPED, now=now, note=f" by {by}" + (f": {reason}" if reason else ""))
    return row


@dataclass(frozen=True)
class Summary:
    """What editors are shown about an issue: in the notice email, the CLI and the admin pages."""

    number: int
    status: str
    subject: str
    articles: int
    headlines: int
    listings: int
    html_bytes: int
    checks: list[dict[str, str]]
    send_at: datetime | None
    preview_url: str
    note: str = ""

    @property
    def new_articles(self) -> int:
        """Articles new in this issue, headlines included: what `min_articles` is compared with."""
        return self.articles + self.headlines

    @property
    def problems(self) -> list[dict[str, str]]:
        return [c for c in self.checks if c.get("level") != "ok"]

    def lines(self, tz: object | None = None) -> list[str]:
        when = ""
        if self.send_at is not None:
            local = self.send_at.astimezone(tz) if tz is not None else self.send_at  # type: ignore[arg-type]
            when = f"; send at {local:%a %d %b %Y %H:%M %Z} ({self.send_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC)"
        return [
            f"issue {self.number} ({self.status}){when}",
            f"subject: {self.subject}",
            f"{self.articles} articles + {self.headlines} headlines, {self.listings} listings, "
            f"HTML {self.html_bytes / 1024:.1f} KB (Gmail clips at 102 KB)",
        ]


def preview_url(settings: Settings) -> str:
    return f"{settings.publication.public_url}/admin/draft"


def summarize(settings: Settings, row: IssueRow) -> Summary:
    issue = issue_of(row) if row.content else None
    return Summary(
        number=row.number, status=row.status, subject=row.subject,
        articles=len(issue.articles) if issue else 0, headlines=len(issue.headlines) if issue else 0,
        listings=len(issue.listings) if issue else 0, html_bytes=row.html_bytes or 0,
        checks=list(row.checks or []), send_at=row.send_at, preview_url=preview_url(settings),
        note=row.note or "",
    )



def issue_of(row: IssueRow) -> Issue:
    return Issue.from_json(row.content)


def recipients(session: Session, list_slug: str) -> list[Subscriber]:
    mlist = lifecycle.configured_list(session, list_slug)
    return list(session.scalars(select(Subscriber).join(Membership).where(
        Membership.list_id == mlist.id, Membership.status == MembershipStatus.ACTIVE).order_by(Subscriber.id)))


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
         now: datetime | None = None, require_approval: bool = False,
         on_sending: Callable[[int], None] | None = None, join: bool = False) -> SendOutcome:
    """Send the issue in progress (resuming one being sent), or build the next one and send it.
    `join`: only help send an issue that is already being sent (never start or build one): another send
    worker. `on_sending` is called with the issue's number once it is sending (snapshotted), while this
    process delivers (`digest send --workers N` starts its other workers there)."""
    transport = transport or make_transport(settings)  # a missing key fails here, before anything changes
    factory = session_factory(settings.database_url)
    with factory() as session:
        hold_send_start(session)  # several senders starting at once: one picks or builds the issue
        row = open_issue(session)
        if join and (row is None or row.status != IssueStatus.SENDING):
            session.rollback()
            return SendOutcome(None, row, "no issue is being sent: nothing to join")
        newest = newest_issue(session)
        if row is None and newest is not None and newest.status == IssueStatus.HELD:
            return SendOutcome(None, newest, f"issue {newest.number} is held: approve it (`digest approve "
                                             f"{newest.number}`) to send it, or skip it")
        if row is None or row.status == IssueStatus.DRAFT:
            if require_approval and row is not None:
                return SendOutcome(None, row, f"issue {row.number} is a draft, not approved: not sent")
            if row is None:
                draft = build_draft(settings, session, now=now)
                row = draft.row
            if not issue_of(row).articles:
                session.rollback()
                return SendOutcome(None, None, "nothing new to send since the last issue: not sent")
        if row.status != IssueStatus.SENDING:
            start_sending(session, row)
            if row.status == IssueStatus.DRAFT:  # sent without an editor's approval: `digest send` approves it
                move(row, IssueStatus.APPROVED, by="digest send")
        mlist = lifecycle.configured_list(session, row.list_slug)
        session.commit()
        issue_id, list_id, issue = row.id, mlist.id, issue_of(row)
        clicked = appeal_clickers(session, settings, row.number)  # one query per send, not per reader
    editions = Editions(settings, issue, appeal_clicked=clicked)
    report = deliver(factory, settings, issue_id, transport, editions,
                     list_id=list_id, progress=progress, on_sending=on_sending)
    with factory() as session:
        row = session.get(IssueRow, issue_id)
    return SendOutcome(report, row, "sent" if report.ok else "finished with problems", editions.renders)


def send_test(settings: Settings, to: str, *, transport: Transport | None = None) -> str:
    """A test copy of the current draft to one address; nothing is recorded as sent."""
    address = lifecycle.normalize(to)
    factory = session_factory(settings.database_url)
    with factory() as session:
        row = current_issue(session) or build_draft(settings, session).row
        session.commit()
        issue = issue_of(row)
        mlist = lifecycle.configured_list(session, row.list_slug)
        sub = lifecycle.find(session, address.email)
        session.commit()
        sid, name, list_id = (sub.id, sub.name, mlist.id) if sub else (0, "", mlist.id)
    editions = Editions(settings, issue)
    values, headers = Personalizer(settings).for_reader(sid, list_id, name, list_slug=row.list_slug,
                                                        issue_number=row.number)
    message = Message(0, sid, row.id, row.number, address.email, name, editions.get(editions.key(sub)),
                      values, headers)
    message = Message(**{**message.__dict__, "edition": _test_edition(message.edition)})
    outcome = send_outside_ledger(settings, [message], transport)[0]
    if not outcome.ok:
        raise DigestError(f"test send to {address.email} failed: {outcome.error}")
    return f"test copy of issue {row.number} sent to {address.email}"


def _test_edition(rendered):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(rendered, subject=f"[TEST] {rendered.subject}")
