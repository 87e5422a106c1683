"""Delivery: one module per transport over one small interface (protocol.Transport); the ledger and the
send loop every transport goes through are `ledger` and `loop`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from digest.config import Settings, public_url_problem
from digest.errors import ConfigError

if TYPE_CHECKING:  # the CLI imports this package at start-up: keep it light
    from digest.deliver.protocol import Message, Outcome, Transport


def make_transport(settings: Settings) -> Transport:
    """The transport named by `[delivery] transport`; a real one only with an https public_url (or the
    explicit test-setup key), checked after the transport's own settings."""
    transport = _transport(settings)
    problem = public_url_problem(settings)
    if problem:
        transport.close()
        raise ConfigError(problem)
    return transport


def _transport(settings: Settings) -> Transport:
    name = settings.delivery.transport
    if name == "outbox":
        from digest.deliver.outbox import OutboxTransport

        return OutboxTransport(settings)
    if name == "smtp":
        from digest.deliver.smtp import SMTPTransport

        return SMTPTransport(settings)
    if name == "sendgrid":
        from digest.deliver.sendgrid import SendGridTransport

        return SendGridTransport(settings)
    raise ConfigError(f"{settings.path}: delivery.transport {name!r} is not outbox, smtp or sendgrid")


def send_outside_ledger(settings: Settings, messages: list[Message],
                        transport: Transport | None = None) -> list[Outcome]:
    """Messages that are not part of an issue's send (confirmations, test copies, editor notices).

    Nothing is recorded in the deliveries ledger; the transport is closed afterwards.
    """
    transport = transport or make_transport(settings)
    try:
        return transport.send(messages)
    finally:
        transport.close()
