"""SMTP: the full MIME of each reader's copy over one reused connection, at a capped rate.

The connection is opened on first use and kept for every following message and batch; a dropped
connection (or a 421 "closing") is reopened and the message sent again, with a bounded number of
tries (digest.retry). A message the server did not answer with 250 was not accepted (RFC 5321
§4.1.1.4), so sending it again is right; a 4xx answer is transient (§4.2.1) and is tried again too.
A refused recipient is that reader's failure, not the send's; a refused login or sender stops the
send with the server's words.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage

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
    batch_size = 20  # small: a process killed mid-batch leaves at most this many readers of unknown fate
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
        self._conn: smtplib.SMTP | None = None
        self.connections = 0  # opened so far (reconnects show here)

    # -- the connection ------------------------------------------------------------------------------

    def _open(self) -> smtplib.SMTP:
        sm = self.smtp
        try:
            if sm.security == "tls":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(sm.host, sm.port, timeout=sm.timeout_seconds,
                                                      context=self.ssl_context)
            else:
                conn = smtplib.SMTP(sm.host, sm.port, timeout=sm.timeout_seconds)
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
        mime = build(self.settings, message)
        sender = self.settings.publication.from_email
        try:
            self.retrying(self._send_mime, mime, sender, message.to_email)
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
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError):
            self._drop()
            raise
