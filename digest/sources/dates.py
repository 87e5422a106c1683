"""Dates as real publishers' systems write them, beyond RFC 822 and ISO 8601.

feedparser reads the standard forms, but it reads a time zone it does not know ("AEDT") as UTC and
gives up on day-first numbers ("03/04/2025"), other languages' month names ("3 mars 2025", "Di, 04 Mär
2025") and Drupal's "Monday, March 3, 2025 - 10:00". A wrong date is worse than none (an item 11 hours
in the "future" waits as if embargoed), so these are read here first, with the publication's time zone
for dates that name none; feedparser's reading is the fallback.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone, tzinfo

#: Abbreviations seen in real feeds, in minutes east of UTC. Ambiguous ones (IST, CST in Asia) are left
#: to feedparser, which reads the US meanings.
ZONES = {
    "UT": 0, "UTC": 0, "GMT": 0, "Z": 0, "WET": 0, "WEST": 60, "BST": 60, "CET": 60, "CEST": 120, "MEZ": 60,
    "MESZ": 120, "EET": 120, "EEST": 180, "MSK": 180, "GST": 240, "SGT": 480, "HKT": 480, "AWST": 480,
    "JST": 540, "KST": 540, "ACST": 570, "ACDT": 630, "AEST": 600, "AEDT": 660, "NZST": 720, "NZDT": 780,
    "EST": -300, "EDT": -240, "CST": -360, "CDT": -300, "MST": -420, "MDT": -360, "PST": -480, "PDT": -420,
    "AKST": -540, "AKDT": -480, "HST": -600,
}

_MONTH_NAMES = {
    1: "jan january janv janvier januar janner enero ene gennaio gen januari janeiro",
    2: "feb february fev fevr fevrier februar febrero febbraio febb februari fevereiro",
    3: "mar march mars marz maerz marzo maart marco",
    4: "apr april avr avril abril aprile abr",
    5: "may mai mayo maggio mag mei maio",
    6: "jun june juin juni junio giugno giu junho",
    7: "jul july juil juillet juli julio luglio lug julho",
    8: "aug august aout agosto ago augustus",
    9: "sep sept september septembre septiembre setiembre settembre set setembro",
    10: "oct october octobre oktober okt octubre ottobre ott outubro out",
    11: "nov november novembre noviembre novembro",
    12: "dec december decembre dezember dez diciembre dic dicembre dezembro",
}
MONTHS = {name: number for number, names in _MONTH_NAMES.items() for name in names.split()}

_TIME = re.compile(r"(?<![\d:])(\d{1,2})[:h](\d{2})(?::(\d{2})(?:[.,]\d+)?)?\s*([ap]\.?m\.?)?(?![\d:])", re.I)
_OFFSET = re.compile(r"(?:(?<=\s)|^)(?:gmt|utc)?\s*([+-])(\d{1,2})(?::?(\d{2}))?(?!\d)", re.I)
_YMD = re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)")
_DMY = re.compile(r"(?<!\d)(\d{1,2})[-/.](\d{1,2})[-/.](\d{4}|\d{2})(?!\d)")
_WORD = re.compile(r"[^\W\d_]+")
_NUMBER = re.compile(r"(?<![\d:+-])(\d{1,4})(?:st|nd|rd|th|er|e|\.)?(?![\d:])", re.I)


def _fold(text: str) -> str:
    """Case-folded, accents removed: 'Mär' -> 'mar', 'décembre' -> 'decembre'."""
    return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))


def _year(value: int) -> int:
    return value + (2000 if value < 70 else 1900) if value < 100 else value


def parse_date(raw: str, default_tz: tzinfo = UTC) -> datetime | None:
    """An aware UTC datetime from a date string, or None if it cannot be read with confidence."""
    text = (raw or "").strip()
    if not text:
        return None
    iso = _iso(text, default_tz)
    if iso is not None:
        return iso
    folded = _fold(text)
    zone: tzinfo | None = None
    for word in _WORD.findall(text):
        if word.upper() in ZONES and word.isupper():
            zone = timezone(timedelta(minutes=ZONES[word.upper()]))
            folded = re.sub(rf"\b{word.casefold()}\b", " ", folded, count=1)
            break
    rest = folded
    hour = minute = second = 0
    t = _TIME.search(rest)
    if t:
        hour, minute, second = int(t.group(1)), int(t.group(2)), int(t.group(3) or 0)
        meridiem = (t.group(4) or "").replace(".", "").lower()
        if meridiem == "pm" and hour < 12:
            hour += 12
        elif meridiem == "am" and hour == 12:
            hour = 0
        rest = rest[: t.start()] + " " + rest[t.end():]
    o = _OFFSET.search(rest)
    if o:
        sign = -1 if o.group(1) == "-" else 1
        zone = timezone(sign * timedelta(hours=int(o.group(2)), minutes=int(o.group(3) or 0)))
        rest = rest[: o.start()] + " " + rest[o.end():]
    date = _numeric_date(rest) or _named_date(rest)
    if date is None:
        return None
    year, month, day = date
    try:
        local = datetime(year, month, day, hour, minute, second, tzinfo=zone or default_tz)
    except ValueError:
        return None
    return local.astimezone(UTC)


def _iso(text: str, default_tz: tzinfo) -> datetime | None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][\d:.,]+(Z|[+-]\d{2}:?\d{2})?)?", text):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=default_tz)).astimezone(UTC)


def _numeric_date(text: str) -> tuple[int, int, int] | None:
    m = _YMD.search(text)
    if m:
        return int(m.group(1)), int(m.group(2)), int(m.group(3))
    m = _DMY.search(text)
    if m:
        first, second, year = int(m.group(1)), int(m.group(2)), _year(int(m.group(3)))
        # day first, as everywhere but the US; month first only when the day cannot be a month
        if second > 12 >= first:
            return year, first, second
        return year, second, first
    return None


def _named_date(text: str) -> tuple[int, int, int] | None:
    # the last month word: in "mar, 4 de abril" the first is Tuesday (martes), not March
    month = next((MONTHS[w] for w in reversed(_WORD.findall(text)) if w in MONTHS), None)
    if month is None:
        return None
    numbers = [int(n) for n in _NUMBER.findall(text)]
    years = [n for n in numbers if n >= 1900]
    days = [n for n in numbers if 1 <= n <= 31]
    if not days:
        return None
    if years:
        return years[0], month, days[0]
    if len(days) >= 2:  # "3 Mar 25": the last small number is a two-digit year
        return _year(days[-1]), month, days[0]
    return None
