"""A polite stop: SIGTERM and SIGHUP ask a running send to stop the way Ctrl-C does.

systemd and docker stop a service with SIGTERM, `kill` sends it, and a closed terminal sends SIGHUP.
Their default action kills the process mid-request, leaving the readers of the request in flight of
unknown fate. Here they only set a flag: the send loop claims nothing more, waits for the requests
already out, records their outcomes, and stops; the command exits with 128 + the signal's number (the
shell's convention: 143 for SIGTERM, 129 for SIGHUP), and `digest send` resumes where it stopped.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_requested = threading.Event()
_signal: int | None = None


def request(signum: int = signal.SIGTERM) -> None:
    """Ask every send of this process to stop after its requests in flight."""
    global _signal
    _signal = _signal or signum
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def signal_name() -> str:
    return signal.Signals(_signal).name if _signal else "a stop request"


def exit_code() -> int:
    """128 + the signal's number, as a shell reports a process the signal stopped."""
    return 128 + (_signal or signal.SIGTERM)


def reset() -> None:
    global _signal
    _signal = None
    _requested.clear()


def _handler(signum: int, frame: FrameType | None) -> None:
    request(signum)


@contextmanager
def on_signals() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP set the flag instead of killing the process (main thread only,
    where Python runs signal handlers; elsewhere a no-op). The previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
