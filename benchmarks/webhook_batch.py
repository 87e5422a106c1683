"""A 20,000-event signed SendGrid batch through POST /webhooks/sendgrid, and readers' one-click
unsubscribes (RFC 8058) answered while it is applied (goal: under 200 ms), both through `digest serve`
(uvicorn, one process) as in production. Run by hand:

    .venv/bin/python benchmarks/webhook_batch.py                  # PostgreSQL (throwaway server) and SQLite
    .venv/bin/python benchmarks/webhook_batch.py --backend postgresql --events 20000

Baselines in the same run: the unsubscribe with no batch running (its ratio shows what the batch costs a
reader), and the batch's rows written by one bulk INSERT in one transaction (the floor for storing them;
the ratio is the price of checking, matching and chunking).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DIGEST_SECRET_KEY", "benchmark-secret-key-0123456789")

import httpx  # noqa: E402
from sqlalchemy import delete, func, insert, select  # noqa: E402

from benchmarks import pg  # noqa: E402
from digest.config import Settings, load_settings  # noqa: E402
from digest.deliver.events import CHUNK  # noqa: E402
from digest.demo import init  # noqa: E402
from digest.issues import send  # noqa: E402
from digest.store import DeliveryEvent, migrate, session_factory, utcnow  # noqa: E402
from subscribers.links import ReaderLinks  # noqa: E402
from subscribers.models import Membership  # noqa: E402
from tests.fakes.readers import seed_readers, set_keys  # noqa: E402
from tests.test_webhooks_sendgrid import Signer  # noqa: E402

READERS = 1_000
KINDS = ("processed", "delivered", "open", "click")


def batch(n: int, offset: int = 0) -> list[dict[str, Any]]:
    events = []
    for i in range(n):
        reader = 1 + (i // 4) % 900  # readers 901-1000 are the ones who unsubscribe meanwhile
        kind = KINDS[i % 4] if i % 400 else "bounce"
        events.append({"email": f"reader{reader}@example.com", "timestamp": 1_780_000_000 + i, "event": kind,
                       "sg_event_id": f"b{offset}-{i}", "sg_message_id": f"msg{reader}.filter", "digest_issue": "1",
                       "digest_subscriber": str(reader), "digest_list": "1", "type": "bounce"})
    return events


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]


def setup(folder: Path, url: str | None, signer: Signer) -> Settings:
    init(folder)
    if url:
        text = (folder / "digest.toml").read_text().replace('url = "sqlite:///digest.db"', f'url = "{url}"', 1)
        (folder / "digest.toml").write_text(text)
    set_keys(folder, "delivery.sendgrid", webhook_public_key=signer.public, webhook_max_age_seconds=600)
    settings = load_settings(folder / "digest.toml")
    migrate(settings.database_url)
    seed_readers(settings, READERS)
    outcome = send(settings)
    assert outcome.report is not None and outcome.report.submitted == READERS
    return settings


def run(backend: str, url: str | None, n: int) -> None:
    signer = Signer()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # the outbox is written next to digest.toml
        try:
            settings = setup(Path(tmp), url, signer)
            measure(backend, settings, signer, n, Path(tmp))
        finally:
            os.chdir(cwd)


def serve(folder: Path) -> tuple[subprocess.Popen[str], str]:
    """`digest serve` as in production (its own process: the benchmark's client shares no GIL with it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "digest", "serve", "--port", str(port)], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{base}/subscribe", timeout=2)
            return proc, base
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("digest serve did not start")
            time.sleep(0.2)


def measure(backend: str, settings: Settings, signer: Signer, n: int, folder: Path) -> None:
    links = ReaderLinks(settings)
    with session_factory(settings.database_url)() as s:
        list_id = s.scalar(select(Membership.list_id).limit(1))
    paths = [urlsplit(links.unsubscribe_url(r, list_id)).path for r in range(901, READERS + 1)]
    proc, base = serve(folder)
    try:
        client = httpx.Client(base_url=base, timeout=600)

        def unsubscribe(path: str) -> float:
            t0 = time.perf_counter()
            r = client.post(path, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
            assert r.status_code == 200, r.text[:200]
            return (time.perf_counter() - t0) * 1000

        quiet = [unsubscribe(p) for p in paths[:30]]  # baseline: nothing else running

        events = batch(n)
        body = json.dumps(events).encode()
        answer: dict[str, Any] = {}

        def post() -> None:
            t0 = time.perf_counter()
            r = httpx.post(f"{base}/webhooks/sendgrid", content=body, headers=signer.headers(body), timeout=600)
            answer.update(status=r.status_code, json=r.json(), seconds=time.perf_counter() - t0)

        worker = threading.Thread(target=post)
        worker.start()
        busy: list[float] = []
        for p in paths[30:]:
            if not worker.is_alive():
                break
            busy.append(unsubscribe(p))
            time.sleep(0.05)
        worker.join()
        assert answer["status"] == 200, answer
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

    # the floor: the same number of rows in one bulk INSERT, one transaction
    with session_factory(settings.database_url)() as s:
        s.execute(delete(DeliveryEvent))
        s.commit()
        now = utcnow()
        t0 = time.perf_counter()
        s.execute(insert(DeliveryEvent), [{"provider_event_id": f"floor-{i}", "kind": "open", "at": now,
                                           "payload": {"event": "open"}} for i in range(n)])
        s.commit()
        floor = time.perf_counter() - t0
        assert s.scalar(select(func.count()).select_from(DeliveryEvent)) == n

    result = answer["json"]
    print(f"\n[{backend}] {n:,} events, {len(body) / 1e6:.1f} MB, chunks of {CHUNK}, `digest serve`: answered "
          f"{answer['status']} in {answer['seconds']:.2f} s ({n / answer['seconds']:,.0f} events/s); "
          f"recorded {result['recorded']:,}, applied {result['applied']}")
    print(f"  baseline, one bulk INSERT of {n:,} rows in one transaction: {floor:.2f} s "
          f"(ratio {answer['seconds'] / floor:.1f}x)")
    print(f"  one-click unsubscribe, nothing running: median {statistics.median(quiet):.0f} ms, "
          f"p95 {pct(quiet, 0.95):.0f} ms (n={len(quiet)})")
    if busy:
        print(f"  one-click unsubscribe during the batch: median {statistics.median(busy):.0f} ms, "
              f"p95 {pct(busy, 0.95):.0f} ms, max {max(busy):.0f} ms (n={len(busy)}); "
              f"p95 ratio to nothing running {pct(busy, 0.95) / pct(quiet, 0.95):.1f}x (goal: under 200 ms)")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"  load average (1, 5, 15 min): {load} on {os.cpu_count()} cores")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--backend", choices=["postgresql", "sqlite", "both"], default="both")
    args = ap.parse_args()
    if args.backend in ("postgresql", "both"):
        with pg.database("bench_webhook") as url:
            run("postgresql", url, args.events)
    if args.backend in ("sqlite", "both"):
        run("sqlite", None, args.events)


if __name__ == "__main__":
    main()
