"""SMTP: the full MIME of each reader's copy over one reused connection, at a capped rate.

The connection is opened on first use and kept for every following message and batch; a dropped
connection (or a 421 "closing") is reopened and the message sent again, with a bounded number of
tries (digest.retry). A message the server did not answer with 250 was not accepted (RFC 5321
§4.1.1.4), so sending it again is right; a 4xx answer is transient (§4.2.1) and is tried again too.
A refused recipient is that reader's failure, not the send's; a refused login or sender stops the
send with the server's words.

The reply to the final dot after DATA is different: once the dot is out the server may have taken the
message, and RFC 5321 §4.5.3.2.6 asks the client to wait 10 minutes for that reply (a busy server scans
the message first). So that one reply waits `data_timeout_seconds`, and no reply (in time, or a connection
closed before it) makes that one message of unknown fate: never sent again without a decision
(`digest deliveries resolve`). One reader per batch, so each outcome is recorded as it happens and a
process stopped or killed mid-send leaves at most one message of unknown fate.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from digest import retry
from digest.config import Settings
from digest.deliver.mime import build
from digest.deliver.protocol import Message, Outcome, SendStopped
from digest.errors import ConfigError


class Pacer:
    """At most `rate` messages a second (0: no cap), evenly spaced rather than in bursts."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        now = self.clock()
        if now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


class FinalReplyLost(Exception):
    """The final dot went out and no reply came back in time: the server may have accepted the message."""


def _patient_data(conn: _SMTP | _SMTPSSL, msg: Any) -> tuple[int, bytes]:
    """DATA as smtplib does it (RFC 5321 §4.1.1.4), but the reply to the final dot is waited for
    `data_timeout` seconds (§4.5.3.2.6), and losing it raises FinalReplyLost, not a retryable error."""
    conn.putcmd("data")
    code, repl = conn.getreply()
    if code != 354:
        raise smtplib.SMTPDataError(code, repl)
    raw = bytes(msg.encode("ascii") if isinstance(msg, str) else msg)
    raw = re.sub(rb"(?m)^\.", b"..", raw)  # dot-stuffing, §4.5.2
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    conn.send(raw + b".\r\n")  # a failure here: the dot never arrived, nothing was accepted
    sock = conn.sock
    assert sock is not None  # send() above raised SMTPServerDisconnected if it were
    before = sock.gettimeout()
    sock.settimeout(conn.data_timeout)
    try:
        return conn.getreply()
    except (smtplib.SMTPServerDisconnected, OSError) as e:
        # The whole message and its dot are out, and no reply came: out of time (the server is still at it
        # and may yet say 250), or the connection closed. A close is no refusal either: the server may have
        # committed the message and lost the connection before its 250 got out (RFC 5321 §6.1 makes the 250
        # the moment of responsibility, but nothing says a server that took the message cannot die before
        # saying so). Either way the fate of this one message is unknown: never sent again by itself.
        if isinstance(e, TimeoutError) or isinstance(e.__context__, TimeoutError):
            raise FinalReplyLost(f"no reply within {conn.data_timeout:g} s after the message's final dot") from None
        raise FinalReplyLost(f"the connection closed after the message's final dot, before any reply "
                             f"({e.__class__.__name__}: {e})") from None
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(before)


class _SMTP(smtplib.SMTP):
    data_timeout = 600.0

    def data(self, msg: Any) -> tuple[int, bytes]:
        return _patient_data(self, msg)


class _SMTPSSL(smtplib.SMTP_SSL):
    data_timeout = 600.0

    def data(self, msg: Any) -> tuple[int, bytes]:
        return _patient_data(self, msg)


def _text(raw: bytes | str) -> str:
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).strip()


def _transient(error: BaseException) -> bool:
    """Worth another try: a 4xx refusal (RFC 5321 §4.2.1), or a lost connection (dropped, timed out,
    421 closing, or any other answer while connecting): the message was not accepted."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        code, _ = next(iter(error.recipients.values()))
        return 400 <= code < 500
    if isinstance(error, smtplib.SMTPSenderRefused | smtplib.SMTPDataError):
        return 400 <= error.smtp_code < 500
    return isinstance(error, smtplib.SMTPServerDisconnected | smtplib.SMTPResponseException | OSError)


class SMTPTransport:
    name = "smtp"
    batch_size = 1  # each message claimed and recorded on its own: a killed send leaves at most one unknown
    concurrency = 1  # one connection, reused

    def __init__(self, settings: Settings, *, ssl_context: ssl.SSLContext | None = None, retries: int = 3,
                 backoff: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        sm = settings.delivery.smtp
        if sm.username and not sm.password:
            raise ConfigError(f"{sm.password_env} is not set: {settings.path} has delivery.smtp.username "
                              f"{sm.username!r}; export {sm.password_env}=... (the SMTP password)")
        self.settings = settings
        self.smtp = sm
        self.where = f"{sm.host}:{sm.port}"
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.retries = retries
        self.retrying = retry.policy(attempts=retries + 1, first=backoff, retry_on=_transient, sleep=sleep)
        self.pacer = Pacer(sm.max_per_second, clock=clock, sleep=sleep)
        self._conn: _SMTP | _SMTPSSL | None = None
        self.connections = 0  # opened so far (reconnects show here)

    # -- the connection ------------------------------------------------------------------------------

    def _open(self) -> _SMTP | _SMTPSSL:
        sm = self.smtp
        try:
            if sm.security == "tls":
                conn: _SMTP | _SMTPSSL = _SMTPSSL(sm.host, sm.port, timeout=sm.timeout_seconds,
                                                  context=self.ssl_context)
            else:
                conn = _SMTP(sm.host, sm.port, timeout=sm.timeout_seconds)
            conn.data_timeout = sm.data_timeout_seconds
            conn.ehlo()
            if sm.security == "starttls":
                conn.starttls(context=self.ssl_context)
                conn.ehlo()
            if sm.username:
                conn.login(sm.username, sm.password)
        except smtplib.SMTPAuthenticationError as e:
            raise SendStopped(f"the SMTP server {self.where} refused the login of {sm.username!r}: "
                              f"{e.smtp_code} {_text(e.smtp_error)}") from None
        except smtplib.SMTPNotSupportedError as e:
            raise SendStopped(f"the SMTP server {self.where} does not support what delivery.smtp asks "
                              f"(security = {sm.security!r}, username set: {bool(sm.username)}): {e}") from None
        except ssl.SSLError as e:
            raise SendStopped(f"TLS with the SMTP server {self.where} failed: {e}") from None
        self._conn = conn
        self.connections += 1
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()

    # -- sending ------------------------------------------------------------------------------------

    def send(self, messages: list[Message]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for message in messages:
            try:
                outcomes.append(self.send_one(message))
            except SendStopped as e:
                raise SendStopped(str(e), outcomes) from None
        return outcomes

    def send_one(self, message: Message) -> Outcome:
        try:
            mime = build(self.settings, message)
        except Exception as e:  # this reader's data alone (a name with a line break, say): the rest go on
            return Outcome(message.delivery_id, False, error=f"could not build this reader's message: {e}")
        sender = self.settings.publication.from_email
        try:
            self.retrying(self._send_mime, mime, sender, message.to_email)
        except FinalReplyLost as e:
            return Outcome(message.delivery_id, False, unknown=True,
                           error=f"{self.where}: {e}; it may have been accepted: decide with "
                                 "`digest deliveries resolve`")
        except smtplib.SMTPRecipientsRefused as e:
            code, reply = next(iter(e.recipients.values()))
            return Outcome(message.delivery_id, False, error=f"refused by {self.where}: {code} {_text(reply)}")
        except smtplib.SMTPSenderRefused as e:
            raise SendStopped(f"the SMTP server {self.where} refused the sender {sender}: "
                              f"{e.smtp_code} {_text(e.smtp_error)}") from None
        except smtplib.SMTPDataError as e:
            return Outcome(message.delivery_id, False,
                           error=f"message refused by {self.where}: {e.smtp_code} {_text(e.smtp_error)}")
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError) as e:
            detail = f"{e.smtp_code} {_text(e.smtp_error)}" if isinstance(e, smtplib.SMTPResponseException) \
                else f"{e.__class__.__name__}: {e}"
            raise SendStopped(f"lost the SMTP server {self.where} {self.retries + 1} times in a row ({detail}); "
                              "the messages not yet accepted are queued again") from None
        return Outcome(message.delivery_id, True, message_id=str(mime["Message-ID"]))

    def _send_mime(self, mime: EmailMessage, sender: str, to_email: str) -> None:
        """One try, paced. A lost connection is dropped here, so the next try opens a new one."""
        self.pacer.wait()
        try:
            conn = self._conn or self._open()
            conn.send_message(mime, from_addr=sender, to_addrs=[to_email])
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError):
            raise  # answers on a working connection
        except FinalReplyLost:
            self._drop()  # the conversation's state is unknown: the next message gets a new connection
            raise
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError):
            self._drop()
            raise
