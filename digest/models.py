"""The domain: plain dataclasses that flow sources -> compose -> render -> deliver."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Article:
    """One item from a feed. `key` is its stable identity (see digest.sources.identity)."""

    key: str
    title: str
    link: str
    published: datetime
    summary: str = ""
    image: str = ""
    image_alt: str = ""
    feed: str = ""
    categories: tuple[str, ...] = ()
    dated_by_feed: bool = True


@dataclass(frozen=True)
class Listing:
    """A supplier directory entry; `featured` tier suppliers go first in the rotation."""

    name: str
    url: str
    summary: str = ""
    categories: tuple[str, ...] = ()
    logo: str = ""
    tier: str = ""

    @property
    def key(self) -> str:
        return self.name.strip().casefold()


@dataclass(frozen=True)
class Appeal:
    key: str
    title: str
    body: str
    button: str
    url: str


@dataclass(frozen=True)
class SourceProblem:
    """A feed or directory row that could not be used: reported, never fatal to the issue."""

    source: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}{' ' + self.where if self.where else ''}: {self.message}"


@dataclass
class Collected:
    """What the sources gave this week, with every problem met on the way."""

    articles: list[Article] = field(default_factory=list)
    listings: list[Listing] = field(default_factory=list)
    problems: list[SourceProblem] = field(default_factory=list)
    feed_health: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Issue:
    """One issue's content, before rendering. `articles[0]` is the top story."""

    number: int
    subject: str
    preheader: str
    date: datetime
    articles: list[Article]
    headlines: list[Article]
    listings: list[Listing]
    appeal: Appeal | None
    excluded: list[str] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)
    featured: list[str] = field(default_factory=list)

    @property
    def top(self) -> Article | None:
        return self.articles[0] if self.articles else None

    @property
    def all_articles(self) -> list[Article]:
        return [*self.articles, *self.headlines]

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe snapshot, stored with the issue so an approved draft is frozen."""
        data = asdict(self)
        return _dates_to_text(data)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Issue:
        def art(d: dict[str, Any]) -> Article:
            return Article(**{**d, "published": datetime.fromisoformat(d["published"]),
                              "categories": tuple(d.get("categories", ()))})

        def lst(d: dict[str, Any]) -> Listing:
            return Listing(**{**d, "categories": tuple(d.get("categories", ()))})

        return cls(
            number=data["number"], subject=data["subject"], preheader=data["preheader"],
            date=datetime.fromisoformat(data["date"]),
            articles=[art(a) for a in data["articles"]],
            headlines=[art(a) for a in data["headlines"]],
            listings=[lst(x) for x in data["listings"]],
            appeal=Appeal(**data["appeal"]) if data.get("appeal") else None,
            excluded=list(data.get("excluded", [])), pinned=list(data.get("pinned", [])),
            featured=list(data.get("featured", [])),
        )


def _dates_to_text(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _dates_to_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dates_to_text(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
