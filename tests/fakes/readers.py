"""Seeding readers quickly for delivery tests: bulk inserts, not one lifecycle call per reader.

Tests of consent go through `subscribers.lifecycle`; delivery tests need thousands of active readers
in a fraction of a second, so they write the rows the lifecycle would have written, in bulk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.store import Delivery, SendBatch, session_factory, utcnow
from subscribers.lifecycle import ensure_list
from subscribers.models import Membership, Subscriber


def seed_readers(settings: Settings, n: int, *, domain: str = "example.com", status: str = "active",
                 list_slug: str | None = None) -> list[str]:
    """n new readers of the digest's list (active by default); returns their addresses in id order."""
    now = utcnow()
    with session_factory(settings.database_url)() as s:
        list_id = ensure_list(s, list_slug or settings.delivery.list).id
        start = (s.scalar(select(func.max(Subscriber.id))) or 0) + 1
        emails = [f"reader{i}@{domain}" for i in range(start, start + n)]
        for chunk in range(0, n, 5000):
            ids = range(start + chunk, start + min(n, chunk + 5000))
            s.execute(insert(Subscriber), [{"id": i, "email": f"reader{i}@{domain}", "email_key": f"reader{i}@{domain}",
                                            "name": f"Reader {i}", "attributes": {}, "categories": [],
                                            "created_at": now} for i in ids])
            s.execute(insert(Membership), [{"subscriber_id": i, "list_id": list_id, "status": status,
                                            "created_at": now, "updated_at": now, "confirmed_at": now} for i in ids])
        s.commit()
    return emails


def set_keys(folder: Path, section: str, **values: object) -> None:
    """Set keys of one [section] in folder/digest.toml (replacing a key's line, or adding it)."""
    path = folder / "digest.toml"
    lines = path.read_text().splitlines()
    start = lines.index(f"[{section}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for key, value in values.items():
        text = f"{key} = {json.dumps(value)}"
        found = [i for i in range(start + 1, end) if re.match(rf"{re.escape(key)}\s*=", lines[i])]
        if found:
            lines[found[0]] = text
        else:
            lines.insert(end, text)
            end += 1
    path.write_text("\n".join(lines) + "\n")


def sending_issue(settings: Settings) -> int:
    """Issue 1 drafted and moved to sending, its send not begun: its id, for driving `deliver` directly."""
    from digest.issues import build_draft, start_sending

    with session_factory(settings.database_url)() as s:
        issue = build_draft(settings, s).row
        start_sending(s, issue)
        s.commit()
        return issue.id


def odd_even_editions() -> Callable[[Any], Any]:
    """Two one-line editions, one for odd reader ids and one for even: each claim becomes two requests."""
    from digest.render import Rendered

    odd = Rendered("Issue 1", "", "<p>odd %%GREETING%%</p>", "odd", [], "odd")
    even = Rendered("Issue 1", "", "<p>even %%GREETING%%</p>", "even", [], "even")
    return lambda r: odd if r.id % 2 else even


def scheduled_of(session: Session, issue_id: int) -> dict[str, tuple[str | None, datetime | None]]:
    """Each reader's provider batch and send moment as the ledger holds them: the row's own, else its claimed
    batch's (migration 0015_batch_schedule)."""
    rows = session.execute(
        select(Delivery.email, func.coalesce(Delivery.provider_batch, SendBatch.provider_batch),
               func.coalesce(Delivery.send_at, SendBatch.send_at))
        .select_from(Delivery).outerjoin(SendBatch, SendBatch.batch == Delivery.batch)
        .where(Delivery.issue_id == issue_id))
    return {email: (batch, at) for email, batch, at in rows}
