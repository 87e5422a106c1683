"""Our own click redirect, `/r/<reader token>/<link MAC>?u=<target>` (delivery.click_redirect, off by
default): records the click (digest.deliver.clicks) and redirects with 302 Found (RFC 9110 §15.4.3).

Only URLs we signed into an issue are followed (the MAC), so this is no open redirect. The reader part is
checked but never blocks the reader: an expired, damaged or anonymous (`-`, the archive) token still
reaches the target, and records nothing. Nothing about the request (IP, browser) is stored.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.deliver.clicks import record_click
from digest.errors import NotFound
from digest.web.deps import get_db, get_settings
from subscribers.links import NO_READER, ReaderLinks, TokenError

router = APIRouter()


@router.get("/r/{token}/{mac}")
def follow(token: str, mac: str, settings: Annotated[Settings, Depends(get_settings)],
           db: Annotated[Session, Depends(get_db)], u: str = "") -> Response:
    links = ReaderLinks(settings)
    if not u.startswith(("https://", "http://")) or not links.link_ok(u, mac):
        raise NotFound("this link is not valid (it may have been changed or cut short)")
    if token != NO_READER:
        try:
            ref = links.read("click", token)
        except TokenError:
            ref = None  # the reader still gets where they were going; the click is not counted
        if ref is not None and record_click(db, ref.list_id, ref.subscriber_id, u):
            db.commit()
    return RedirectResponse(u, status_code=302, headers={"Cache-Control": "no-store"})
