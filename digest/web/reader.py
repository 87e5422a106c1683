"""Reader pages (no login): subscribe, the signed confirm / unsubscribe / preferences links, the archive.

Every change goes through subscribers.optin (via digest.confirmations when an email goes out), and so
through lifecycle, which records the event; these routes only read the form, call it and show the answer.
The signed token in the URL is the whole authority of a link page, so a token can act on its own
subscriber only.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from digest import confirmations, issue_queries
from digest.config import Settings
from digest.errors import NotFound
from digest.sources.categories import known_categories
from digest.web.csrf import check_csrf
from digest.web.deps import client_ip, get_db, get_settings
from digest.web.numbers import IdConvertor  # noqa: F401 (registers the {name:id} path convertor used below)
from digest.web.pages import email_page, render
from subscribers import lifecycle, optin, zones
from subscribers.links import ReaderLinks
from subscribers.models import MailingList, MembershipStatus, Subscriber
from subscribers.names import NAME_MAX, InvalidName, checked_name
from subscribers.queries import list_choices, list_slugs, mailing_list_by_id, subscriber_by_id

router = APIRouter()

HONEYPOT = "website"
#: the preferences page runs one script of our own, /static/zone.js (the browser's zone as the default choice);
#: otherwise the site's policy (digest.web.app.CSP), which runs none
PREFERENCES_CSP = ("default-src 'self'; script-src 'self'; img-src * data:; style-src 'self' 'unsafe-inline' https:; "
                   "font-src 'self' https: data:; frame-src 'self'; frame-ancestors 'self'; form-action 'self'; "
                   "base-uri 'none'; object-src 'none'")


def directory_categories(request: Request) -> list[str]:
    """The directory's categories, the only ones a reader may choose (subscribers.categories)."""
    return list(known_categories(request.app.state.settings) or ())


@router.get("/")
def home() -> Response:
    return RedirectResponse("/issues", status_code=303)


@router.get("/subscribe")
def subscribe_form(request: Request) -> Response:
    return render(request, "subscribe.html", {"categories": directory_categories(request), "email": "",
                                              "name": "", "chosen": [], "error": ""})


@router.post("/subscribe", dependencies=[Depends(check_csrf)])
def subscribe(request: Request, settings: Annotated[Settings, Depends(get_settings)],
              db: Annotated[Session, Depends(get_db)], email: Annotated[str, Form()] = "",
              name: Annotated[str, Form()] = "", categories: Annotated[list[str] | None, Form()] = None,
              website: Annotated[str, Form()] = "") -> Response:
    email = email.strip()[:320]
    known = directory_categories(request)
    chosen = [c for c in categories or [] if c in known]
    try:
        name = checked_name(name)  # line breaks and control characters become spaces; too long: refused
    except InvalidName as e:  # refused whole: nothing is stored
        return render(request, "subscribe.html", {
            "categories": known, "email": email, "name": name[:NAME_MAX], "chosen": chosen,
            "error": f"Please shorten your name: {e}."}, status_code=422)
    if website:
        # the honeypot: a bot filled the field people cannot see; answer as if it worked, do nothing
        return render(request, "subscribe_sent.html", {"email": email})
    if not request.app.state.subscribe_limiter.hit(client_ip(request)):
        return render(request, "message.html", {
            "title": "Please wait a little",
            "message": "There have been too many sign-ups from your address. Please try again in a few minutes.",
        }, status_code=429)
    try:
        confirmations.request_confirmation(settings, db, email, name=name, list_slug=settings.delivery.list,
                                           categories=chosen, source="web form /subscribe", ip=client_ip(request))
        db.commit()
    except lifecycle.InvalidEmail:
        db.rollback()
        return render(request, "subscribe.html", {
            "categories": known, "email": email, "name": name, "chosen": chosen,
            "error": "That does not look like an email address. Please check it and try again."},
            status_code=422)
    except lifecycle.Suppressed:
        db.rollback()  # answered like any other address: the page never tells who is known
    return render(request, "subscribe_sent.html", {"email": email})


def _read(settings: Settings, db: Session, purpose: str, token: str) -> tuple[MailingList | None, Subscriber | None]:
    """Check a link before showing its page (raises TokenError for a bad one; nothing is changed)."""
    ref = ReaderLinks(settings).read(purpose, token)
    return mailing_list_by_id(db, ref.list_id), subscriber_by_id(db, ref.subscriber_id)


@router.get("/c/{token}")
def confirm_page(request: Request, token: str, settings: Annotated[Settings, Depends(get_settings)],
                 db: Annotated[Session, Depends(get_db)]) -> Response:
    """A button, not an action: mail scanners that open links must not confirm for the reader."""
    mlist, sub = _read(settings, db, "confirm", token)
    if sub is None or mlist is None:
        raise NotFound("this subscription no longer exists")
    return render(request, "confirm.html", {"token": token, "list": mlist})


@router.post("/c/{token}")
def confirm(request: Request, token: str, settings: Annotated[Settings, Depends(get_settings)],
            db: Annotated[Session, Depends(get_db)]) -> Response:
    member = optin.confirm_from_token(settings, db, token, ip=client_ip(request))
    db.commit()
    prefs = request.app.state.personalizer.preferences_url(member.subscriber_id, member.list_id)
    return render(request, "confirmed.html", {"list": member.mailing_list,
                                              "active": member.status == MembershipStatus.ACTIVE,
                                              "preferences_url": prefs})


@router.get("/u/{token}")
def unsubscribe_page(request: Request, token: str, settings: Annotated[Settings, Depends(get_settings)],
                     db: Annotated[Session, Depends(get_db)]) -> Response:
    mlist, sub = _read(settings, db, "unsubscribe", token)
    if sub is None or mlist is None:
        return render(request, "unsubscribed.html", {"list": mlist, "email": ""})
    return render(request, "unsubscribe.html", {"token": token, "list": mlist, "email": sub.email})


@router.post("/u/{token}")
def unsubscribe(request: Request, token: str, settings: Annotated[Settings, Depends(get_settings)],
                db: Annotated[Session, Depends(get_db)],
                one_click: Annotated[str, Form(alias="List-Unsubscribe")] = "") -> Response:
    """RFC 8058 one-click (a mail provider's POST: no cookie, no form token) and the page's button alike.

    The signed URL is the authority; the answer is 200 with no redirect, as RFC 8058 asks.
    """
    ref = ReaderLinks(settings).read("unsubscribe", token)
    sub = optin.unsubscribe_from_token(settings, db, token, ip=client_ip(request),
                                       source="one-click (RFC 8058)" if one_click == "One-Click" else "link")
    db.commit()
    return render(request, "unsubscribed.html", {"list": mailing_list_by_id(db, ref.list_id),
                                                 "email": sub.email})


def _preferences_context(request: Request, db: Session, sub: Subscriber, token: str, **extra: object) -> dict:
    known = directory_categories(request)
    return {"token": token, "subscriber": sub, "lists": list_choices(db, sub.id), "categories": known,
            "chosen": set(sub.categories or []), "joined": (MembershipStatus.PENDING, MembershipStatus.ACTIVE),
            "saved": False, "error": "", "zones": zones.zone_choices(), "zone": sub.timezone or "", **extra}


@router.get("/p/{token}")
def preferences_page(request: Request, token: str, settings: Annotated[Settings, Depends(get_settings)],
                     db: Annotated[Session, Depends(get_db)]) -> Response:
    sub, _mlist = optin.preferences_from_token(settings, db, token)
    return render(request, "preferences.html", _preferences_context(request, db, sub, token),
                  headers={"Content-Security-Policy": PREFERENCES_CSP})


@router.post("/p/{token}", dependencies=[Depends(check_csrf)])
def save_preferences(request: Request, token: str, settings: Annotated[Settings, Depends(get_settings)],
                     db: Annotated[Session, Depends(get_db)],
                     categories: Annotated[list[str] | None, Form()] = None,
                     lists: Annotated[list[str] | None, Form()] = None,
                     timezone: Annotated[str, Form()] = "") -> Response:
    sub, _mlist = optin.preferences_from_token(settings, db, token)
    try:
        zone = zones.parse_zone(timezone)
    except zones.InvalidZone as e:  # nothing saved: the form again, with the reason
        return render(request, "preferences.html", _preferences_context(request, db, sub, token, error=str(e)),
                      status_code=400, headers={"Content-Security-Policy": PREFERENCES_CSP})
    zones.set_zone(sub, zone)
    known = directory_categories(request)
    wanted = set(lists or [])
    choice = {slug: slug in wanted for slug in list_slugs(db)}
    confirmations.update_preferences(settings, db, sub, categories=[c for c in categories or [] if c in known],
                                     lists=choice, ip=client_ip(request))
    db.commit()
    db.refresh(sub)
    return render(request, "preferences.html", _preferences_context(request, db, sub, token, saved=True),
                  headers={"Content-Security-Policy": PREFERENCES_CSP})


@router.get("/unsubscribe")
def leave(request: Request) -> Response:
    """Where the archive copy's unsubscribe link lands: it carries no reader, so explain the way out."""
    return render(request, "leave.html")


@router.get("/issues")
def archive(request: Request, db: Annotated[Session, Depends(get_db)]) -> Response:
    return render(request, "archive.html", {"issues": issue_queries.archive(db)})


@router.get("/issues/{number:id}")
def archived_issue(request: Request, number: int, db: Annotated[Session, Depends(get_db)],
                   settings: Annotated[Settings, Depends(get_settings)]) -> Response:
    """The issue as readers saw it, with the reader-specific parts replaced by generic ones and the site's
    links at the current public_url, under the site's header."""
    return email_page(request, issue_queries.archived_html(db, number, settings.publication.public_url))
