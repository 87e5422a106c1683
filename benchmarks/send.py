"""Benchmark: one issue to N readers through the SendGrid transport, against the local contract server.

    /work/venv/bin/python benchmarks/send.py                 # N = 10,000 and 100,000
    /work/venv/bin/python benchmarks/send.py -n 100000 --concurrency 8
    /work/venv/bin/python benchmarks/send.py -n 100000 --no-heap --repeat 5   # five pairs, the median ratio
    /work/venv/bin/python benchmarks/send.py -n 100000 --postgresql --workers 1 --workers 2
    /work/venv/bin/python benchmarks/send.py -n 100000 --postgresql --repeat 5   # five sends, a baseline between each
    /work/venv/bin/python benchmarks/send.py -n 100000 -n 300000 --postgresql --repeat 3   # and the marginal per reader
    /work/venv/bin/python benchmarks/send.py --postgresql --callgrind -n 5000 -n 15000   # instructions, three processes

With --postgresql (a throwaway server started as tests/pgserver.py does) or --database-url (the admin URL
of a PostgreSQL server), each run gets a fresh database there; --workers N runs `digest send --workers N`
(N processes sharing the issue) and reports its wall time, Python start-up included. It also reports each
run's CPU time (the sender's processes, PostgreSQL's, the contract server's) and, given two sizes, the
marginal cost of one reader between them (medians), where start-up cancels. With --callgrind it counts instructions
instead: the sender's, the PostgreSQL backends' that served it, and the contract server's (`callgrind_postgresql`).

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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.callgrind import instructions, print_marginal  # noqa: E402
from benchmarks.installed import as_installed  # noqa: E402

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
    # one-click unsubscribe needs an https public_url (RFC 8058); the sample's is a local http one
    text = text.replace('public_url = "http://127.0.0.1:8000"', 'public_url = "https://news.example.com"')
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


def postgres_cpu(pid: int | None) -> float:
    """CPU seconds a PostgreSQL server has used so far: its postmaster, the processes running now (backends,
    background writers) and the ones that exited, counted in the postmaster's children's times (proc(5),
    /proc/PID/stat fields 14-17). 0 without a pid (a server this benchmark did not start)."""
    if pid is None:
        return 0.0
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ticks = 0
    for i, each in enumerate([pid, *map(int, children)]):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile: counted in the postmaster's children's times
            continue
        ticks += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if i == 0 else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's children that have exited (each waited for), start-up included."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


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


# -- the baseline: the least a correct sender must do, written here with the standard library alone ---------


def baseline(config: str, url: str, concurrency: int) -> None:
    """A minimal correct sender, in its own process as `digest send` is: reads the issue and the active
    readers of the list from the same database (the SQLite file, or with psycopg the PostgreSQL database
    $DIGEST_DATABASE_URL names, as --postgresql runs set it), signs one HMAC-SHA256 token per reader (its unsubscribe
    and preferences links), builds mail/send bodies of up to 1,000 personalizations (to, substitutions,
    the RFC 8058 one-click List-Unsubscribe headers, custom_args), the shared part encoded once, and POSTs
    them over `concurrency` keep-alive connections to the same contract server. No ledger: it is the floor
    of the CPU a sender needs, not a sender that can be stopped and resumed."""
    import base64
    import hashlib
    import hmac
    import http.client
    import queue
    import sqlite3
    import threading
    import tomllib
    from urllib.parse import urlsplit

    t0, c0 = time.perf_counter(), time.process_time()
    cfg = tomllib.loads(Path(config).read_text(encoding="utf-8"))
    pub = cfg["publication"]
    pg_url = os.environ.get("DIGEST_DATABASE_URL", "")
    if pg_url.startswith("postgresql"):
        import psycopg

        db: Any = psycopg.connect(pg_url.replace("+psycopg", "", 1))
        mark = "%s"
    else:
        db, mark = sqlite3.connect(str(Path(config).parent / "digest.db")), "?"
    issue_id, number, subject, html, text = db.execute(
        "SELECT id, number, subject, html, text FROM issues ORDER BY number DESC LIMIT 1").fetchone()
    list_id = db.execute(f"SELECT id FROM lists WHERE slug = {mark}", (cfg["delivery"]["list"],)).fetchone()[0]
    key = hashlib.sha256(os.environ["DIGEST_SECRET_KEY"].encode()).digest()
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    shared = json.dumps({"from": {"email": pub["from_email"], "name": pub["from_name"]},
                         "reply_to": {"email": pub["reply_to"]}, "subject": subject,
                         "content": [{"type": "text/plain", "value": text}, {"type": "text/html", "value": html}],
                         "categories": [pub["name"], f"{pub['name']} issue {number}"]},
                        ensure_ascii=False, separators=(",", ":"))
    post = {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    mailto = f"<mailto:{pub['reply_to']}?subject=unsubscribe>"
    public = pub["public_url"]
    bodies: queue.Queue[bytes | None] = queue.Queue(maxsize=concurrency * 2)
    errors: list[str] = []
    parts = urlsplit(url)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)  # one keep-alive connection
        while (body := bodies.get()) is not None:
            conn.request("POST", "/v3/mail/send", body, headers)
            answer = conn.getresponse()
            detail = answer.read()
            if answer.status != 202:
                errors.append(f"mail/send answered {answer.status}: {detail[:300]!r}")
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    rows = db.execute("SELECT s.id, s.email, s.name FROM subscribers s JOIN memberships m ON m.subscriber_id = s.id "
                      f"WHERE m.list_id = {mark} AND m.status = 'active' ORDER BY s.id", (list_id,))
    sent = 0
    while batch := rows.fetchmany(1000):
        people = []
        for sid, email, name in batch:
            value = f"{sid:x}.{list_id:x}".encode()
            mac = keyed.copy()
            mac.update(value)
            token = f"{value.decode()}.{base64.urlsafe_b64encode(mac.digest()).rstrip(b'=').decode()}"
            unsubscribe = f"{public}/u/{token}"
            greeting = f"Hi {name}," if name else "Hello,"
            people.append({"to": [{"email": email, "name": name}] if name else [{"email": email}],
                           "substitutions": {"%%GREETING%%": greeting, "%%GREETING_HTML%%": greeting,
                                             "%%UNSUBSCRIBE_URL%%": unsubscribe,
                                             "%%PREFERENCES_URL%%": f"{public}/p/{token}"},
                           "headers": {"List-Unsubscribe": f"<{unsubscribe}>, {mailto}", **post},
                           "custom_args": {"digest_issue": str(issue_id), "digest_subscriber": str(sid),
                                           "digest_list": str(list_id)}})
        body = f'{{"personalizations":{json.dumps(people, separators=(",", ":"))},{shared[1:]}'
        bodies.put(body.encode("utf-8"))
        sent += len(batch)
    for _ in threads:
        bodies.put(None)
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if errors:
        raise SystemExit(f"baseline: {len(errors)} request(s) refused, first: {errors[0]}")
    print(json.dumps({"wall": wall, "cpu": cpu, "base_kb": 0, "peak_kb": peak_kb(), "heap_peak": 0,
                      "submitted": sent, "failed": 0}))


def start_server(callgrind: Path | None = None) -> tuple[subprocess.Popen[str], str]:
    """The contract server in its own process (under callgrind, writing `callgrind` when stopped by
    `stop_server`); its URL."""
    wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}"] if callgrind else []
    proc = subprocess.Popen([*wrapper, sys.executable, "-m", "tests.fakes.sendgrid_server", "--key", KEY], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL if callgrind else None)  # valgrind's own lines
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def stop_server(proc: subprocess.Popen[str], graceful: bool) -> None:
    """Kill the server, or (`graceful`, under callgrind) close its stdin, on which it stops and exits."""
    if graceful and proc.stdin is not None:
        proc.stdin.close()
        proc.wait(timeout=300)
        return
    proc.kill()
    proc.wait()


def send_workers(n: int, concurrency: int, workers: int, admin_url: str, pg: int | None) -> dict[str, float]:
    """A fresh PostgreSQL database and folder, the server, then `digest send --workers N`: its wall time, and
    the CPU time of its processes and of the PostgreSQL server `pg` (its pid, when this benchmark started it)."""
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
                t0, c0, p0 = time.perf_counter(), children_cpu(), postgres_cpu(pg)
                out = subprocess.run([sys.executable, "-m", "digest", "send", "--workers", str(workers), "--config",
                                      str(config)], env=env, cwd=ROOT, capture_output=True, text=True, check=False)
                wall, cpu, pg_cpu = time.perf_counter() - t0, children_cpu() - c0, postgres_cpu(pg) - p0
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
            "requests": stats["accepted"], "max_in_flight": stats["max_in_flight"], "server_cpu": stats["cpu"],
            "process_cpu": cpu, "pg_cpu": pg_cpu}


def send_baseline(n: int, concurrency: int, admin_url: str, pg: int | None) -> dict[str, float]:
    """The baseline sender (see `baseline`) on a fresh PostgreSQL database seeded as for the workers, with
    the CPU time the PostgreSQL server `pg` used meanwhile (`send_workers`)."""
    from tests import pgserver

    name = pgserver.new_name()
    os.environ["DIGEST_DATABASE_URL"] = pgserver.create(admin_url, name)
    try:
        with seeded(n, concurrency) as config:
            p0 = postgres_cpu(pg)
            figures = measure(config, "baseline")
            return {**figures, "pg_cpu": postgres_cpu(pg) - p0}
    finally:
        os.environ.pop("DIGEST_DATABASE_URL", None)
        pgserver.drop(admin_url, name)


def run_workers(args: argparse.Namespace) -> None:
    from tests import pgserver

    server = pgserver.start() if args.postgresql else None
    admin = server.url if server is not None else args.database_url
    pg = server.process.pid if server is not None else None
    try:
        print(f"{'readers':>8} {'workers':>7} {'send s':>7} {'readers/s':>10} {'seed s':>7} {'requests':>8} "
              f"{'in flight':>9} {'cpu s':>6} {'pg cpu s':>8} {'server cpu s':>12}  load (1/5/15 min)")
        # per size, for the marginal cost between the smallest and the largest: the sends (of the first
        # --workers) and the baselines
        runs: dict[int, tuple[list[dict[str, float]], list[dict[str, float]]]] = {}
        for n in args.readers or [100_000]:
            ratios: dict[int, list[float]] = {w: [] for w in args.workers}
            cpu_ratios: dict[int, list[float]] = {w: [] for w in args.workers}
            runs[n] = ([], [])
            b = send_baseline(n, args.concurrency, admin, pg)
            _print_base(n, b, pg)
            runs[n][1].append(b)
            for _ in range(max(1, args.repeat)):
                for w in args.workers:
                    r = send_workers(n, args.concurrency, w, admin, pg)
                    # the baseline again after each send, and the send's ratio to the mean of the runs on either
                    # side of it: the baseline alone varied 1.4-2.4 s between runs of one session (issue 16)
                    a = send_baseline(n, args.concurrency, admin, pg)
                    _print_base(n, a, pg)
                    runs[n][1].append(a)
                    around = (b["process"] + a["process"]) / 2
                    ratios[w].append(r["wall"] / around)
                    # the CPU the three processes used (sender, PostgreSQL, contract server): on these two cores
                    # the wall time cannot fall below half of it, whatever runs at once
                    used = _cpu_used(r)
                    if w == args.workers[0]:
                        runs[n][0].append(r)
                    cpu_ratios[w].append(used / ((_cpu_used(b) + _cpu_used(a)) / 2))
                    print(f"{r['n']:>8} {r['workers']:>7} {r['wall']:>7.2f} {r['rate']:>10,.0f} {r['seed']:>7.1f} "
                          f"{r['requests']:>8} {r['max_in_flight']:>9} {r['process_cpu']:>6.2f} {_pg(r, pg):>8} "
                          f"{r['server_cpu']:>12.2f}  {load()}  (ratio to the baselines around it, {around:.2f} s: "
                          f"{ratios[w][-1]:.2f}x{_cpu_ratio(used, cpu_ratios[w][-1], pg)})", flush=True)
                    b = a
            for w, got in ratios.items():
                if len(got) > 1:
                    print(f"{n:>8} readers, --workers {w}, {len(got)} sends: ratio median "
                          f"{statistics.median(got):.2f}x, mean {statistics.fmean(got):.2f}x, "
                          f"{min(got):.2f}-{max(got):.2f}x"
                          + (f"; CPU ratio median {statistics.median(cpu_ratios[w]):.2f}x" if pg is not None else ""),
                          flush=True)
        if len(runs) > 1:
            _print_marginal(runs, args.workers[0], pg)
        print("send s: wall time of `digest send --workers N` (Python start-up, the issue's start, snapshot, "
              "claims, requests, marks, the other workers' start-up); every reader checked exactly once at the "
              "server. base: the minimal sender written in this file (`baseline`), reading the same PostgreSQL "
              "database with psycopg, start-up included; the ratio is send s over the mean of the baselines run just "
              "before and just after it. cpu s: the sender's processes, start-up included; pg cpu s: the PostgreSQL "
              "server's processes meanwhile (--postgresql only); the CPU ratio is the three processes' CPU over the "
              "baselines' (sender + PostgreSQL + contract server).")
    finally:
        if server is not None:
            server.stop()


def _print_marginal(runs: dict[int, tuple[list[dict[str, float]], list[dict[str, float]]]], workers: int,
                    pg: int | None) -> None:
    """The cost of one more reader, between the smallest and the largest size (medians of each): start-up and
    every other fixed cost cancel, as in the callgrind mode. A send's time is its whole command, as the
    baseline's `process` is."""
    small, large = min(runs), max(runs)

    def per_reader(side: int, figure: Callable[[dict[str, float]], float]) -> float:
        def median(n: int) -> float:
            return statistics.median(figure(run) for run in runs[n][side])
        return (median(large) - median(small)) / (large - small)

    send, base = per_reader(0, lambda r: r["wall"]), per_reader(1, lambda b: b["process"])
    line = (f"marginal per reader, {small:,} -> {large:,} readers (medians), --workers {workers}: send "
            f"{send * 1e6:.1f} µs, baseline {base * 1e6:.1f} µs: {send / base:.2f}x")
    if pg is not None:
        send_cpu, base_cpu = per_reader(0, _cpu_used), per_reader(1, _cpu_used)
        line += (f"; CPU of the three processes {send_cpu * 1e6:.1f} µs against {base_cpu * 1e6:.1f} µs: "
                 f"{send_cpu / base_cpu:.2f}x")
    print(line, flush=True)


def _cpu_used(run: dict[str, float]) -> float:
    """The three processes' CPU in a run (sender, PostgreSQL, contract server), the send's or a baseline's."""
    return run["process_cpu"] + run["pg_cpu"] + run["server_cpu"]


def _cpu_ratio(used: float, ratio: float, pg: int | None) -> str:
    return f"; CPU of the three processes {used:.2f} s: {ratio:.2f}x" if pg is not None else ""


def _pg(r: dict[str, float], pg: int | None) -> str:
    return f"{r['pg_cpu']:.2f}" if pg is not None else "-"


def _print_base(n: int, b: dict[str, float], pg: int | None) -> None:
    print(f"{n:>8} {'base':>7} {b['process']:>7.2f} {n / b['process']:>10,.0f} {'':>7} {b['server_accepted']:>8} "
          f"{b['server_max_in_flight']:>9} {b['process_cpu']:>6.2f} {_pg(b, pg):>8} {b['server_cpu']:>12.2f}  "
          f"{load()}  (baseline sender: {b['wall']:.2f} s without start-up)", flush=True)


def measure(config: Path, which: str, *, trace: bool = False, callgrind: Path | None = None,
            server_callgrind: Path | None = None) -> dict[str, float]:
    """One send of the seeded issue by `which` ("digest" or "baseline") in a child process, against a fresh
    contract server; the child's and the server's figures. Every reader exactly once, or it fails.
    `callgrind`, `server_callgrind`: count the child's, the server's instructions into these files."""
    n = int(config.with_name("readers").read_text())
    concurrency = int(config.with_name("concurrency").read_text())
    server, url = start_server(server_callgrind)
    try:
        env = {**os.environ, "DIGEST_SECRET_KEY": SECRET, "SENDGRID_API_KEY": KEY, "DIGEST_SENDGRID_API_URL": url,
               "BENCH_TRACE": "1" if trace else ""}
        argv = [sys.executable, __file__, "--child", str(config)] if which == "digest" else \
            [sys.executable, __file__, "--baseline", str(config), "--url", url, "--concurrency", str(concurrency)]
        if callgrind is not None:
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}", *argv]
        t0, c0 = time.perf_counter(), children_cpu()
        out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
        process_wall, process_cpu = time.perf_counter() - t0, children_cpu() - c0
        if out.returncode:
            raise SystemExit(f"the {which} send failed:\n{out.stderr}")
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        stats = json.loads(urllib.request.urlopen(f"{url}/_stats").read())
    finally:
        stop_server(server, graceful=server_callgrind is not None)
    assert stats["recipients"] == stats["unique"] == n == figures["submitted"], (which, stats, figures)
    return {**figures, "process": process_wall, "process_cpu": process_cpu,
            **{f"server_{k}": v for k, v in stats.items()}}


@contextlib.contextmanager
def seeded(n: int, concurrency: int) -> Iterator[Path]:
    """A fresh folder with n active readers and a built draft, used by both senders."""
    with tempfile.TemporaryDirectory() as tmp:
        config = seed(Path(tmp), n)
        if concurrency:
            config.write_text(config.read_text().replace("concurrency = 4", f"concurrency = {concurrency}"))
        config.with_name("readers").write_text(str(n))
        config.with_name("concurrency").write_text(str(concurrency or 4))
        yield config


def run(n: int, concurrency: int, heap: bool) -> dict[str, float]:
    with seeded(n, concurrency) as config:
        f = measure(config, "digest")
        b = measure(config, "baseline")
    heap_peak = 0.0
    if heap:
        with seeded(n, concurrency) as config:
            heap_peak = measure(config, "digest", trace=True)["heap_peak"]
    return {"n": n, "wall": f["wall"], "cpu": f["cpu"], "process": f["process"], "rate": n / f["wall"],
            "peak_mb": f["peak_kb"] / 1024, "growth_mb": (f["peak_kb"] - f["base_kb"]) / 1024,
            "heap_mb": heap_peak / 2**20, "requests": f["server_accepted"], "max_in_flight": f["server_max_in_flight"],
            "server_cpu": f["server_cpu"], "base_wall": b["wall"], "base_cpu": b["cpu"],
            "base_peak_mb": b["peak_kb"] / 1024}


def callgrind(sizes: list[int], concurrency: int) -> None:
    """Instructions of the whole send process, both senders, at two sizes: the difference over the
    difference in readers is the marginal cost of one reader, start-up and fixed costs cancelled, and an
    instruction count does not drift with the machine's load as a time does."""
    small, large = sorted(sizes)[:2] if len(sizes) >= 2 else (5_000, 15_000)
    counts: dict[tuple[str, int], int] = {}
    for n in (small, large):
        with seeded(n, concurrency) as config, tempfile.TemporaryDirectory() as out:
            for which in ("digest", "baseline"):
                path = Path(out) / f"{which}.out"
                measure(config, which, callgrind=path)
                counts[which, n] = instructions(path)
                print(f"  {which:<8} {n:>7} readers: {counts[which, n]:>15,} instructions", flush=True)
    print_marginal(counts, small, large, "reader", "1.3x")


def callgrind_postgresql(sizes: list[int], concurrency: int) -> None:
    """The callgrind mode on PostgreSQL: instructions of the three processes a send keeps busy (the sender,
    PostgreSQL's backends that served it, the contract server), both senders, at two sizes. PostgreSQL runs
    under callgrind too (its backends are forked, so each is counted in a file of its own); autovacuum is
    off and each database is vacuumed and analyzed after seeding, so no background work falls into a run.
    The server's long-lived processes (WAL writer, checkpointer, background writer) are not counted: they
    write their counts only when the server stops."""
    from digest.store import close_engines
    from tests import pgserver

    small, large = sorted(sizes)[:2] if len(sizes) >= 2 else (5_000, 15_000)
    with tempfile.TemporaryDirectory() as out:
        folder = Path(out)
        folder.chmod(0o777)  # postgres runs as `nobody` when this runs as root
        server = pgserver.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/pg.%p"],
                                ["autovacuum=off"])
        totals: dict[tuple[str, int], int] = {}
        try:
            pgserver.make_template(server.url)
            for n in (small, large):
                for which in ("digest", "baseline"):
                    name = pgserver.new_name()
                    url = pgserver.create(server.url, name, template=pgserver.TEMPLATE)
                    os.environ["DIGEST_DATABASE_URL"] = url
                    try:
                        with seeded(n, concurrency) as config:
                            close_engines()  # the seeding's connections: their backends end before the run
                            with contextlib.closing(_connect(url)) as db:
                                db.execute("VACUUM ANALYZE")
                            before = _settled(folder, server.url, name)
                            files = {p: folder / f"{p}-{which}-{n}.out" for p in ("sender", "server")}
                            measure(config, which, callgrind=files["sender"], server_callgrind=files["server"])
                            backends = _settled(folder, server.url, name) - before
                        counts = {"sender": instructions(files["sender"]), "server": instructions(files["server"]),
                                  "postgresql": sum(instructions(f) for f in backends)}
                    finally:
                        os.environ.pop("DIGEST_DATABASE_URL", None)
                        pgserver.drop(server.url, name)
                    totals[which, n] = sum(counts.values())
                    print(f"  {which:<8} {n:>7} readers: {totals[which, n]:>15,} instructions (sender "
                          f"{counts['sender']:,}, PostgreSQL {counts['postgresql']:,} in {len(backends)} "
                          f"backend(s), server {counts['server']:,})", flush=True)
        finally:
            server.stop()
    print_marginal(totals, small, large, "reader", "1.5x")


def _connect(url: str) -> Any:
    import psycopg

    from tests import pgserver

    return psycopg.connect(pgserver.libpq(url), autocommit=True)


def _settled(folder: Path, admin_url: str, name: str) -> set[Path]:
    """The backends' callgrind files once database `name` has no backend left and no file is being
    written (a backend writes its file as it exits). Asked over the one admin connection, which lives as
    long as the server: a connection opened here would add a backend's file of its own to the run."""
    from tests import pgserver

    while pgserver.connections(admin_url, name):
        time.sleep(0.1)
    sizes: dict[Path, int] = {}
    while True:
        now = {p: p.stat().st_size for p in folder.glob("pg.*")}
        if now == sizes:
            return set(now)
        sizes = now
        time.sleep(1.0)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description="SendGrid send benchmark (local contract server)")
    parser.add_argument("-n", "--readers", type=int, action="append", help="readers (repeatable)")
    parser.add_argument("--concurrency", type=int, default=0, help="requests in flight (default: the config's 4)")
    parser.add_argument("--no-heap", action="store_true", help="skip the tracemalloc run (a third send)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="pairs (send, baseline) per size, each on a fresh seed; prints the median ratio")
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions (valgrind) at two sizes (-n twice; default 5,000 and 15,000)")
    parser.add_argument("--workers", type=int, action="append", help="send workers on PostgreSQL (repeatable)")
    parser.add_argument("--postgresql", action="store_true", help="start a throwaway PostgreSQL server")
    parser.add_argument("--database-url", help="admin URL of a PostgreSQL server (a fresh database per run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if args.baseline:
        return baseline(args.baseline, args.url, args.concurrency)
    os.environ.setdefault("DIGEST_SECRET_KEY", SECRET)
    as_installed()
    if args.postgresql and args.callgrind:
        print(f"callgrind on PostgreSQL ({load()})")
        callgrind_postgresql(args.readers or [], args.concurrency)
        print(f"({load()} at the end)")
        return
    if args.postgresql or args.database_url:
        args.workers = args.workers or [1]
        return run_workers(args)
    if args.callgrind:
        print(f"callgrind ({load()})")
        callgrind(args.readers or [], args.concurrency)
        print(f"({load()} at the end)")
        return
    print(f"{'readers':>8} {'send s':>7} {'cpu s':>6} {'base s':>6} {'base cpu':>8} {'ratio':>6} {'cpu ratio':>9} "
          f"{'server cpu s':>12} {'process s':>9} {'readers/s':>10} {'peak RSS MB':>11} {'RSS growth MB':>13} "
          f"{'heap growth MB':>14} {'requests':>8} {'in flight':>9}")
    for n in args.readers or [10_000, 100_000]:
        ratios = []
        for _ in range(max(1, args.repeat)):  # pairs, each on a fresh seed: a send cannot be measured twice
            r = run(n, args.concurrency, heap=not args.no_heap)
            ratios.append(r["wall"] / r["base_wall"])
            print(f"{r['n']:>8} {r['wall']:>7.2f} {r['cpu']:>6.2f} {r['base_wall']:>6.2f} {r['base_cpu']:>8.2f} "
                  f"{r['wall'] / r['base_wall']:>5.2f}x {r['cpu'] / r['base_cpu']:>8.2f}x "
                  f"{r['server_cpu']:>12.2f} {r['process']:>9.2f} "
                  f"{r['rate']:>10,.0f} {r['peak_mb']:>11.1f} {r['growth_mb']:>13.1f} {r['heap_mb']:>14.1f} "
                  f"{r['requests']:>8} {r['max_in_flight']:>9}  ({load()})", flush=True)
        if len(ratios) > 1:
            print(f"{n:>8} readers, {len(ratios)} pairs: ratio median {statistics.median(ratios):.2f}x, mean "
                  f"{statistics.fmean(ratios):.2f}x, {min(ratios):.2f}-{max(ratios):.2f}x", flush=True)
    print("send s: wall time of issues.send (snapshot, claims, requests, marks); cpu s: the sender's CPU time; "
          "base s / base cpu: the same for the minimal sender written in this file (baseline), against the same "
          "server, same readers; ratio: send s / base s (the goal: 1.3x or less); process s: the whole `send` "
          "child, Python start-up included; RSS growth: peak resident memory during the send above the resident "
          "size before it; heap growth: Python allocations' peak during the send (tracemalloc, a separate run).")


if __name__ == "__main__":
    main()
