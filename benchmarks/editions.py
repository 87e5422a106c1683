"""Editions at scale: 10,000 readers with a handful of preference sets, print subscribers and recent
appeal clickers. Prints how many renders the send needed and what the per-reader edition key costs.

    /work/venv/bin/python benchmarks/editions.py [--readers 10000] [--folder /tmp/digest-bench]

Two measures on a real SQLite file:
1. the editions alone: the key of every reader (as the send loop calls it) and the renders it causes;
2. a whole send through the real ledger loop (`deliver`) with a transport that discards the messages,
   so the figure is the pipeline's own cost (claiming, editions, personalisation), not a provider's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.config import load_settings  # noqa: E402
from digest.deliver.loop import deliver  # noqa: E402
from digest.deliver.protocol import Message, Outcome  # noqa: E402
from digest.demo import init  # noqa: E402
from digest.editions import Editions, appeal_clickers  # noqa: E402
from digest.issues import build_draft, issue_of, start_sending  # noqa: E402
from digest.store import DeliveryEvent, IssueRow, migrate, session_factory, utcnow  # noqa: E402
from subscribers import lifecycle  # noqa: E402
from subscribers.models import Membership, MembershipStatus, Subscriber  # noqa: E402

#: (share of readers, categories): most readers have none, a handful of sets cover the rest
PREFERENCES = [(0.55, []), (0.12, ["Aquatics"]), (0.10, ["Fitness", "Venues"]), (0.08, ["Attractions"]),
               (0.06, ["Sport", "Events"]), (0.05, ["Parks", "Recreation"]), (0.04, ["Golf"])]
PRINT_EVERY, CLICK_EVERY = 9, 25


class DiscardTransport:
    """Accepts every message and keeps nothing but a count (the provider is not what is measured)."""

    name, batch_size, concurrency = "discard", 500, 1

    def __init__(self) -> None:
        self.sent = 0

    def send(self, messages: list[Message]) -> list[Outcome]:
        self.sent += len(messages)
        return [Outcome(m.delivery_id, True, message_id=f"<{m.delivery_id}@bench>") for m in messages]

    def close(self) -> None:
        pass


def populate(settings, readers: int) -> None:  # type: ignore[no-untyped-def]
    factory = session_factory(settings.database_url)
    with factory() as s:
        mlist = lifecycle.ensure_list(s, settings.delivery.list)
        now = utcnow()
        rows, cursor = [], 0
        for share, cats in PREFERENCES:
            for _ in range(round(share * readers)):
                if len(rows) < readers:
                    rows.append((cats, cursor))
                    cursor += 1
        while len(rows) < readers:
            rows.append(([], len(rows)))
        s.execute(insert(Subscriber), [
            {"email": f"reader{i}@example.com", "email_key": f"reader{i}@example.com", "name": f"Reader {i}",
             "attributes": {"print_subscriber": i % PRINT_EVERY == 0}, "categories": cats, "created_at": now}
            for cats, i in rows])
        ids = list(s.scalars(select(Subscriber.id).order_by(Subscriber.id)))
        s.execute(insert(Membership), [{"subscriber_id": sid, "list_id": mlist.id, "status": MembershipStatus.ACTIVE,
                                        "created_at": now, "updated_at": now, "confirmed_at": now} for sid in ids])
        previous = IssueRow(number=1, subject="#1", content={}, status="sent", sent_at=now - timedelta(days=20),
                            created_at=now - timedelta(days=21))
        s.add(previous)
        s.flush()
        s.execute(insert(DeliveryEvent), [
            {"provider_event_id": f"click-{sid}", "issue_id": previous.id, "subscriber_id": sid, "kind": "click",
             "url": settings.appeal.url + "?utm_source=digest", "at": now, "payload": {}}
            for sid in ids[::CLICK_EVERY]])
        s.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=10_000)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("DIGEST_SECRET_KEY", "benchmark-secret-0123456789abcdef")
    folder = args.folder or Path(tempfile.mkdtemp(prefix="digest-bench-"))
    if folder.exists():
        shutil.rmtree(folder)
    init(folder)
    settings = load_settings(folder / "digest.toml")
    migrate(settings.database_url)
    populate(settings, args.readers)
    factory = session_factory(settings.database_url)

    with factory() as s:
        draft = build_draft(settings, s)
        start_sending(s, draft.row)
        mlist = lifecycle.ensure_list(s, settings.delivery.list)
        s.commit()
        issue_id, list_id, issue = draft.row.id, mlist.id, issue_of(draft.row)
        t = time.perf_counter()
        clicked = appeal_clickers(s, settings, issue.number)
        clickers_ms = (time.perf_counter() - t) * 1000
        readers = s.execute(select(Subscriber.id, Subscriber.attributes, Subscriber.categories)
                            .order_by(Subscriber.id)).all()

    # 1. the editions alone
    editions = Editions(settings, issue, appeal_clicked=clicked)
    key_times, keys = [], Counter()
    t_all = time.perf_counter()
    for r in readers:
        t = time.perf_counter()
        key = editions.key(r)
        key_times.append(time.perf_counter() - t)
        keys[key] += 1
        editions.get(key)
    total = time.perf_counter() - t_all
    render_s = total - sum(key_times)
    print(f"readers: {len(readers):,}; preference sets: {len(PREFERENCES)}; print subscribers: "
          f"{sum(1 for r in readers if r.attributes.get('print_subscriber')):,}; appeal clickers: {len(clicked):,} "
          f"(found by one query in {clickers_ms:.1f} ms)")
    print(f"editions: {editions.renders} renders for {len(readers):,} readers "
          f"(distinct keys {len(keys)}; largest edition {keys.most_common(1)[0][1]:,} readers)")
    print(f"key(): mean {statistics.mean(key_times) * 1e6:.1f} µs, p99 "
          f"{sorted(key_times)[int(len(key_times) * 0.99)] * 1e6:.1f} µs, total {sum(key_times) * 1000:.0f} ms; "
          f"renders {render_s:.2f} s ({render_s / max(1, editions.renders) * 1000:.0f} ms each); "
          f"all {total:.2f} s")

    # 2. a whole send through the ledger loop
    sending = Editions(settings, issue, appeal_clicked=clicked)
    transport = DiscardTransport()
    t = time.perf_counter()
    report = deliver(factory, settings, issue_id, transport, sending, list_id=list_id)
    elapsed = time.perf_counter() - t
    print(f"send through deliver(): {report.submitted:,} submitted, {sending.renders} renders, {elapsed:.2f} s "
          f"({report.submitted / elapsed:,.0f} readers/s)")
    if not args.folder:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
