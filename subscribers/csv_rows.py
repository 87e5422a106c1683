"""Parsing a subscribers CSV record: the row's cells checked and normalised into a staged row
(`subscribers.staging.STAGED_COLUMNS`), or RowRejected with the reason the rejects report gives.

`lists` holds `slug` or `slug:status` items separated by `;` (`|` and `,` also accepted);
`categories` are separated by `/` (`;` and `|` also accepted).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from subscribers import lifecycle, staging
from subscribers.categories import UnknownCategory, canonical
from subscribers.csv_read import Layout, RowRejected
from subscribers.lifecycle import InvalidEmail
from subscribers.models import MembershipStatus
from subscribers.names import NAME_MAX, clean_name
from subscribers.zones import InvalidZone, parse_zone

_LIST_SPLIT = re.compile(r"[;|,]")
_CATEGORY_SPLIT = re.compile(r"[/;|]")


class RowParser:
    """Turns one CSV record into a staged row (`staging.STAGED_COLUMNS`), or raises RowRejected with the reason.

    Each distinct `lists` cell gets a number, its plan (`cells` maps it back); repeated cells are
    parsed once."""

    def __init__(self, layout: Layout, lists: set[str], create_lists: bool,
                 categories: tuple[str, ...] | None, default_list: str, convert_json: Callable[[Any], Any],
                 hash_keys: bool) -> None:
        self.convert_json = convert_json
        self.layout = layout
        self.lists = lists  # its own copy: lists named in the file are created when written
        self.create_lists = create_lists
        self.categories = categories
        self.hash_keys = hash_keys
        self.cells: dict[int, staging.ListsCell] = {0: ((default_list, None),)}
        self._plans: dict[staging.ListsCell, int] = {self.cells[0]: 0}
        self._list_cells: dict[str, int | str] = {}
        self._category_cells: dict[str, list[str] | str] = {}
        self.width = len(layout.names)
        self._empty = convert_json([])
        self._attribute_json: dict[Any, Any] = {}
        columns = [i for i, _ in layout.attributes]
        self._attribute_cells = (itemgetter(*columns) if len(columns) > 1 else
                                 (lambda f: f[columns[0]]) if columns else (lambda f: None))

    def parse(self, fields: list[str], row: int, line: int) -> tuple[Any, ...]:
        lay = self.layout
        if len(fields) != self.width:
            raise RowRejected(f"has {len(fields)} fields but the header has {self.width} "
                              "(a stray quote or delimiter?)")
        joined = "".join(fields)
        if not joined.isascii():
            try:
                joined.encode("utf-8")
            except UnicodeEncodeError:
                raise RowRejected("is not UTF-8 text: save the file as CSV UTF-8 and import it again") from None
        email = fields[lay.email].strip()
        if not email:
            raise RowRejected("email is empty")
        try:
            address = lifecycle.normalize(email)
        except InvalidEmail as e:
            raise RowRejected(str(e)) from None
        # a multi-line quoted cell or a stray control character: spaces, as at every door (subscribers.names)
        name = clean_name(fields[lay.name]) if lay.name is not None else ""
        if len(name) > NAME_MAX:
            raise RowRejected(f"name is {len(name)} characters (at most {NAME_MAX})")
        plan = self._plan(fields[lay.lists]) if lay.lists is not None else 0
        cats = self._categories(fields[lay.categories]) if lay.categories is not None else None
        created = self._created(fields[lay.created_at]) if lay.created_at is not None else None
        try:
            zone = parse_zone(fields[lay.timezone]) if lay.timezone is not None else None
        except InvalidZone as e:
            raise RowRejected(str(e)) from None
        return (row, line, address.email, address.key, name, self._attributes(fields),
                self._empty if cats is None else self.convert_json(cats), cats is not None, plan, created,
                staging.pack(fields), address.hash if self.hash_keys else None, zone)

    def _attributes(self, fields: list[str]) -> Any:
        """The row's non-empty attribute cells as the database stores them (the same cells, once)."""
        cells = self._attribute_cells(fields)
        cached = self._attribute_json.get(cells)
        if cached is None:
            cached = self.convert_json({key: v for i, key in self.layout.attributes if (v := fields[i].strip())})
            if len(self._attribute_json) < 10_000:
                self._attribute_json[cells] = cached
        return cached

    def _plan(self, cell: str) -> int:
        cached = self._list_cells.get(cell)
        if cached is None:
            try:
                lists = self._parse_lists(cell)
                cached = self._plans.get(lists)
                if cached is None:
                    cached = self._plans[lists] = len(self.cells)
                    self.cells[cached] = lists
            except RowRejected as e:
                cached = str(e)
            if len(self._list_cells) < 10_000:
                self._list_cells[cell] = cached
        if isinstance(cached, str):
            raise RowRejected(cached)
        return cached

    def _parse_lists(self, cell: str) -> staging.ListsCell:
        out: dict[str, MembershipStatus | None] = {}
        for item in _LIST_SPLIT.split(cell):
            if not item.strip():
                continue
            slug, _, named = item.partition(":")
            slug, named = slug.strip().lower(), named.strip().lower()
            try:
                status = MembershipStatus(named) if named else None
            except ValueError:
                raise RowRejected(f"lists: unknown status {named!r} for list {slug!r} "
                                  f"(one of {', '.join(MembershipStatus)})") from None
            if slug not in self.lists:
                if not self.create_lists:
                    raise RowRejected(f"lists: unknown list {slug!r} (create it with `digest subscribers lists create "
                                      f"{slug}`, or import with --create-lists)")
                if not lifecycle.LIST_SLUG.fullmatch(slug):
                    raise RowRejected(f"lists: {slug!r} is not a list name (letters, digits, - and _)")
                self.lists.add(slug)  # created when first written
            if slug in out:
                raise RowRejected(f"lists: list {slug!r} is named twice")
            out[slug] = status
        return tuple(out.items())

    def _categories(self, cell: str) -> list[str] | None:
        if not cell.strip():
            return None
        cached = self._category_cells.get(cell)
        if cached is None:
            try:
                cached = canonical(_CATEGORY_SPLIT.split(cell), self.categories)
            except UnknownCategory as e:
                cached = f"categories: {e}"
            if len(self._category_cells) < 10_000:
                self._category_cells[cell] = cached
        if isinstance(cached, str):
            raise RowRejected(cached)
        return cached

    @staticmethod
    def _created(cell: str) -> datetime | None:
        cell = cell.strip()
        if not cell:
            return None
        try:
            value = datetime.fromisoformat(cell)
        except ValueError:
            raise RowRejected(f"created_at {cell!r} is not a date (YYYY-MM-DD or ISO 8601)") from None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
