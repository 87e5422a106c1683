"""A polite stop: SIGTERM and SIGHUP ask a running send to stop the way Ctrl-C does.

systemd and docker stop a service with SIGTERM, `kill` sends it, and a closed terminal sends SIGHUP.
Their default action kills the process mid-request, leaving the readers of the request in flight of
unknown fate. Here they only set a flag: the send loop claims nothing more, waits for the requests
already out, records their outcomes, and stops; the command exits with 128 + the signal's number (the
shell's convention: 143 for SIGTERM, 129 for SIGHUP), and `digest send` resumes where it stopped.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
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


@contextmanager
def on_signals(forward_to: Callable[[], Iterable[int]] = tuple) -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP set the flag instead of killing the process (main thread only,
    where Python runs signal handlers; elsewhere a no-op), and are passed on to the processes whose pids
    `forward_to` gives (the workers `digest send --workers` started: `kill <pid>` reaches the parent alone,
    while systemd signals the whole group, so a worker may get it twice, which is the same stop). The
    previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()

    def handler(signum: int, frame: FrameType | None) -> None:
        request(signum)
        for pid in forward_to():
            with suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, was in previous.items():
            signal.signal(s, was)


@contextmanager
def waits_on(stop: threading.Event) -> Iterator[Callable[[float], bool]]:
    """Yields `wait(seconds)`: as `stop.wait(seconds)` (True once `stop` is set), but in the main thread it
    also returns as soon as a signal arrives, so the signal's handler runs at once.

    `Event.wait` alone can sleep through a signal for its whole timeout: Python runs a handler in the main
    thread between two bytecodes, and a signal that the kernel gives to another thread, or that lands just
    before the main thread blocks, does not wake the wait (`digest schedule` took 30 s, a heartbeat, to
    obey a SIGTERM). The C-level handler writes every signal to the wakeup fd, whatever thread it runs
    on, and a select on that fd cannot miss a byte written before it
    (https://docs.python.org/3/library/signal.html#signal.set_wakeup_fd). In the main thread `stop` is
    read after each wait, not waited on: another thread setting it is seen at the next wake."""
    if threading.current_thread() is not threading.main_thread():
        yield stop.wait
        return
    ours, theirs = socket.socketpair()
    for s in (ours, theirs):
        s.setblocking(False)
    previous = signal.set_wakeup_fd(theirs.fileno(), warn_on_full_buffer=False)

    def wait(seconds: float) -> bool:
        if not stop.is_set():
            select.select([ours], [], [], seconds)
            try:
                while ours.recv(512):
                    pass
            except BlockingIOError:  # drained
                pass
        return stop.is_set()

    try:
        yield wait
    finally:
        signal.set_wakeup_fd(previous)
        ours.close()
        theirs.close()
