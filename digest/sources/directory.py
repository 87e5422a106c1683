"""Supplier directory (CSV or JSON, file or URL) -> Listing. Bad rows are reported with their row number."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from digest.models import Listing, SourceProblem
from digest.sources.fetch import USER_AGENT
from digest.sources.text import plain_text

COLUMNS = ("name", "url", "summary", "categories", "logo", "tier")
TIERS = ("", "featured", "standard")


def split_categories(value: str) -> tuple[str, ...]:
    """'Aquatics / Fitness / Technology' -> ('Aquatics', 'Fitness', 'Technology'), as on the directory."""
    return tuple(dict.fromkeys(c.strip() for c in value.replace("|", "/").split("/") if c.strip()))


def _load(source: str, timeout: float) -> str:
    if "://" in source and not source.startswith("file://"):
        response = httpx.get(source, timeout=timeout, headers={"User-Agent": USER_AGENT}, follow_redirects=True)
        response.raise_for_status()
        return response.text
    return Path(source.removeprefix("file://")).read_text(encoding="utf-8-sig")


def _listing(row: dict[str, object], source: str, where: str) -> Listing | SourceProblem:
    name = plain_text(str(row.get("name") or ""))
    url = str(row.get("url") or "").strip()
    if not name:
        return SourceProblem(source, where, "name is empty")
    if urlsplit(url).scheme not in ("http", "https"):
        return SourceProblem(source, where, f"url {url!r} is not an http(s) link")
    tier = str(row.get("tier") or "").strip().lower()
    if tier not in TIERS:
        return SourceProblem(source, where, f"tier {tier!r} is not one of featured, standard or empty")
    cats = row.get("categories") or ""
    categories = tuple(dict.fromkeys(str(c).strip() for c in cats if str(c).strip())) if isinstance(cats, list) \
        else split_categories(str(cats))
    logo = str(row.get("logo") or "").strip()
    return Listing(name=name, url=url, summary=plain_text(str(row.get("summary") or "")),
                   categories=categories, logo=logo if urlsplit(logo).scheme in ("http", "https") else "",
                   tier=tier if tier == "featured" else "")


def read_directory(source: str, *, timeout: float = 10.0) -> tuple[list[Listing], list[SourceProblem]]:
    """All good listings and a problem per bad row; a directory that cannot be read is one problem."""
    try:
        text = _load(source, timeout)
    except (OSError, httpx.HTTPError, UnicodeDecodeError) as e:
        return [], [SourceProblem(source, "", f"cannot read directory: {e}")]
    listings: list[Listing] = []
    problems: list[SourceProblem] = []
    if source.lower().endswith(".json") or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            return [], [SourceProblem(source, f"line {e.lineno}", f"not valid JSON: {e.msg}")]
        rows = data.get("listings") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            return [], [SourceProblem(source, "", "JSON must be a list of listings or an object with a "
                                                  "\"listings\" list")]
        items = [(f"item {i}", r) for i, r in enumerate(rows, start=1)]
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            fields = [(f or "").strip().lower() for f in reader.fieldnames or []]
            reader.fieldnames = fields
            missing = [c for c in ("name", "url") if c not in fields]
            if missing:
                return [], [SourceProblem(source, "header", f"missing column(s): {', '.join(missing)}")]
            items = []
            for i, r in enumerate(reader, start=2):
                items.append((f"row {i}", r))
        except csv.Error as e:
            return [], [SourceProblem(source, f"line {reader.line_num + 1}", f"not valid CSV: {e}")]
    seen: set[str] = set()
    for where, row in items:
        if not isinstance(row, dict):
            problems.append(SourceProblem(source, where, "not an object"))
            continue
        result = _listing(row, source, where)
        if isinstance(result, SourceProblem):
            problems.append(result)
        elif result.key in seen:
            problems.append(SourceProblem(source, where, f"duplicate supplier {result.name!r}"))
        else:
            seen.add(result.key)
            listings.append(result)
    return listings, problems
