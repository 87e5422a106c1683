"""Issue 17, point 17: an archived issue (/issues/N) is a page of the site, the site's header above the
email and the email in the main landmark, while the email keeps its own styles (fast; the browser check
with axe-core is in tests/test_accessibility.py)."""

from __future__ import annotations

import re

import pytest

from digest import issues
from digest.store import session_scope
from subscribers import lifecycle
from tests.test_web_support import app_fixture, client_fixture  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_an_archived_issue_sits_in_the_site_header_and_a_main_landmark(client, settings):
    with session_scope(settings.database_url) as s:
        lifecycle.subscribe(s, "ann@example.com", source="test", confirmed=True, list_slug=settings.delivery.list)
    assert issues.send(settings).report.submitted == 1
    page = client.get("/issues/1")
    assert page.status_code == 200
    html = page.text
    head, body = html.split("</head>", 1)
    # the email's own document: its styles stay; the site's header styles come from their own file, not
    # site.css (whose table rules would restyle the email)
    assert "<style" in head and '/static/header.css' in head and "/static/site.css" not in html
    assert head.count("<title>") == 1
    # right after <body>: the header, then one main landmark holding the whole email up to </body>
    opened = re.search(r"<body[^>]*>\s*<header class=\"site\">", body)
    assert opened, body[:300]
    assert body.count("<main") == 1 and body.count("</main>") == 1
    inside = body.split('<main id="main">', 1)[1].split("</main>", 1)[0]
    assert "Asking a small favour" in inside and "Unsubscribe" in inside
    assert re.fullmatch(r"\s*</body>\s*</html>\s*", body.split("</main>", 1)[1]), body[-200:]
    header = body.split("</header>", 1)[0]
    assert 'href="/issues"' in header and 'href="/subscribe"' in header
    assert client.get("/static/header.css").status_code == 200


def test_the_site_pages_use_the_same_header_stylesheet(client):
    page = client.get("/subscribe").text
    assert '/static/site.css' in page and '/static/header.css' in page
    assert '<a href="/issues">Archive</a>' in page
