"""Subscribers out as CSV, in the format the import reads (`subscribers.csv_import`): the two round-trip."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from typing import Any, TextIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.errors import DigestError
from subscribers import lifecycle
from subscribers.csv_read import COLUMNS
from subscribers.csv_safe import safe_row
from subscribers.models import MailingList, Membership, MembershipStatus, Subscriber


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def export_csv(session: Session, out: TextIO, *, list_slug: str | None = None, status: str | None = None,
               progress: Callable[[int, int], None] | None = None) -> int:
    """Write subscribers as CSV (one row per person, memberships in `lists`); returns the row count.

    With --list/--status only people with such a membership are written, and `lists` shows only
    the memberships that match, so the file re-imports to exactly that selection.
    """
    try:
        wanted = MembershipStatus.parse(status) if status is not None else None
    except ValueError as e:
        raise DigestError(str(e)) from None
    list_id = lifecycle.get_list(session, list_slug).id if list_slug else None
    conditions = []
    if list_id is not None:
        conditions.append(Membership.list_id == list_id)
    if wanted is not None:
        conditions.append(Membership.status == wanted)
    keys: set[str] = set()
    for attrs in session.scalars(select(Subscriber.attributes).execution_options(yield_per=5000)):
        keys.update(attrs or {})
    attribute_keys = sorted(keys, key=str.casefold)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(safe_row([*COLUMNS, *attribute_keys]))  # cells a spreadsheet would run are quoted (csv_safe)

    if conditions:
        chosen = select(Subscriber.id).join(Membership, Membership.subscriber_id == Subscriber.id).where(*conditions)
        total = session.scalar(select(func.count()).select_from(chosen.distinct().subquery())) or 0
        q = (select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.categories, Subscriber.created_at,
                    Subscriber.attributes, Subscriber.timezone, MailingList.slug, Membership.status)
             .join(Membership, Membership.subscriber_id == Subscriber.id)
             .join(MailingList, MailingList.id == Membership.list_id).where(*conditions))
    else:
        total = session.scalar(select(func.count(Subscriber.id))) or 0
        q = (select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.categories, Subscriber.created_at,
                    Subscriber.attributes, Subscriber.timezone, MailingList.slug, Membership.status)
             .outerjoin(Membership, Membership.subscriber_id == Subscriber.id)
             .outerjoin(MailingList, MailingList.id == Membership.list_id))
    q = q.order_by(Subscriber.id, MailingList.slug).execution_options(yield_per=5000)

    written = 0
    current: list[Any] | None = None
    memberships: list[str] = []

    def flush() -> None:
        nonlocal written
        if current is None:
            return
        _, email, name, cats, created, attrs, zone = current
        attrs = attrs or {}
        writer.writerow(safe_row([email, name, ";".join(memberships), " / ".join(cats or []),
                                  created.isoformat() if created else "", zone or "",
                                  *(_cell(attrs[k]) if k in attrs else "" for k in attribute_keys)]))
        written += 1
        if progress and written % 5000 == 0:
            progress(written, total)

    for sid, email, name, cats, created, attrs, zone, slug, mstatus in session.execute(q):
        if current is None or current[0] != sid:
            flush()
            current, memberships = [sid, email, name, cats, created, attrs, zone], []
        if slug is not None:
            memberships.append(f"{slug}:{mstatus}")
    flush()
    if progress:
        progress(written, total)
    return written

