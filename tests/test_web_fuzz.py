"""No input answers 5xx (issue 17, point 14): schemathesis over the app's own OpenAPI schema.

The schema is built from the app itself (`app.openapi()`, the SendGrid webhook included: its route
describes its body for this), on an SQLite file database holding what the demo leaves (readers, issue 1
sent, issue 2 an open draft). Two runs: a visitor (no session: every generated value as it comes) and an
admin (a logged-in session, the session's valid CSRF token in every form, valid signed reader links in
/c/ /u/ /p/, SendGrid's signature on every event batch, and the Inbound Parse URL's secret with readers'
own unsubscribe addresses), so the generated data reaches the handlers
instead of stopping at the door. Positive and negative data; any 5xx fails, through schemathesis'
`not_a_server_error` check. The examples per operation are bounded to keep the run near a minute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from digest import issues
from digest.config import Settings, load_settings
from digest.store import migrate, session_factory
from digest.web.app import create_app
from subscribers.links import MailboxTokens, Tokens
from tests import test_webhooks_sendgrid as hooks
from tests.fakes.readers import seed_readers, set_keys
from tests.test_web_support import make_users

#: examples per operation and generation mode (36 operations x 2 modes); raise it locally for a deeper run
EXAMPLES = 8
SESSION_COOKIE = "digest_session"


INBOUND_SECRET = "fuzz-inbound-secret-0123456789abcdef"


def _demo_like(workdir: Path, signer: hooks.Signer) -> Settings:
    set_keys(workdir, "delivery.sendgrid", webhook_public_key=signer.public, webhook_max_age_seconds=300)
    set_keys(workdir, "delivery", unsubscribe_mailbox="unsubscribe@inbound.example.org")
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    make_users(settings)
    seed_readers(settings, 5)
    outcome = issues.send(settings)
    assert outcome.report is not None and outcome.report.submitted == 5
    with session_factory(settings.database_url)() as db:
        issues.build_draft(settings, db, by="test")
        db.commit()
    return settings


def _admin_session(app: Any) -> tuple[dict[str, str], str]:
    from fastapi.testclient import TestClient

    from tests.test_web_support import csrf, login

    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        login(client)
        token = csrf(client, "/admin/import")
        return {SESSION_COOKIE: client.cookies[SESSION_COOKIE]}, token


@pytest.mark.slow
@pytest.mark.parametrize("who", ["visitor", "admin"])
def test_no_generated_request_gets_a_server_error(workdir: Path, backend: str, who: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if backend != "sqlite":
        pytest.skip("the fuzz run is on an SQLite file; the regression tests of its causes run on both backends")
    monkeypatch.setenv("DIGEST_INBOUND_SECRET", INBOUND_SECRET)
    signer = hooks.Signer()
    settings = _demo_like(workdir, signer)
    mailbox = MailboxTokens(settings.secret_key, settings.delivery.unsubscribe_mailbox)
    app = create_app(settings)
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.app = app
    cookies, csrf_token = _admin_session(app) if who == "admin" else ({}, "")
    tokens = Tokens(settings.secret_key)
    links = {"/c/": tokens.make("confirm", 3, 1), "/u/": tokens.make("unsubscribe", 4, 1),
             "/p/": tokens.make("preferences", 5, 1)}
    failures: list[str] = []
    calls = 0
    reached: set[str] = set()  # operations that answered 2xx/3xx at least once

    def one(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        kwargs: dict[str, Any] = {"cookies": cookies}
        path = case.operation.path
        if who == "admin":
            prefix = path[:3]
            if prefix in links and case.path_parameters is not None:
                case.path_parameters["token"] = links[prefix]
            if path == "/webhooks/inbound/{secret}" and case.path_parameters is not None:
                case.path_parameters["secret"] = INBOUND_SECRET
                if isinstance(case.body, dict) and calls % 2:  # every other time a reader's own address
                    case.body = {**case.body, "to": mailbox.address(2 + calls % 4, 1)}
            if path == "/webhooks/sendgrid":
                body = json.dumps(case.body).encode() if not isinstance(case.body, bytes) else case.body
                kwargs["headers"] = signer.headers(body)
                kwargs["data"] = body
            elif case.method == "POST" and path not in ("/admin/import", "/webhooks/inbound/{secret}"):
                form = dict(case.body) if isinstance(case.body, dict) else {}
                if "number" in form and calls % 2:
                    form["number"] = "2"  # every other time the open draft's number, so the action runs
                kwargs["data"] = {**form, "csrf_token": csrf_token}
            elif case.method == "POST" and isinstance(case.body, dict):
                case.body = {**case.body, "csrf_token": csrf_token}
        response = case.call(**kwargs)
        if response.status_code < 400:
            reached.add(f"{case.method} {path}")
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except AssertionError as e:  # collected, so one run reports every operation that fails
            failures.append(f"{case.method} {path} -> {response.status_code}: {str(e)[:300]}")

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                                 phases=[Phase.explicit, Phase.generate],
                                 suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                one(case)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # an operation without parameters or body has nothing to make invalid
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert calls > 300, calls  # every operation ran
    assert failures == [], "\n".join(failures[:30])
    # the admin run gets past the door: its forms, links and webhook bodies are accepted, not just refused
    posts = {r for r in reached if r.startswith("POST")}
    print(f"{who}: {calls} requests, {len(reached)} operations answered 2xx/3xx, POST: {sorted(posts)}")
    if who == "admin":
        assert {"POST /admin/draft/adjust", "POST /admin/subscribers/{subscriber_id}/unsubscribe", "POST /u/{token}",
                "POST /p/{token}", "POST /webhooks/sendgrid", "POST /admin/draft/build",
                "POST /webhooks/inbound/{secret}"} <= posts, sorted(posts)
