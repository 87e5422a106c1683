"""Render time of one issue and outbox delivery time for N readers (default 1,000).

Run by hand: `python benchmarks/pipeline.py [--readers 1000]`. Works in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from digest.config import load_settings
from digest.demo import init
from digest.editions import Editions
from digest.issues import build_draft, issue_of, send
from digest.render import render_issue
from digest.store import migrate, session_factory, utcnow
from subscribers import lifecycle
from subscribers.models import Membership, Subscriber


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--renders", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("DIGEST_SECRET_KEY", "benchmark-secret-key-0123456789")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        init(folder)
        settings = load_settings(folder / "digest.toml")
        migrate(settings.database_url)
        factory = session_factory(settings.database_url)
        with factory() as s:
            row = build_draft(settings, s).row
            issue = issue_of(row)
            mlist = lifecycle.ensure_list(s, "weekly")
            now = utcnow()
            s.execute(insert(Subscriber), [{"email": f"r{i}@example.com", "email_key": f"r{i}@example.com",
                                             "name": f"Reader {i}", "attributes": {}, "categories": [],
                                             "created_at": now} for i in range(args.readers)])
            ids = [i for (i,) in s.execute(Subscriber.__table__.select().with_only_columns(Subscriber.id))]
            s.execute(insert(Membership), [{"subscriber_id": i, "list_id": mlist.id, "status": "active",
                                             "created_at": now, "updated_at": now, "confirmed_at": now}
                                            for i in ids])
            s.commit()
        render_issue(settings, issue)  # warm the template cache
        times = []
        for _ in range(args.renders):
            t = time.perf_counter()
            rendered = render_issue(settings, issue)
            times.append(time.perf_counter() - t)
        print(f"render one issue (Jinja2 + MJML compile + text): median {statistics.median(times) * 1000:.1f} ms, "
              f"min {min(times) * 1000:.1f} ms over {args.renders} runs; HTML {rendered.html_bytes / 1024:.1f} KB")
        from mjml import mjml2html

        from digest.render import environment
        source = environment().get_template("email/digest.mjml.j2").render(
            publication=settings.publication, issue=issue, top=issue.top, rest=issue.articles[1:],
            headlines=issue.headlines, listings=issue.listings, appeal=issue.appeal,
            reader={k: k for k in ("greeting", "greeting_html", "unsubscribe_url", "preferences_url")},
            title="t", preheader="p", issue_date="d", view_url="v")
        t = time.perf_counter()
        for _ in range(args.renders):
            mjml2html(source, disable_comments=True)
        print(f"  of which mjml2html alone: {(time.perf_counter() - t) / args.renders * 1000:.2f} ms")
        t = time.perf_counter()
        outcome = send(settings)
        elapsed = time.perf_counter() - t
        n = outcome.report.submitted if outcome.report else 0
        files = len(list((folder / "outbox").glob("*.eml")))
        print(f"outbox delivery: {n} readers in {elapsed:.2f} s ({n / elapsed:,.0f} messages/s), {files} .eml files, "
              f"{Editions.__name__} renders: {outcome.editions}")


if __name__ == "__main__":
    main()
