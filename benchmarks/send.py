"""Benchmark: one issue to N readers through the SendGrid transport, against the local contract server.

    /work/venv/bin/python benchmarks/send.py                 # N = 10,000 and 100,000
    /work/venv/bin/python benchmarks/send.py -n 100000 --concurrency 8
    /work/venv/bin/python benchmarks/send.py -n 100000 --postgresql --workers 1 --workers 2

With --postgresql (a throwaway server started as tests/pgserver.py does) or --database-url (the admin URL
of a PostgreSQL server), each run gets a fresh database there; --workers N runs `digest send --workers N`
(N processes sharing the issue) and reports its wall time, Python start-up included.

For each N: a fresh folder and SQLite file, N active readers seeded in bulk, the draft built; the strict
mail/send server (tests/fakes/sendgrid_server.py) in its own process on loopback; then `issues.send` in a
child process, which reports its wall and CPU time and how far its peak RSS grew during the send (and,
in a second run under tracemalloc, its Python heap's peak growth). The server's counts are checked
afterwards: every reader exactly once. Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "SG.benchmark-key"
SECRET = "benchmark-secret-key-0123456789abcdef"


def seed(folder: Path, n: int) -> Path:  # the database: $DIGEST_DATABASE_URL when set
    """A digest folder whose list has n active readers, and a built draft."""
    from sqlalchemy import insert

    from digest.config import load_settings
    from digest.demo import init
    from digest.issues import build_draft
    from digest.store import migrate, session_factory, utcnow
    from subscribers.lifecycle import ensure_list
    from subscribers.models import Membership, Subscriber

    init(folder)
    config = folder / "digest.toml"
    text = config.read_text().replace('transport = "outbox"', 'transport = "sendgrid"')
    config.write_text(text)
    settings = load_settings(config)
    migrate(settings.database_url)
    now = utcnow()
    with session_factory(settings.database_url)() as s:
        list_id = ensure_list(s, settings.delivery.list).id
        for start in range(0, n, 10_000):
            ids = range(start + 1, min(n, start + 10_000) + 1)
            s.execute(insert(Subscriber), [{"id": i, "email": f"reader{i}@example.com",
                                            "email_key": f"reader{i}@example.com", "name": f"Reader {i}",
                                            "attributes": {}, "categories": [], "created_at": now} for i in ids])
            s.execute(insert(Membership), [{"subscriber_id": i, "list_id": list_id, "status": "active",
                                            "created_at": now, "updated_at": now, "confirmed_at": now}
                                           for i in ids])
        build_draft(settings, s)
        s.commit()
    return config


def peak_kb() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's, inherited)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak() -> int:
    """Start the peak afresh from the current resident size (Linux: clear_refs 5); returns it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return peak_kb()


def child(config: str) -> None:
    """Runs in its own process so its peak memory is the send's alone."""
    from digest.config import load_settings
    from digest.issues import send

    settings = load_settings(config)
    trace = os.environ.get("BENCH_TRACE") == "1"
    if trace:  # a separate run: tracemalloc slows the send down, so its time is not reported
        import tracemalloc

        tracemalloc.start()
    base = reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    outcome = send(settings)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = peak_kb()
    heap = tracemalloc.get_traced_memory()[1] if trace else 0
    r = outcome.report
    print(json.dumps({"wall": wall, "cpu": cpu, "base_kb": base, "peak_kb": peak, "heap_peak": heap,
                      "submitted": r.submitted if r else 0, "failed": r.failed if r else 0}))


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.sendgrid_server", "--key", KEY], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def send_workers(n: int, concurrency: int, workers: int, admin_url: str) -> dict[str, float]:
    """A fresh PostgreSQL database and folder, the server, then `digest send --workers N`: its wall time."""
    from tests import pgserver

    name = pgserver.new_name()
    os.environ["DIGEST_DATABASE_URL"] = pgserver.create(admin_url, name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            config = seed(Path(tmp), n)
            seeded = time.perf_counter() - t0
            text = config.read_text().replace("[delivery]\n", "[delivery]\nallow_http_public_url = true\n", 1)
            if concurrency:  # the command checks the public URL; the local server is http
                text = text.replace("concurrency = 4", f"concurrency = {concurrency}")
            config.write_text(text)
            server, url = start_server()
            try:
                env = {**os.environ, "DIGEST_SECRET_KEY": SECRET, "SENDGRID_API_KEY": KEY,
                       "DIGEST_SENDGRID_API_URL": url}
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "digest", "send", "--workers", str(workers), "--config",
                                      str(config)], env=env, cwd=ROOT, capture_output=True, text=True, check=False)
                wall = time.perf_counter() - t0
                if out.returncode:
                    raise SystemExit(f"the send failed:\n{out.stdout}\n{out.stderr}")
                stats = json.loads(urllib.request.urlopen(f"{url}/_stats").read())
            finally:
                server.kill()
                server.wait()
    finally:
        os.environ.pop("DIGEST_DATABASE_URL", None)
        pgserver.drop(admin_url, name)
    assert stats["recipients"] == stats["unique"] == n, stats
    return {"n": n, "workers": workers, "wall": wall, "seed": seeded, "rate": n / wall,
            "requests": stats["accepted"], "max_in_flight": stats["max_in_flight"], "server_cpu": stats["cpu"]}


def run_workers(args: argparse.Namespace) -> None:
    from tests import pgserver

    server = pgserver.start() if args.postgresql else None
    admin = server.url if server is not None else args.database_url
    try:
        print(f"{'readers':>8} {'workers':>7} {'send s':>7} {'readers/s':>10} {'seed s':>7} {'requests':>8} "
              f"{'in flight':>9} {'server cpu s':>12}  load (1/5/15 min)")
        for n in args.readers or [100_000]:
            for w in args.workers:
                r = send_workers(n, args.concurrency, w, admin)
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                print(f"{r['n']:>8} {r['workers']:>7} {r['wall']:>7.2f} {r['rate']:>10,.0f} {r['seed']:>7.1f} "
                      f"{r['requests']:>8} {r['max_in_flight']:>9} {r['server_cpu']:>12.2f}  {load}", flush=True)
        print("send s: wall time of `digest send --workers N` (Python start-up, the issue's start, snapshot, "
              "claims, requests, marks, the other workers' start-up); every reader checked exactly once at the "
              "server.")
    finally:
        if server is not None:
            server.stop()


def send_once(n: int, concurrency: int, *, trace: bool = False) -> dict[str, float]:
    """Seed a fresh folder, start the server, send from a child process; the child's and server's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        config = seed(Path(tmp), n)
        if concurrency:
            text = config.read_text().replace("concurrency = 4", f"concurrency = {concurrency}")
            config.write_text(text)
        server, url = start_server()
        try:
            env = {**os.environ, "DIGEST_SECRET_KEY": SECRET, "SENDGRID_API_KEY": KEY, "DIGEST_SENDGRID_API_URL": url,
                   "BENCH_TRACE": "1" if trace else ""}
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", str(config)], env=env, cwd=ROOT,
                                 capture_output=True, text=True, check=False)
            process_wall = time.perf_counter() - t0
            if out.returncode:
                raise SystemExit(f"the send failed:\n{out.stderr}")
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            stats = json.loads(urllib.request.urlopen(f"{url}/_stats").read())
        finally:
            server.kill()
            server.wait()
    assert stats["recipients"] == stats["unique"] == n == figures["submitted"], (stats, figures)
    return {**figures, "process": process_wall, **{f"server_{k}": v for k, v in stats.items()}}


def run(n: int, concurrency: int) -> dict[str, float]:
    f = send_once(n, concurrency)
    heap = send_once(n, concurrency, trace=True)["heap_peak"]
    return {"n": n, "wall": f["wall"], "cpu": f["cpu"], "process": f["process"], "rate": n / f["wall"],
            "peak_mb": f["peak_kb"] / 1024, "growth_mb": (f["peak_kb"] - f["base_kb"]) / 1024,
            "heap_mb": heap / 2**20, "requests": f["server_accepted"], "max_in_flight": f["server_max_in_flight"],
            "server_cpu": f["server_cpu"]}


def main() -> None:
    parser = argparse.ArgumentParser(description="SendGrid send benchmark (local contract server)")
    parser.add_argument("-n", "--readers", type=int, action="append", help="readers (repeatable)")
    parser.add_argument("--concurrency", type=int, default=0, help="requests in flight (default: the config's 4)")
    parser.add_argument("--workers", type=int, action="append", help="send workers on PostgreSQL (repeatable)")
    parser.add_argument("--postgresql", action="store_true", help="start a throwaway PostgreSQL server")
    parser.add_argument("--database-url", help="admin URL of a PostgreSQL server (a fresh database per run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    os.environ.setdefault("DIGEST_SECRET_KEY", SECRET)
    if args.postgresql or args.database_url:
        args.workers = args.workers or [1]
        return run_workers(args)
    print(f"{'readers':>8} {'send s':>7} {'cpu s':>6} {'server cpu s':>12} {'process s':>9} {'readers/s':>10} "
          f"{'peak RSS MB':>11} {'RSS growth MB':>13} {'heap growth MB':>14} {'requests':>8} {'in flight':>9}")
    for n in args.readers or [10_000, 100_000]:
        r = run(n, args.concurrency)
        print(f"{r['n']:>8} {r['wall']:>7.2f} {r['cpu']:>6.2f} {r['server_cpu']:>12.2f} {r['process']:>9.2f} "
              f"{r['rate']:>10,.0f} {r['peak_mb']:>11.1f} {r['growth_mb']:>13.1f} {r['heap_mb']:>14.1f} "
              f"{r['requests']:>8} {r['max_in_flight']:>9}", flush=True)
    print("send s: wall time of issues.send (snapshot, claims, requests, marks); cpu s: the sender's CPU time; "
          "process s: the whole `send` child, Python start-up included; RSS growth: peak resident memory during "
          "the send above the resident size before it; heap growth: Python allocations' peak during the send "
          "(tracemalloc, a separate run).")


if __name__ == "__main__":
    main()
