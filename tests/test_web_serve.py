"""`digest serve` as a user runs it: the real command, uvicorn, a free port, the access log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import SECRET


@pytest.mark.slow
def test_digest_serve_answers_and_keeps_tokens_out_of_its_log(workdir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DIGEST_SECRET_KEY": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "digest", "serve", "--port", str(port)], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"{base}/subscribe", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "digest serve did not answer"
                time.sleep(0.2)
        assert r.status_code == 200 and "Subscribe" in r.text
        token = "MS4x.secret-token-part.signature"
        assert httpx.get(f"{base}/u/{token}", timeout=5).status_code == 400
        assert httpx.get(f"{base}/admin", timeout=5, follow_redirects=False).status_code == 303
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "GET /subscribe" in out and "GET /u/[token]" in out
    assert "secret-token-part" not in out
