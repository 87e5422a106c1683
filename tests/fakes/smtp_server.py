"""A real SMTP server for the tests (aiosmtpd), on a free port, that records every accepted message.

Knobs for the failures a mail server really has: recipients it refuses (550) or defers (450 once), a
connection it drops in the middle of a message (before accepting it), a connection closed right after
it took a message (no reply to the final dot), a final 250 held back after the message was taken (a
slow scanner: the late reply of RFC 5321 §4.5.3.2.6), per-message delay (a slow server, for stopping a
send midway), STARTTLS with a certificate made here, and AUTH with a password.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    connection: int  # which connection (1, 2, ...) carried it

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class Recorder:
    """The handler: aiosmtpd calls handle_* per SMTP command."""

    refuse: set[str] = field(default_factory=set)  # 550 at RCPT
    defer_once: set[str] = field(default_factory=set)  # 450 at RCPT, the first time only
    drop_at: set[int] = field(default_factory=set)  # drop the connection at the n-th MAIL (1-based): mid-message
    close_after_dot: set[int] = field(default_factory=set)  # take the n-th message, then close without a reply
    hold_at: set[int] = field(default_factory=set)  # take the n-th message, then hold its 250 back...
    hold_seconds: float = 0.0  # ...this long
    delay_seconds: float = 0.0  # every message: taken, then its 250 after this long
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    rcpt_attempts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _data_seen: int = 0
    _mail_seen: int = 0

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,  # noqa: N802
                          responses: list[str]) -> list[str]:
        if not getattr(session, "counted", False):
            session.counted = True
            with self.lock:
                self.connections += 1
                session.number = self.connections
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          mail_options: list[str]) -> str:
        with self.lock:
            self._mail_seen += 1
            if self._mail_seen in self.drop_at:
                server.transport.close()  # gone in the middle of the message, long before its final dot
                return "421 gone"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        with self.lock:
            self.rcpt_attempts.append(address)
            if address in self.refuse:
                return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
            if address in self.defer_once:
                self.defer_once.discard(address)
                return f"450 4.2.1 <{address}>: mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self._data_seen += 1
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                                          getattr(session, "number", 0)))
            if self._data_seen in self.close_after_dot:
                server.transport.close()  # the message is taken, and the connection goes before the 250
                return "421 gone"
            wait = self.delay_seconds + (self.hold_seconds if self._data_seen in self.hold_at else 0.0)
        if wait:
            await asyncio.sleep(wait)  # the message is taken; only the answer is late
        return "250 2.0.0 Ok: queued"

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for m in self.received for r in m.rcpt_tos]


class _AnyPort(Controller):
    """aiosmtpd's Controller on port 0: the port the OS picked is read back before the server is used."""

    def _create_server(self):  # type: ignore[no-untyped-def]
        async def create():  # type: ignore[no-untyped-def]
            server = await self.loop.create_server(self._factory_invoker, host=self.hostname, port=0,
                                                   ssl=self.ssl_context)
            self.port = server.sockets[0].getsockname()[1]
            return server

        return create()


class SMTPServer:
    def __init__(self, recorder: Recorder | None = None, *, tls: tuple[Path, Path] | None = None,
                 password: tuple[str, str] | None = None) -> None:
        self.recorder = recorder or Recorder()
        kwargs: dict[str, Any] = {}
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            kwargs.update(tls_context=ctx, require_starttls=True)
        if password:
            def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == password
                return AuthResult(success=ok, handled=False)

            kwargs.update(authenticator=check, auth_required=True, auth_require_tls=bool(tls))
        self.controller = _AnyPort(self.recorder, hostname="127.0.0.1", port=0, **kwargs)

    @property
    def port(self) -> int:
        return self.controller.port

    def __enter__(self) -> SMTPServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made now (the client trusts it as its only CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
