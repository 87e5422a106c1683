"""What an import did: its counts, warnings and the rejects report, filled in by the import driver
(`subscribers.csv_import`) and the staging writer (`subscribers.staging`) alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ImportReport:
    path: Path
    dry_run: bool = False
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    suppressed: int = 0
    #: rows naming a withdrawn membership that the import left as it was (also counted above)
    kept_withdrawn: int = 0
    #: rows asking for `active` without --preconfirmed: joined (or left) as pending
    pending_only: int = 0
    blank: int = 0
    rejects_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.added} added", f"{self.updated} updated", f"{self.unchanged} unchanged",
                 f"{self.rejected} rejected", f"{self.suppressed} suppressed"]
        text = f"{self.rows} rows: " + ", ".join(parts)
        return f"{text} (dry run: nothing was written)" if self.dry_run else text

