"""The email itself, as every transport carries it: line limits (RFC 2045 §6.7, RFC 5322 §2.1.1), the list's
headers (RFC 2919 List-Id, Precedence, Feedback-ID), dates in the publication's zone, https reader links for
real sends, dark mode, image heights, the text part's width and the paid tier's label."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from digest.config import Settings, load_settings
from digest.errors import ConfigError
from digest.issues import build_draft, send
from digest.models import Appeal, Article, Issue, Listing
from digest.moments import in_zone, stamp
from digest.render import render_issue
from digest.store import IssueRow, migrate, session_factory
from subscribers import lifecycle
from tests.conftest import run_cli
from tests.fakes.readers import set_keys
from tests.fakes.sendgrid_server import SendGridServer, copy_headers
from tests.fakes.smtp_server import SMTPServer

KEY = "SG.test-key-for-the-message"
QP_MAX, LINE_MAX, TEXT_MAX = 76, 998, 78
#: A text-part line may run past TEXT_MAX only when it is nothing but a URL (kept whole so it still works).
URL_ONLY = re.compile(r"^\s*https?://\S+$")
#: A long name and address: the To header is the longest the readers make.
LONG_NAME = "Maximiliane Alexandra Konstantinopoulou-Vanderbilt-Featherstonehaugh the Third of Her Name"


def _readers(settings: Settings) -> None:
    with session_factory(settings.database_url)() as s:
        lifecycle.subscribe(s, "ann@example.com", name="Ann", source="test", confirmed=True)
        lifecycle.subscribe(s, "max.konstantinopoulou-vanderbilt@long-domain-name.example.org", name=LONG_NAME,
                            source="test", confirmed=True)
        s.commit()


def check_raw_message(raw: bytes) -> EmailMessage:
    """Every line of the message within 998 (headers folded), every quoted-printable line within 76."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    too_long = [len(line) for line in lines if len(line) > LINE_MAX]
    assert not too_long, f"lines over {LINE_MAX}: {too_long}"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    qp_parts = 0
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part["Content-Transfer-Encoding"] == "quoted-printable":
            qp_parts += 1
            body = part.get_payload(decode=False)
            assert isinstance(body, str)
            wide = [line for line in body.replace("\r\n", "\n").split("\n") if len(line) > QP_MAX]
            assert not wide, f"{part.get_content_type()}: {len(wide)} quoted-printable line(s) over {QP_MAX}"
    assert qp_parts >= 1, "the HTML part is quoted-printable"
    check_list_headers({k: str(v) for k, v in msg.items()})
    text = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    check_text(text.get_content())
    return msg


def check_list_headers(headers: dict[str, str]) -> None:
    assert headers["List-Id"] == "Leisure Industry Weekly - weekly <weekly.news.example.com>"
    assert headers["Precedence"] == "bulk"
    issue, list_, publication, sender = headers["Feedback-ID"].split(":")
    assert issue.isdigit() and list_ == "weekly" and publication == "leisure-industry-weekly"
    assert sender == "news-example-com"


def check_text(text: str) -> None:
    wide = [line for line in text.splitlines() if len(line) > TEXT_MAX and not URL_ONLY.match(line)]
    assert not wide, f"text lines over {TEXT_MAX}: {wide}"


def test_outbox_messages_keep_every_line_limit(settings: Settings, workdir: Path) -> None:
    _readers(settings)
    outcome = send(settings)
    assert outcome.report is not None and outcome.report.submitted == 2
    files = sorted((workdir / "outbox").glob("*.eml"))
    assert len(files) == 2
    for path in files:
        msg = check_raw_message(path.read_bytes())
        assert msg["To"]  # the long display name survives folding
    long_to = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["To"] for p in files]
    assert any(LONG_NAME in str(to) for to in long_to)


def test_what_the_smtp_server_receives_keeps_every_line_limit(workdir: Path) -> None:
    with SMTPServer() as server:
        set_keys(workdir, "delivery", transport="smtp", allow_http_public_url=True)  # a local test setup
        set_keys(workdir, "delivery.smtp", host="127.0.0.1", port=server.port, security="none")
        settings = load_settings(workdir / "digest.toml")
        migrate(settings.database_url)
        _readers(settings)
        outcome = send(settings)
        received = list(server.recorder.received)
    assert outcome.report is not None and outcome.report.submitted == 2
    assert len(received) == 2
    for item in received:
        assert b"\r\n" in item.data or b"\n" in item.data
        check_raw_message(item.data)


def test_the_sendgrid_request_keeps_every_line_limit(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SendGridServer(KEY) as server:
        set_keys(workdir, "delivery", transport="sendgrid", allow_http_public_url=True)  # a local test setup
        monkeypatch.setenv("SENDGRID_API_KEY", KEY)
        monkeypatch.setenv("DIGEST_SENDGRID_API_URL", server.url)
        settings = load_settings(workdir / "digest.toml")
        migrate(settings.database_url)
        _readers(settings)
        outcome = send(settings)
        received = list(server.received)
    assert outcome.report is not None and outcome.report.submitted == 2
    (request,) = received
    payload = request.payload
    assert payload is not None
    # SendGrid writes the MIME itself (and its quoted-printable); what we give it must fit unfolded:
    # each header a single line within RFC 5322's 998, the text part within 78
    for p in payload["personalizations"]:
        headers = copy_headers(payload, p)
        for name, value in headers.items():
            assert len(f"{name}: {value}") <= LINE_MAX, name
        check_list_headers(headers)
    assert len(f"Subject: {payload['subject']}") <= LINE_MAX
    (text,) = [c["value"] for c in payload["content"] if c["type"] == "text/plain"]
    check_text(text)


# --- dates in the publication's zone ------------------------------------------------------------------

def _issue(**overrides: object) -> Issue:
    sydney_morning = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)  # 09:00 on 2 December in Sydney (AEDT)
    top = Article("k1", "Council approves the new aquatic centre", "https://example.com/a1", sydney_morning,
                  summary="An in-depth look at what the council approved, why it took eighteen months, and what "
                          "operators in the region should expect as the build gets under way next year.")
    more = [Article(f"h{i}", f"Headline number {i} about a fairly long and descriptive story in mixed Case",
                    f"https://example.com/h{i}", sydney_morning) for i in range(3)]
    listings = [Listing("Paid Pools Pty Ltd", "https://example.com/paid", "Pool builders.", ("Aquatics",),
                        tier="featured"),
                Listing("Editorial Gyms", "https://example.com/free", "Gym fit-outs.", ("Fitness",))]
    appeal = Appeal("main", "Asking a small favour", "Please tell a colleague about us.", "Share", "https://x.example")
    values: dict[str, object] = dict(number=7, subject="Issue 7", preheader="This week", date=sydney_morning,
                                     articles=[top, *more[:1]], headlines=more[1:], listings=listings, appeal=appeal)
    values.update(overrides)
    return Issue(**values)  # type: ignore[arg-type]


def _sydney(workdir: Path) -> Settings:
    set_keys(workdir, "publication", timezone="Australia/Sydney")
    return load_settings(workdir / "digest.toml")


def test_dates_in_the_email_and_text_are_on_the_publications_calendar(workdir: Path) -> None:
    rendered = render_issue(_sydney(workdir), _issue())
    for part in (rendered.html, rendered.text):
        assert "2 December 2026" in part
        assert "1 December 2026" not in part, "a date in UTC, a day early for Sydney"


def test_dates_on_pages_and_in_the_cli_name_the_zone(workdir: Path) -> None:
    settings = _sydney(workdir)
    moment = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    assert stamp(settings, moment) == "2026-12-02 09:00 AEDT"
    assert in_zone(moment, settings.publication.tz) == "2026-12-02 09:00 AEDT"
    assert stamp(settings, None) == ""


# --- https for real sends -------------------------------------------------------------------------------

def test_a_real_send_with_an_http_public_url_stops_before_anything_changes(workdir: Path) -> None:
    set_keys(workdir, "delivery", transport="smtp")
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    _readers(settings)
    with pytest.raises(ConfigError) as err:
        send(settings)
    message = str(err.value)
    assert "\n" not in message
    assert "publication.public_url 'http://127.0.0.1:8000' is not https" in message
    assert "delivery.allow_http_public_url" in message
    with session_factory(settings.database_url)() as s:
        assert s.scalar(select(IssueRow)) is None, "nothing was drafted or claimed"


def test_the_draft_checks_show_the_public_url_problem(workdir: Path) -> None:
    set_keys(workdir, "delivery", transport="sendgrid")
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    with session_factory(settings.database_url)() as s:
        draft = build_draft(settings, s)
        s.commit()
    (check,) = [c for c in draft.checks if c.name == "public-url"]
    assert check.level == "fail" and "not https" in check.message

    set_keys(workdir, "delivery", allow_http_public_url=True)
    allowed = render_issue(load_settings(workdir / "digest.toml"), _issue())
    (check,) = [c for c in allowed.checks if c.name == "public-url"]
    assert check.level == "warn" and "allow_http_public_url" in check.message

    set_keys(workdir, "publication", public_url="https://news.example.com")
    secure = render_issue(load_settings(workdir / "digest.toml"), _issue())
    assert [c.level for c in secure.checks if c.name == "public-url"] == ["ok"]


@pytest.mark.slow  # the real command in a subprocess
def test_send_with_an_http_public_url_is_one_line_and_exit_2(workdir: Path) -> None:
    set_keys(workdir, "delivery", transport="smtp")
    result = run_cli("send", cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not https" in lines[0], result.stderr


# --- what the HTML and the text look like ----------------------------------------------------------------

def test_dark_mode_image_heights_and_the_editors_case(settings: Settings) -> None:
    issue = _issue(articles=[_issue().articles[0].__class__(**{**_issue().articles[0].__dict__,
                                                               "image": "https://example.com/top.jpg"})])
    html = render_issue(settings, issue).html
    assert '<meta name="color-scheme" content="light dark"' in html
    assert '<meta name="supported-color-schemes" content="light dark"' in html
    assert "@media (prefers-color-scheme: dark)" in html
    dark = html.split("@media (prefers-color-scheme: dark)", 1)[1].split("</style>", 1)[0]
    assert re.search(r"\.page div > a[^{]*\{ color: #8ab4f8 !important; \}", dark), "links readable on dark"
    assert "[" not in dark, "class and element selectors only: Gmail and Outlook.com drop attribute selectors"
    for surface, colour in (("card", "#ffffff"), ("soft", "#f8f9fa"), ("favour", "#fff6e0")):
        assert f'class="{surface}" style="background:{colour};' in html
        rule = rf"\.{surface}, \.{surface} > table \{{ background-color: #[0-9a-f]{{6}} !important; \}}"
        assert re.search(rule, dark), f"{surface} stays light in dark mode"
    buttons = re.findall(r"<td[^>]*><a [^>]*background:#[0-9a-f]{6}[^>]*>", html)
    assert buttons, "button links sit directly in a td, out of the `div > a` link rule, and keep their colours"
    imgs = re.findall(r"<img\b[^>]*>", html)
    assert imgs and all(re.search(r'\bheight="\d+"', tag) for tag in imgs), imgs
    assert 'height="auto"' not in html
    assert "Headline number 1 about a fairly long and descriptive story in mixed Case" in html
    assert "HEADLINE NUMBER" not in html
    assert "text-transform:uppercase" not in re.sub(r"\s", "", html.split("More news")[1].split("</table>")[0])


def test_the_text_part_is_within_78_and_never_splits_a_hyphenated_word(settings: Settings) -> None:
    text = render_issue(settings, _issue()).text
    check_text(text)
    assert "in-depth" in text, "in-depth split at its hyphen"
    assert not any(line.rstrip().endswith("in-") for line in text.splitlines())


def test_paid_listings_carry_the_sponsored_label_and_editorial_ones_do_not(settings: Settings,
                                                                            workdir: Path) -> None:
    rendered = render_issue(settings, _issue())
    html, text = rendered.html, rendered.text
    paid, free = html.index("Paid Pools Pty Ltd"), html.index("Editorial Gyms")
    assert html.count("Sponsored") == 1 and paid - 600 < html.index("Sponsored") < paid
    assert "Sponsored" not in html[paid:free + 600].split("Editorial Gyms")[1][:600]
    assert text.count("[Sponsored]") == 1
    assert text.index("Paid Pools Pty Ltd") < text.index("[Sponsored]") < text.index("Editorial Gyms")

    set_keys(workdir, "sources", sponsored_label="Paid partner")
    relabelled = render_issue(load_settings(workdir / "digest.toml"), _issue())
    assert "Paid partner" in relabelled.html and "[Paid partner]" in relabelled.text
    assert "Sponsored" not in relabelled.html


def test_the_confirmation_text_is_within_78_too(settings: Settings) -> None:
    from digest.confirmations import confirmation_edition
    from subscribers.models import MailingList

    long_list = MailingList(slug="print", name="Leisure Industry Weekly print edition and quarterly supplement")
    rendered = confirmation_edition(settings, long_list)
    check_text(rendered.text)
    assert 'press "Yes, subscribe me" to confirm:' in " ".join(rendered.text.split())
    assert "Leisure Industry Weekly print edition and quarterly supplement email" in " ".join(rendered.text.split())


@pytest.mark.slow  # the real command in a subprocess
def test_the_cli_prints_times_in_the_publications_zone_and_names_it(workdir: Path) -> None:
    settings = _sydney(workdir)
    migrate(settings.database_url)
    _readers(settings)
    shown = run_cli("subscribers", "show", "ann@example.com", cwd=workdir, env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d AE[DS]T;", shown.stdout), shown.stdout
    assert "History (Australia/Sydney):" in shown.stdout and " UTC" not in shown.stdout


def test_each_list_has_its_own_list_id_and_feedback_id(workdir: Path) -> None:
    from digest.deliver.personalizer import list_headers

    set_keys(workdir, "publication", name="Café Bäder: Wöchentlich", from_email="news@bäder.example")
    settings = load_settings(workdir / "digest.toml")
    weekly, print_ = list_headers(settings, "weekly", 3), list_headers(settings, "Print Edition", 3)
    assert weekly["List-Id"] == "Cafe Bader Wochentlich - weekly <weekly.xn--bder-loa.example>"
    assert print_["List-Id"] == "Cafe Bader Wochentlich - print-edition <print-edition.xn--bder-loa.example>"
    assert weekly["Feedback-ID"] == "3:weekly:cafe-bader-wochentlich:xn--bder-loa-example"
    assert all(v.isascii() for h in (weekly, print_) for v in h.values())
