"""Where a send writes each batch's answer: on PostgreSQL a second connection, on a thread of its own.

The loop's thread claimed, built and marked in turn, and on PostgreSQL it waited for the server while
it marked: the mark rewrites the batch's 1,000 rows (a new version of each, an entry in every index),
which is the server's work, in its own process. Here the marks, releases, lease renewals and cancel
records are jobs, run in order on a session of the recorder's own, while the loop claims and builds
the next batch (issue 16). The two connections write different rows (queued ones are claimed, claimed
ones marked, renewals queued behind the marks), so neither waits for the other's locks.

SQLite has one writer and its work runs in this process: there a job runs at once on the loop's own
session, as before (a thread was measured: no faster, docs/delivery.md "The fifth round").

A job that fails keeps its error, which `check` and `drain` raise on the loop's thread; the jobs after
it still run, so every answer that can be recorded is.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

Job = Callable[[Session], None]


class Recorder:
    """Runs `Job`s in order, each committed: in a thread on its own session (PostgreSQL), or at once on
    the caller's (SQLite). `drain` waits until all are written."""

    def __init__(self, factory: sessionmaker[Session], session: Session) -> None:
        self._inline = session.get_bind().dialect.name == "sqlite"
        self._error: BaseException | None = None
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        if self._inline:
            self._session = session
            return
        self._session = factory()
        self._thread = threading.Thread(target=self._run, name="send-recorder", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.check()
        if self._inline:
            job(self._session)
            self._session.commit()
            return
        self._jobs.put(job)

    def check(self) -> None:
        """Raise the first error a job met (once)."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def drain(self) -> None:
        """Wait until every job submitted is written, then raise a job's error if one failed."""
        if not self._inline:
            self._jobs.join()
        self.check()

    def close(self) -> None:
        """Write what is queued, stop the thread, close its session (errors were `drain`'s to raise)."""
        if self._inline:
            return
        self._jobs.put(None)
        self._thread.join()
        self._session.close()

    def _run(self) -> None:
        session = self._session
        while (job := self._jobs.get()) is not None:
            try:
                job(session)
                session.commit()
            except BaseException as e:
                session.rollback()
                if self._error is None:
                    self._error = e
            finally:
                self._jobs.task_done()
        self._jobs.task_done()
