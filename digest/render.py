"""Render: Jinja2 -> MJML -> HTML (mjml-python) and a plain-text part, once per issue edition.

Reader-specific parts are left as tokens (%%NAME%%) and filled per reader by `personalize`, a single
pass over the bytes: per-reader work is O(size of the message), never another template compile.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import lru_cache
from html import escape, unescape
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from digest.config import Settings, public_url_problem
from digest.models import Issue
from digest.resources import TEMPLATES
from digest.wording import plural
from subscribers.links import NO_READER, ReaderLinks

if TYPE_CHECKING:  # Jinja2 and mjml are imported by the first render: `digest send` renders once the
    # snapshot is being written (digest.deliver.loop._warm), not before its first statement (issue 16)
    import jinja2
    import jinja2.runtime

GMAIL_CLIP_BYTES = 102 * 1024
SUBJECT_MAX = 78

#: Reader tokens, the same names in the outbox, SMTP and SendGrid substitutions.
TOKENS = {
    "greeting": "%%GREETING%%",
    "greeting_html": "%%GREETING_HTML%%",
    "unsubscribe_url": "%%UNSUBSCRIBE_URL%%",
    "preferences_url": "%%PREFERENCES_URL%%",
    "click_url": "%%CLICK_URL%%",  # the reader's /r/<token> (delivery.click_redirect)
}
_TOKEN_RE = re.compile(r"%%[A-Z_]+%%")


@dataclass(frozen=True)
class Check:
    """One pre-send check shown to editors: level is ok, warn or fail."""

    name: str
    level: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "level": self.level, "message": self.message}


@dataclass(frozen=True)
class Rendered:
    """One compiled edition of an issue: shared by every reader who gets this edition."""

    subject: str
    preheader: str
    html: str
    text: str
    checks: list[Check] = field(default_factory=list)
    edition: str = "default"

    @property
    def html_bytes(self) -> int:
        return len(self.html.encode("utf-8"))


def longdate(value: datetime, tz: tzinfo | None = None) -> str:
    """"2 December 2026", on the calendar of `tz` (the publication's zone): a story published 09:00 on
    2 December in Sydney is 22:00 on 1 December in UTC, and the reader in Sydney expects the 2nd."""
    if tz is not None and value.tzinfo is not None:
        value = value.astimezone(tz)
    return f"{value.day} {value:%B %Y}"


def _longdate(context: jinja2.runtime.Context, value: datetime) -> str:
    """The template filter (given the render's context: `environment`): in the zone the render was given
    (`tz` in the context), else as stored."""
    tz = context.get("tz")
    return longdate(value, tz if isinstance(tz, tzinfo) else None)


def paragraphs(value: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", value or "") if p.strip()]


#: The text part's widest line: RFC 5322 §2.1.1 asks for 78; 76 keeps it inside RFC 2045's encoded-line
#: limit too, so a plain ASCII text part goes as 7bit, not quoted-printable.
TEXT_WIDTH = 76


def wrap(value: str, width: int = 72, indent: str = "", first: str | None = None) -> str:
    """Wrapped at `width` (at most TEXT_WIDTH), never breaking inside a word: "in-depth" stays whole (a
    hyphen is not a break point) and a long URL stays on its own line, unbroken, so it still works."""
    if not value:
        return ""
    width = min(width, TEXT_WIDTH)
    initial = indent if first is None else first
    if not initial and not indent and len(value) <= width and value.isprintable() and value == value.strip():
        # one line that fits, with no whitespace but single spaces (isprintable: no tab, no line break,
        # no other separator): textwrap would return it as it is; a send asks this once per reader
        return value
    return "\n".join(textwrap.wrap(value, width=width, initial_indent=initial, subsequent_indent=indent,
                                    break_on_hyphens=False, break_long_words=False))


@lru_cache(maxsize=4)
def environment(templates: Path = TEMPLATES) -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "mjml", "j2"),
                                            disabled_extensions=("txt.j2",), default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    env.filters.update(longdate=jinja2.pass_context(_longdate), paragraphs=paragraphs, wrap=wrap)
    return env


def _text_env(templates: Path = TEMPLATES) -> jinja2.Environment:
    env = environment(templates).overlay(autoescape=False)
    return env


def compile_mjml(template: str, context: Mapping[str, object], templates: Path = TEMPLATES) -> str:
    """Render an MJML Jinja2 template and compile it to HTML."""
    from mjml import mjml2html

    source = environment(templates).get_template(template).render(**context)
    return mjml2html(source, disable_comments=True)


def render_text(template: str, context: Mapping[str, object], templates: Path = TEMPLATES) -> str:
    text = _text_env(templates).get_template(template).render(**context)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def view_url(settings: Settings, number: int) -> str:
    return f"{settings.publication.public_url}/issues/{number}"


def render_issue(settings: Settings, issue: Issue, *, edition: str = "default",
                 templates: Path = TEMPLATES) -> Rendered:
    """Compile the issue once: HTML and text with reader tokens left in place."""
    top = issue.top
    context = {
        "publication": settings.publication, "issue": issue, "top": top,
        "rest": issue.articles[1:], "headlines": issue.headlines, "listings": issue.listings,
        "appeal": issue.appeal, "reader": TOKENS, "title": issue.subject, "preheader": issue.preheader,
        "issue_date": longdate(issue.date, settings.publication.tz), "tz": settings.publication.tz,
        "view_url": view_url(settings, issue.number), "sponsored_label": settings.sources.sponsored_label,
    }
    html = compile_mjml("email/digest.mjml.j2", context, templates)
    text = render_text("email/digest.txt.j2", context, templates)
    if tracks_clicks(settings):
        html, text = track_links(settings, issue, html, text)
    rendered = Rendered(issue.subject, issue.preheader, html, text, edition=edition)
    return Rendered(rendered.subject, rendered.preheader, html, text,
                    [*checks(issue, rendered), public_url_check(settings), *mailbox_check(settings)], edition)


def public_url_check(settings: Settings) -> Check:
    """The draft shows before the send what would stop it: a real transport needs an https public_url."""
    problem = public_url_problem(settings)
    url, transport = settings.publication.public_url, settings.delivery.transport
    if problem:
        return Check("public-url", "fail", problem.split(": ", 1)[1])
    if url.startswith("https://"):
        return Check("public-url", "ok", f"reader links use {url} (https)")
    if transport == "outbox":
        return Check("public-url", "ok", f"reader links use {url}: fine for the outbox; smtp or sendgrid need https")
    return Check("public-url", "warn", f"reader links use {url}, not https: allowed by delivery.allow_http_public_url "
                                       "(a test setup); one-click unsubscribe will not work in Gmail or Yahoo")


def mailbox_check(settings: Settings) -> list[Check]:
    """With an unsubscribe mailbox configured, whether List-Unsubscribe offers its mailto: (it needs the Inbound
    Parse secret too, or nothing would act on the mail; docs/delivery.md, "Unsubscribe by email")."""
    delivery = settings.delivery
    if not delivery.unsubscribe_mailbox:
        return []
    if delivery.inbound_secret:
        return [Check("unsubscribe-mailbox", "ok", f"List-Unsubscribe offers mailto: at {delivery.unsubscribe_mailbox} "
                                                   "(SendGrid Inbound Parse posts it to /webhooks/inbound/...)")]
    return [Check("unsubscribe-mailbox", "warn", f"${delivery.inbound_secret_env} holds no secret of 32 characters or "
                                                 f"more, so no mailto: is offered for {delivery.unsubscribe_mailbox}")]


def personalize(template: str, values: Mapping[str, str]) -> str:
    """Fill %%TOKENS%% in one pass; unknown tokens are left as they are."""
    return _TOKEN_RE.sub(lambda m: values.get(m.group(0), m.group(0)), template)


def public_values(settings: Settings) -> dict[str, str]:
    """Reader tokens filled for someone who is not a reader: the archive, previews (their click links
    redirect without recording anything)."""
    base = settings.publication.public_url
    return token_values("", f"{base}/unsubscribe", f"{base}/subscribe", f"{base}/r/{NO_READER}")


def token_values(name: str, unsubscribe_url: str, preferences_url: str, click_url: str = "") -> dict[str, str]:
    """The substitutions for one reader: the same dict feeds every transport."""
    greeting = f"Hi {name}," if name.strip() else "Hello,"
    return {
        TOKENS["greeting"]: wrap(greeting, TEXT_WIDTH),  # the text part's line; a long name wraps too
        TOKENS["greeting_html"]: escape(greeting),
        TOKENS["unsubscribe_url"]: unsubscribe_url,
        TOKENS["preferences_url"]: preferences_url,
        TOKENS["click_url"]: click_url,
    }


#: A name every reader token and address field carries exactly as it is: printable ASCII without the
#: characters HTML escapes (&<>"'), JSON escapes ("\\), or a display name may not hold (SendGrid's `to.name`:
#: no ";" or ","), no space at either end, and short enough that "Hi <name>," fits one text line (wrap
#: leaves it alone). A send fills such names from a template; any other name takes `token_values`.
_PLAIN_CHAR = r"\x21\x23-\x25\x28-\x2b\x2d-\x3a\x3d\x3f-\x5b\x5d-\x7e"  # printable ASCII less "&',;<>\\ and space
PLAIN_NAME = re.compile(rf"[{_PLAIN_CHAR}](?:[ {_PLAIN_CHAR}]{{0,{TEXT_WIDTH - len('Hi ,') - 2}}}[{_PLAIN_CHAR}])?")


def tracks_clicks(settings: Settings) -> bool:
    """Our own click redirect is on (delivery.click_redirect), and the transport does not track clicks itself."""
    return settings.delivery.click_redirect and settings.delivery.transport != "sendgrid"


_HREF = re.compile(r'href="([^"]*)"')


def track_links(settings: Settings, issue: Issue, html: str, text: str) -> tuple[str, str]:
    """The issue's own links (articles, listings, the appeal) in both parts rewritten to
    `%%CLICK_URL%%/<link MAC>?u=<target>`: the reader's token is filled per reader, the MAC once here.
    Other links (unsubscribe, preferences, the masthead) stay as they are."""
    links = ReaderLinks(settings)
    targets = sorted(set(issue_links(issue)), key=len, reverse=True)
    tracked = {url: f"{TOKENS['click_url']}/{links.link_mac(url)}?u={quote(url, safe='')}" for url in targets}

    def href(m: re.Match[str]) -> str:
        url = unescape(m.group(1))
        return f'href="{escape(tracked[url], quote=True)}"' if url in tracked else m.group(0)

    html = _HREF.sub(href, html)
    for url in targets:  # the text part prints each URL on its own: whole URLs only, the longest first
        new = tracked[url].replace("\\", "\\\\")
        text = re.sub(rf"(?<!\S){re.escape(url)}(?=[\s)>]|$)", new, text)
    return html, text


_IMG_TAG = re.compile(r"<img\b[^>]*>", re.I)
_ALT_ATTR = re.compile(r"\balt\s*=\s*\"([^\"]*)\"", re.I)


def checks(issue: Issue, rendered: Rendered) -> list[Check]:
    """The checks editors see on every draft: size, alt text, subject length, empty sections."""
    size = rendered.html_bytes
    out = [Check("size", "fail" if size >= GMAIL_CLIP_BYTES else "warn" if size > 0.8 * GMAIL_CLIP_BYTES else "ok",
                 f"HTML is {size / 1024:.1f} KB of Gmail's {GMAIL_CLIP_BYTES // 1024} KB clipping limit")]
    missing = [tag for tag in _IMG_TAG.findall(rendered.html)
               if not (m := _ALT_ATTR.search(tag)) or not m.group(1).strip()]
    out.append(Check("alt-text", "warn" if missing else "ok",
                     f"{plural(len(missing), 'image')} without alt text" if missing else "every image has alt text"))
    n = len(issue.subject)
    out.append(Check("subject", "warn" if n > SUBJECT_MAX else "ok",
                     f"subject is {n} characters" + (f" (over {SUBJECT_MAX})" if n > SUBJECT_MAX else "")))
    empty = [name for name, items in (("articles", issue.articles), ("listings", issue.listings)) if not items]
    if issue.appeal is None:
        empty.append("appeal")
    out.append(Check("sections", "warn" if empty else "ok",
                     f"empty section(s): {', '.join(empty)}" if empty else "every section has content"))
    return out


def check_links(urls: Iterable[str], *, timeout: float = 5.0, workers: int = 8) -> Check:
    """HEAD every distinct link (GET when HEAD is refused); any that do not answer are named."""
    import httpx  # here, not at the top: `digest send` renders but never checks links (issue 16, start-up)

    targets = sorted({u for u in urls if u.startswith(("http://", "https://"))})

    def probe(url: str) -> str | None:
        try:
            with httpx.Client(timeout=timeout, follow_redirects=True) as client:
                r = client.head(url)
                if r.status_code in (405, 501):
                    r = client.get(url)
                return None if r.status_code < 400 else f"{url} ({r.status_code})"
        except httpx.HTTPError as e:
            return f"{url} ({e.__class__.__name__})"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        broken = [b for b in pool.map(probe, targets) if b]
    if broken:
        return Check("links", "warn",
                     f"{len(broken)} of {plural(len(targets), 'link')} do not answer: " + "; ".join(broken))
    return Check("links", "ok", f"all {plural(len(targets), 'link')} answer")


def issue_links(issue: Issue) -> list[str]:
    links = [a.link for a in issue.all_articles] + [x.url for x in issue.listings]
    if issue.appeal:
        links.append(issue.appeal.url)
    return [u for u in links if u]
