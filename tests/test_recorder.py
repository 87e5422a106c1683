"""The send's recorder (digest.deliver.recorder): each batch's answer written in order and committed, on
PostgreSQL by a thread on its own connection while the loop goes on; a job that fails is raised on the
loop's thread once the others are written, never lost and never stopping them."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from digest.deliver.recorder import Recorder
from digest.store import engine_for, migrate, session_factory


def _probe(database_url: str) -> None:
    migrate(database_url)
    with engine_for(database_url).begin() as conn:
        conn.execute(text("CREATE TABLE recorder_probe (seq INTEGER PRIMARY KEY, n INTEGER NOT NULL, "
                          "thread VARCHAR(64) NOT NULL)"))


def test_jobs_are_written_in_order_and_a_failure_is_raised_after_the_rest(database_url: str) -> None:
    _probe(database_url)
    factory = session_factory(database_url)
    loop_thread = threading.current_thread().name

    def write(n: int, fail: bool = False):  # type: ignore[no-untyped-def]
        def job(s) -> None:  # type: ignore[no-untyped-def]
            s.execute(text("INSERT INTO recorder_probe (seq, n, thread) VALUES (:n, :n, :t)"),
                      {"n": n, "t": threading.current_thread().name})
            if fail:
                raise ValueError(f"job {n} failed")
        return job

    with factory() as session:
        recorder = Recorder(factory, session)
        try:
            for n in range(1, 6):
                if n == 3 and database_url.startswith("sqlite"):  # at once, on the loop's own session: raised
                    with pytest.raises(ValueError, match="job 3 failed"):  # where it is called, as before
                        recorder.submit(write(n, fail=True))
                    session.rollback()  # (the loop's error path)
                    continue
                recorder.submit(write(n, fail=n == 3))
            if not database_url.startswith("sqlite"):
                with pytest.raises(ValueError, match="job 3 failed"):
                    recorder.drain()
            recorder.drain()  # raised once
        finally:
            recorder.close()
    with engine_for(database_url).connect() as conn:
        rows = conn.execute(text("SELECT n, thread FROM recorder_probe ORDER BY seq")).all()
    assert [n for n, _ in rows] == [1, 2, 4, 5], "the failed job rolled back alone; the ones after it written"
    if database_url.startswith("sqlite"):
        assert {t for _, t in rows} == {loop_thread}, "SQLite: at once, on the loop's own thread and session"
    else:
        assert {t for _, t in rows} == {"send-recorder"}, "PostgreSQL: on the recorder's own thread"
