"""The supplier directory from CSV or JSON, a file or a URL: good rows become listings, every bad row is
named with its row (or item) number, and a directory that cannot be read is one named problem."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from digest.sources.directory import read_directory

CSV = """name,url,summary,categories,logo,tier
Tidewell Systems,https://dir.example.com/tidewell,"Pool software, <b>billing</b> &amp; more",Aquatics / Billing,https://dir.example.com/t.png,featured
Ironbark,https://dir.example.com/ironbark,Gym software,Fitness|Technology,,
,https://dir.example.com/nameless,No name,,,
Bad Link,javascript:alert(1),Script link,,,
Odd Tier,https://dir.example.com/odd,Tier typo,,,premium
tidewell systems,https://dir.example.com/again,Duplicate by name,,,
Lazy Logo,https://dir.example.com/lazy,Logo not http,Venues,ftp://x/logo.png,Standard
"""


def messages(problems) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{p.where}: {p.message}" for p in problems]


def test_csv_rows_become_listings_and_bad_rows_are_named(tmp_path: Path) -> None:
    path = tmp_path / "directory.csv"
    path.write_text("\ufeff" + CSV, encoding="utf-8")  # Excel's BOM too
    listings, problems = read_directory(str(path))
    assert [x.name for x in listings] == ["Tidewell Systems", "Ironbark", "Lazy Logo"]
    tidewell, ironbark, lazy = listings
    assert tidewell.tier == "featured" and tidewell.categories == ("Aquatics", "Billing")
    assert tidewell.summary == "Pool software, billing & more"
    assert ironbark.categories == ("Fitness", "Technology") and ironbark.tier == ""
    assert lazy.logo == "" and lazy.tier == ""
    assert messages(problems) == [
        "row 4: name is empty",
        "row 5: url 'javascript:alert(1)' is not an http(s) link",
        "row 6: tier 'premium' is not one of featured, standard or empty",
        "row 7: duplicate supplier 'tidewell systems'",
    ]
    assert all(p.source == str(path) for p in problems)


def test_json_list_or_object_with_listings(tmp_path: Path) -> None:
    rows = [{"name": "Cascade", "url": "https://dir.example.com/cascade", "categories": ["Aquatics", " Play ", ""],
             "tier": "FEATURED"},
            "not an object",
            {"name": "No URL"}]
    for data in (rows, {"listings": rows}):
        path = tmp_path / "directory.json"
        path.write_text(json.dumps(data))
        listings, problems = read_directory(str(path))
        assert [(x.name, x.categories, x.tier) for x in listings] == [("Cascade", ("Aquatics", "Play"), "featured")]
        assert messages(problems) == ["item 2: not an object", "item 3: url '' is not an http(s) link"]


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("bad.json", '{"listings": [', "line 1: not valid JSON"),
    ("wrong.json", '{"suppliers": []}', 'JSON must be a list of listings or an object with a "listings" list'),
    ("header.csv", "title,link\nA,https://a.example.com\n", "header: missing column(s): name, url"),
    ("huge.csv", "name,url\nA,https://a.example.com\n\"" + "x" * 200_000 + "\",https://b.example.com\n",
     "line 3: not valid CSV: field larger than field limit"),
])
def test_unusable_directories_are_one_named_problem(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    listings, problems = read_directory(str(path))
    assert listings == []
    assert len(problems) == 1 and expected in f"{problems[0].where}: {problems[0].message}"


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("name,url\nCaf\xe9 Co,https://cafe.example.com\n".encode("latin-1"))
    for path in (latin, tmp_path / "missing.csv"):
        listings, problems = read_directory(str(path))
        assert listings == [] and problems[0].message.startswith("cannot read directory")


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/directory.json":
            body = json.dumps([{"name": "Remote", "url": "https://remote.example.com"}]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        elif self.path == "/directory.csv":
            body = b"name,url,tier\nRemote CSV,https://remote.example.com/csv,featured\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
        else:
            body = b"nope"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def host() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_directory_from_a_url(host: str) -> None:
    assert [x.name for x in read_directory(host + "/directory.json")[0]] == ["Remote"]
    listings, _ = read_directory(host + "/directory.csv")
    assert [(x.name, x.tier) for x in listings] == [("Remote CSV", "featured")]
    missing, problems = read_directory(host + "/gone.csv")
    assert missing == [] and "404" in problems[0].message and problems[0].source == host + "/gone.csv"
