"""`digest serve`: a taken port is one line and exit 2; a listen address that public_url's links do not
lead to is a warning; the archive shows each issue with the links of the current public_url."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from digest.cli.web import address_warning, bind
from digest.config import Settings, load_settings
from digest.errors import DigestError
from digest.issue_queries import archived_html
from digest.store import session_scope
from digest.web.app import create_app
from tests.conftest import SECRET, edit_config
from tests.test_web_reader import active_readers, send_issue

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize(("public_url", "host", "port", "warned"), [
    ("http://127.0.0.1:8000", "127.0.0.1", 8000, False),
    ("http://localhost:8000", "127.0.0.1", 8000, False),
    ("http://127.0.0.1:8000", "0.0.0.0", 8000, False),
    ("http://127.0.0.1:8000", "127.0.0.1", 8001, True),
    ("http://127.0.0.1", "127.0.0.1", 8000, True),
    ("http://192.0.2.7:8000", "127.0.0.1", 8000, True),
    ("https://news.example.com", "127.0.0.1", 8000, False),  # a reverse proxy forwards to this server
])
def test_a_listen_address_the_links_do_not_lead_to_is_a_warning(public_url: str, host: str, port: int,
                                                                warned: bool) -> None:
    warning = address_warning(public_url, host, port)
    assert (warning is not None) == warned
    if warning:
        assert public_url in warning and f"{host}:{port}" in warning and "\n" not in warning


def test_binding_a_taken_port_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DigestError, match=f"port {port} on 127.0.0.1 is already in use"):
            bind("127.0.0.1", port)
    bind("127.0.0.1", port).close()  # free again: it binds


@pytest.mark.slow  # the real command in a subprocess
def test_digest_serve_on_a_taken_port_exits_2_with_one_line(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DIGEST_SECRET_KEY": SECRET}
        done = subprocess.run([sys.executable, "-m", "digest", "serve", "--port", str(port)], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: port {port} on 127.0.0.1 is already in use (another `digest serve`?): stop it, "
                     "or choose another with --port (and set public_url to match)"]


def test_the_archive_uses_the_current_public_url(settings: Settings, workdir: Path) -> None:
    active_readers(settings, "ann@example.com")
    send_issue(settings)
    old = settings.publication.public_url
    edit_config(workdir, f'public_url = "{old}"', 'public_url = "https://news.example.org"')
    moved = load_settings(workdir / "digest.toml")
    with session_scope(settings.database_url) as s:
        assert f'href="{old}/issues/1"' in archived_html(s, 1)  # as stored at send time
        html = archived_html(s, 1, moved.publication.public_url)
    assert old not in html
    assert 'href="https://news.example.org/issues/1"' in html and "https://news.example.org/unsubscribe" in html
    with TestClient(create_app(moved), base_url="https://news.example.org") as client:
        page = client.get("/issues/1")
    assert page.status_code == 200 and old not in page.text and "https://news.example.org/unsubscribe" in page.text
