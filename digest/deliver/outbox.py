"""The embedded default: every message is written as an .eml file in a folder (no account, no network)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from digest.config import Settings
from digest.deliver.mime import build
from digest.deliver.protocol import Message, Outcome


class OutboxTransport:
    name = "outbox"
    batch_size = 200
    concurrency = 1

    def __init__(self, settings: Settings, folder: Path | None = None, *, subject_prefix: str = "") -> None:
        self.settings = settings
        self.folder = folder or Path(settings.resolve(settings.delivery.outbox_dir))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.subject_prefix = subject_prefix

    def path_for(self, message: Message) -> Path:
        safe = re.sub(r"[^\w.@+-]", "_", message.to_email)[:120]
        return self.folder / f"issue-{message.issue_number:04d}-{message.delivery_id:08d}-{safe}.eml"

    def send(self, messages: list[Message]) -> list[Outcome]:
        outcomes = []
        for message in messages:
            try:
                mime = build(self.settings, message, subject_prefix=self.subject_prefix)
            except Exception as e:  # this reader's data alone (a name with a line break, say): the rest go on
                outcomes.append(Outcome(message.delivery_id, False,
                                        error=f"could not build this reader's message: {e}"))
                continue
            path = self.path_for(message)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(bytes(mime))
            os.replace(tmp, path)  # atomic: a reader never sees half a message
            outcomes.append(Outcome(message.delivery_id, True, message_id=str(mime["Message-ID"])))
        return outcomes

    def close(self) -> None:
        pass
