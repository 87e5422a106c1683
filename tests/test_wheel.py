"""A normal (not editable) install works: the wheel carries the templates and the migrations.

Deploy tools, wheels and containers install this way; only `pip install -e .` ever worked before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, SECRET

pytestmark = pytest.mark.slow


def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_demo(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=600)
    wheel = next(dist.glob("digest-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "digest/templates/email/digest.mjml.j2" in names
    assert "digest/migrations/env.py" in names
    assert any(n.startswith("digest/migrations/versions/0001_") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=900)
    folder = tmp_path / "demo"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DIGEST_CONFIG", "DIGEST_DATABASE_URL")}
    env["DIGEST_SECRET_KEY"] = SECRET
    # the installed package, not this checkout: run from an empty folder with the venv's own console script
    done = subprocess.run([str(venv / "bin" / "digest"), "demo"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import digest.resources as r; print(r.TEMPLATES)"],
                           cwd=folder, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), f"templates found outside the installed package: {where}"
    assert len(list((folder / "outbox").glob("*.eml"))) == 5
    assert (folder / "preview.html").stat().st_size > 10_000
