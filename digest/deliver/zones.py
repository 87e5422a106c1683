"""Recall under local delivery when each zone's group is sent at its own moment (SMTP, outbox, SendGrid
without scheduling): the readers whose zone's moment is still ahead have been sent nothing, so a recall
keeps them from it. They stay queued, as SendGrid's recalled readers do (`digest.deliver.batches`): a fixed
issue, approved and sent again, reaches each of them once. The zones already due cannot be called back
(the email was handed over), and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from digest.config import Settings
from digest.deliver.ledger import SUBMITTED, counts, note_waiting, waiting_zones
from digest.errors import DeliveryError
from digest.issue_status import IssueStatus, move
from digest.locks import sender_of
from digest.store import IssueRow, utcnow
from digest.wording import plural


def zone_by_zone(settings: Settings) -> bool:
    """Local delivery sent at each zone's moment by the scheduler (not scheduled ahead at SendGrid): a recall
    keeps back the zones not yet due instead of cancelling provider batches."""
    sg = settings.delivery
    return settings.schedule.local_delivery and (sg.transport != "sendgrid" or not sg.sendgrid.schedule_ahead_minutes)


def recall_preview(session: Session, issue_id: int, now: datetime | None = None) -> list[tuple[str, datetime, int]]:
    """What a recall would keep back now: (zone, moment, readers) still waiting, earliest first."""
    return waiting_zones(session, issue_id, now or utcnow())


@dataclass
class ZoneRecall:
    number: int
    zones: list[tuple[str, datetime, int]] = field(default_factory=list)  # kept from it: zone, moment, readers
    already_sent: int = 0

    @property
    def recalled(self) -> int:
        return sum(n for _, _, n in self.zones)

    def lines(self) -> list[str]:
        out = [f"issue {self.number}: {plural(self.recalled, 'reader')} in {plural(len(self.zones), 'zone')} not "
               "yet due recalled: they get nothing and stay queued (not sent)"]
        out += [f"  recalled: {zone} ({plural(n, 'reader')}, due {at:%Y-%m-%d %H:%M} UTC)"
                for zone, at, n in self.zones]
        if self.already_sent:
            out.append(f"not recalled: {plural(self.already_sent, 'reader')} in zones already due (sent)")
        return out


def recall_waiting(session: Session, issue: IssueRow, *, by: str, now: datetime | None = None) -> ZoneRecall:
    """Keep the zones not yet due from the issue: the issue is recalled (by, when), its waiting readers stay
    queued with a note. Refused while a send of the issue is running, or when nobody is waiting."""
    holder = sender_of(session, issue.id)
    if holder is not None:
        raise DeliveryError(f"issue {issue.number} is being sent right now by {holder}: stop it (Ctrl-C), then "
                            "recall it")
    if issue.status != IssueStatus.SENDING:
        raise DeliveryError(f"issue {issue.number} is {issue.status}: only an issue whose zones are still being "
                            "sent can be recalled")
    now = now or utcnow()
    report = ZoneRecall(issue.number, waiting_zones(session, issue.id, now),
                        counts(session, issue.id).get(SUBMITTED, 0))
    if not report.zones:
        raise DeliveryError(f"issue {issue.number}: no reader is waiting for their zone's moment, so there is "
                            "nothing left to recall (the email was handed over)")
    note_waiting(session, issue.id, now, f"recalled by {by} at {now:%Y-%m-%d %H:%M} UTC before this zone's moment")
    move(issue, IssueStatus.RECALLED, now=now, by=by,
         note=f" by {by}: {report.recalled} reader(s) in zones not yet due recalled")
    session.commit()
    return report
