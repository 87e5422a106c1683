"""One reader's full MIME message (multipart/alternative, text then HTML), for the outbox and SMTP."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import default
from email.utils import format_datetime, formataddr, make_msgid

from digest.config import Settings
from digest.deliver.protocol import Message, sender
from digest.render import personalize
from digest.store import utcnow

#: Headers folded only past RFC 5322's hard limit (998, §2.1.1), so a long subject is not broken right after
#: "Subject:" (which some clients show as a leading space). smtplib writes CRLF on the wire itself.
POLICY = default.clone(max_line_length=998)
#: The parts' bodies are encoded under this one: RFC 2045 §6.7 (5) limits quoted-printable lines to 76
#: characters (SpamAssassin's MIME_QP_LONG_LINE; relays that re-encode longer lines break DKIM).
BODY_POLICY = default.clone(max_line_length=76)


def build(settings: Settings, message: Message, *, subject_prefix: str = "") -> EmailMessage:
    pub = settings.publication
    msg = EmailMessage(policy=BODY_POLICY)
    msg["Subject"] = subject_prefix + message.edition.subject
    msg["From"] = sender(settings)
    msg["To"] = formataddr((message.to_name, message.to_email)) if message.to_name else message.to_email
    msg["Reply-To"] = pub.reply_to
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = make_msgid(idstring=f"{message.issue_number}.{message.delivery_id}",
                                   domain=pub.from_email.rsplit("@", 1)[-1])
    for name, value in message.headers.items():
        msg[name] = value
    msg["X-Digest-Issue"] = str(message.issue_number)
    msg.set_content(personalize(message.edition.text, message.values))
    # quoted-printable named outright: left to choose, the email package encodes the HTML twice to compare
    msg.add_alternative(personalize(message.edition.html, message.values), subtype="html", cte="quoted-printable")
    # the bodies are encoded now (76); the headers are folded when the message is written, by the root's policy
    msg.policy = POLICY
    return msg
