"""Notices to the editors: a draft is ready for review, or the schedule held, skipped or missed an issue.

Sent through the configured transport (the same outbox / SMTP / SendGrid as the digest), one message per
editor, never through the deliveries ledger: editors are not readers and a notice is not an issue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from digest.config import Settings
from digest.deliver import send_outside_ledger
from digest.deliver.protocol import Message, Transport
from digest.issues import Summary
from digest.moments import local_and_utc
from digest.render import Rendered, compile_mjml, render_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    """What to tell the editors: a headline, a few sentences, the issue's summary and what they can do."""

    kind: str  # draft | held | skipped | missed | failed
    headline: str
    message: tuple[str, ...] = ()
    summary: Summary | None = None
    actions: tuple[str, ...] = ()


def render_notice(settings: Settings, notice: Notice) -> Rendered:
    """The notice compiled once (MJML -> HTML, and text) and shared by every editor."""
    send_local, send_utc = ("", "")
    if notice.summary is not None and notice.summary.send_at is not None:
        send_local, send_utc = local_and_utc(settings, notice.summary.send_at)
    subject = f"[{settings.publication.name}] {notice.headline}"
    context = {
        "publication": settings.publication, "title": subject, "preheader": notice.headline,
        "headline": notice.headline, "message": list(notice.message), "summary": notice.summary,
        "send_local": send_local, "send_utc": send_utc, "actions": list(notice.actions),
        "preview_url": f"{settings.publication.public_url}/admin/draft",
    }
    html = compile_mjml("email/editor_notice.mjml.j2", context)
    text = render_text("email/editor_notice.txt.j2", context)
    return Rendered(subject, notice.headline, html, text, edition=f"notice-{notice.kind}")


def notify_editors(settings: Settings, notice: Notice, *, transport: Transport | None = None) -> list[str]:
    """Email the notice to every editor in `[schedule] editors`. Returns the problems (logged, not raised):
    a notice that cannot be sent must not stop the draft or the send it is about."""
    editors = settings.schedule.editors
    if not editors:
        log.warning("no [schedule] editors configured: notice %r not sent", notice.headline)
        return ["no editors configured"]
    edition = render_notice(settings, notice)
    number = notice.summary.number if notice.summary else 0
    messages = [Message(0, 0, 0, number, editor, "", edition, {}, {}) for editor in editors]
    problems: list[str] = []
    try:
        for outcome, message in zip(send_outside_ledger(settings, messages, transport), messages, strict=True):
            if not outcome.ok:
                problems.append(f"notice to {message.to_email} failed: {outcome.error}")
    except Exception as e:  # a broken transport is reported with the notice, never fatal to the job
        problems.append(f"notice not sent ({e.__class__.__name__}: {e})")
    for problem in problems:
        log.error("%s", problem)
    if not problems:
        log.info("notice %r sent to %d editor(s)", notice.headline, len(editors))
    return problems
