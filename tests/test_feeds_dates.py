"""Dates as publishers' systems write them: read in the right zone, or not at all (never guessed wrong)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from digest.sources.dates import parse_date

SYDNEY = ZoneInfo("Australia/Sydney")  # +11:00 in March (daylight saving)


@pytest.mark.parametrize(("raw", "expected"), [
    ("Mon, 03 Mar 2025 10:00:00 +1100", datetime(2025, 3, 2, 23, 0)),
    ("Mon, 03 Mar 2025 10:00:00 AEDT", datetime(2025, 3, 2, 23, 0)),
    ("Mon, 03 Mar 2025 10:00:00 EST", datetime(2025, 3, 3, 15, 0)),
    ("Mon, 03 Mar 25 10:00:00 GMT", datetime(2025, 3, 3, 10, 0)),
    ("Mon, 3 Mar 2025 10:00 GMT+11", datetime(2025, 3, 2, 23, 0)),
    ("2025-03-03T10:00:00+11:00", datetime(2025, 3, 2, 23, 0)),
    ("2025-03-03T10:00:00.123Z", datetime(2025, 3, 3, 10, 0, 0, 123000)),
    ("2025-03-03 10:00:00", datetime(2025, 3, 2, 23, 0)),                # no zone: the publication's
    ("2025-03-03", datetime(2025, 3, 2, 13, 0)),
    ("03/03/2025", datetime(2025, 3, 2, 13, 0)),                         # day first
    ("04/03/2025 18:30", datetime(2025, 3, 4, 7, 30)),                   # 4 March, not 3 April
    ("12/25/2024", datetime(2024, 12, 24, 13, 0)),                       # month first only when it must be
    ("3.3.2025 10:00", datetime(2025, 3, 2, 23, 0)),
    ("3 March 2025", datetime(2025, 3, 2, 13, 0)),
    ("March 3rd, 2025 at 4:15 pm", datetime(2025, 3, 3, 5, 15)),
    ("Monday, March 3, 2025 - 10:00", datetime(2025, 3, 2, 23, 0)),      # Drupal
    ("lundi 3 mars 2025 10:00", datetime(2025, 3, 2, 23, 0)),
    ("4 avr. 2025 10h30", datetime(2025, 4, 3, 23, 30)),
    ("Di, 04 Mär 2025 10:00:00 +0100", datetime(2025, 3, 4, 9, 0)),
    ("mar, 4 de abril de 2025 9:15 pm", datetime(2025, 4, 4, 10, 15)),  # "mar" here is Tuesday
    ("4 dicembre 2024", datetime(2024, 12, 3, 13, 0)),
])
def test_dates_are_read_in_utc(raw: str, expected: datetime) -> None:
    assert parse_date(raw, SYDNEY) == expected.replace(tzinfo=UTC)


@pytest.mark.parametrize("raw", ["", "sometime last week", "Mon, 31 Feb 2025 10:00:00 GMT", "13/13/2025",
                                 "March 2025", "yesterday at 10:00"])
def test_what_cannot_be_read_with_confidence_is_none(raw: str) -> None:
    assert parse_date(raw, SYDNEY) is None
