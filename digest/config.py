"""Settings from digest.toml and the environment: the one place configuration keys are named.

Each key is declared once below, in pydantic models: its name, type, default, constraints and help.
`load_settings` reads the file through them, and `commented_toml` writes the commented file that
`digest init` leaves from the same declarations, so the file and the code cannot disagree. A bad or
unknown key is a ConfigError naming the file and the key (and, for a misspelling, the nearest known
key), one line per problem: never a pydantic dump.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import secrets
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args, get_origin
from zoneinfo import ZoneInfo

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

# where the file and the database are: their rules live in digest.config_file (read without pydantic by
# `digest status` and `digest subscribers show`), named here too for every other reader of the settings
from digest import config_file
from digest.config_file import DEFAULT_CONFIG as DEFAULT_CONFIG
from digest.config_file import ENV_CONFIG as ENV_CONFIG
from digest.config_file import ENV_DATABASE_URL as ENV_DATABASE_URL
from digest.config_file import config_path as config_path
from digest.errors import ConfigError

ENV_SECRET_KEY = "DIGEST_SECRET_KEY"
ENV_SENDGRID_API_KEY = "SENDGRID_API_KEY"
ENV_SENDGRID_API_URL = "DIGEST_SENDGRID_API_URL"
#: the shortest secret accepted in the Inbound Parse URL (about 190 bits as token_urlsafe writes it)
INBOUND_SECRET_MIN = 32
SECRET_FILE = ".digest-secret"

FILE_HEADER = """\
digest.toml: the configuration of one publication's weekly digest, written by `digest init`.
Relative paths are relative to this file. A line `#key = value` shows a key's default: remove the `#`
to change it. Secrets never go here: they come from the environment (DIGEST_SECRET_KEY signs reader
links, SENDGRID_API_KEY, and the SMTP password variable named by delivery.smtp.password_env)."""


class _Invalid(ValueError):
    """A validator's reason, optionally about a key below the one being validated (`url` of [appeal])."""

    def __init__(self, reason: str, key: str = "") -> None:
        super().__init__(reason)
        self.key = key


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise _Invalid(f"must be an http(s) URL, not {value!r}")
    return value.rstrip("/")


def _email(value: str) -> str:
    if "@" not in value:
        raise _Invalid(f"{value!r} is not an email address")
    return value


def _time_zone(value: str) -> str:
    try:
        return config_file.time_zone(value)  # the rule `digest status` reads it by, without pydantic
    except ValueError as e:
        raise _Invalid(str(e)) from None


HttpURL = Annotated[str, AfterValidator(_http_url)]
Email = Annotated[str, AfterValidator(_email)]
TimeZone = Annotated[str, AfterValidator(_time_zone)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0)]


def _env(field: FieldInfo) -> str:
    """The environment variable that overrides a key, declared beside it as json_schema_extra={"env": ...}."""
    extra = field.json_schema_extra
    return str(extra.get("env", "")) if isinstance(extra, dict) else ""


class _Table(BaseModel):
    """A table of digest.toml: values typed as TOML types them (strict), unknown keys refused, frozen."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _from_toml(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # an empty string is an unset key, as it always was: a required key left "" is reported missing
        # and an optional one takes its default; TOML arrays become the tuples of a frozen model
        table = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if v != ""}
        for name, field in cls.model_fields.items():
            env = _env(field)
            if env and os.environ.get(env):
                table[name] = os.environ[env]
        return table


class Publication(_Table):
    name: str = Field(description="The publication's name: the email's title and the archive's heading.")
    site_url: HttpURL = Field(description="The publication's own website (the masthead links here).")
    public_url: HttpURL = Field(
        description="Where `digest serve` answers: links in the email (unsubscribe, preferences, archive) "
                    "point here.")
    from_email: Email = Field(description="The sender's address.")
    from_name: str = Field(default="", description="The sender's name as readers see it.")
    reply_to: str = Field(default="", description="Where replies go (empty: from_email).")
    postal_address: str = Field(
        description="Sender identification, required in every email's footer (Spam Act 2003, CAN-SPAM).")
    timezone: TimeZone = Field(
        default=config_file.DEFAULT_TIMEZONE,
        description="The publication's time zone (IANA name): the schedule and the dates in the email are in it.")

    @model_validator(mode="before")
    @classmethod
    def _reply_to_sender(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("reply_to") and isinstance(data.get("from_email"), str):
            return {**data, "reply_to": data["from_email"]}
        return data

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Sources(_Table):
    feeds: tuple[str, ...] = Field(default=(), description="RSS 2.0 / Atom feeds: URLs or file paths.")
    directory: str = Field(
        default="",
        description="The supplier directory: CSV (name,url,summary,categories,logo,tier) or JSON, a path or a URL.")
    window_days: Count = Field(default=7, description="Articles since the last issue, at most this many days back.")
    max_articles: Count = Field(default=8, description="Articles with a summary: the top story and the latest news.")
    headlines: Count = Field(default=6, description='"More news": date and title only.')
    featured_listings: Count = Field(default=3, description="Suppliers featured per issue.")
    rotation_issues: Count = Field(
        default=4, description="No supplier featured twice within this many issues (unless there are too few).")
    timeout_seconds: Seconds = Field(default=10.0, description="One feed or directory download.")
    max_feed_bytes: int = Field(default=5_000_000, gt=0, description="A larger feed is refused, not read.")
    stale_runs: Count = Field(
        default=3, description="A feed that brings nothing new this many runs in a row is reported as stale.")
    summary_chars: Count = Field(default=240, description="An article's summary is cut to about this many characters.")
    sponsored_label: str = Field(
        default="Sponsored",
        description="The label on listings of the paid (`featured`) tier, so paid placement is told apart from "
                    "editorial content.")


class AppealVariant(_Table):
    """One appeal: the main one is [appeal] itself; further ones are [[appeal.variants]]."""

    key: str = Field(
        default="",
        description="Its name in the editions and the report (default v1, v2, ... in order, and thank_you).")
    title: str = Field(description="The heading.")
    body: str = Field(description="The text; blank lines separate paragraphs.")
    button: str = Field(default="Subscribe", description="The button's label.")
    url: str = Field(default="", description="Where the button leads (required, except for the thank-you).")


class Appeal(_Table):
    title: str = Field(default="", description="The appeal shown in each issue: its heading (empty: no appeal).")
    body: str = Field(default="", description="The appeal's text; blank lines separate paragraphs.")
    button: str = Field(default="Subscribe", description="The button's label.")
    url: str = Field(default="", description="Where the button leads (required with a title).")
    variants: tuple[AppealVariant, ...] = Field(
        default=(), description="Further appeals, shown in turn with the main one.")
    thank_you: AppealVariant | None = Field(
        default=None, description="Shown instead to readers who followed an appeal's link.")
    rotate: Literal["issue", "reader"] = Field(
        default="issue", description="Variants change with each issue, or are spread across the readers of one issue.")
    quiet_issues_after_click: Count = Field(
        default=4,
        description="A reader who followed an appeal's link sees none (or the thank-you) for this many issues.")

    @model_validator(mode="before")
    @classmethod
    def _variant_keys(cls, data: Any) -> Any:
        """Unnamed variants are v1, v2, ... in order, and the thank-you is thank_you."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("variants"), list | tuple):
            data["variants"] = tuple({"key": f"v{i + 1}", **v} if isinstance(v, dict) and not v.get("key") else v
                                     for i, v in enumerate(data["variants"]))
        thanks = data.get("thank_you")
        if isinstance(thanks, dict) and not thanks.get("key"):
            data["thank_you"] = {**thanks, "key": "thank_you"}
        return data

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.title and not self.url:
            raise _Invalid("is missing (an appeal with a title needs somewhere to lead)", key="url")
        for i, variant in enumerate(self.variants):
            if not variant.url:
                raise _Invalid("is missing", key=f"variants[{i}].url")
        keys = [v.key for v in (*self.all_variants(), self.thank_you) if v is not None]
        if len(set(keys)) != len(keys):
            raise _Invalid(f"variant keys must differ (they name the editions and the report): {', '.join(keys)}")
        return self

    def all_variants(self) -> tuple[AppealVariant, ...]:
        """The main appeal first, then any extra variants."""
        main = AppealVariant(key="main", title=self.title, body=self.body, button=self.button,
                             url=self.url) if self.title else None
        return tuple(v for v in (main, *self.variants) if v is not None)


class SMTPSettings(_Table):
    host: str = Field(default="localhost", description="The SMTP server.")
    port: int = Field(default=25, ge=1, le=65535,
                      description="Its port: 587 for submission with STARTTLS, 465 for TLS.")
    security: Literal["none", "starttls", "tls"] = Field(default="starttls",
                                                         description="How the connection is secured.")
    username: str = Field(default="", description="The login (empty: no login).")
    password_env: str = Field(default="DIGEST_SMTP_PASSWORD",
                              description="The environment variable that holds the password (never this file).")
    max_per_second: float = Field(default=0.0, ge=0, description="Messages per second at most (0: no cap).")
    timeout_seconds: Seconds = Field(default=30.0, description="One SMTP conversation step.")
    data_timeout_seconds: Seconds = Field(
        default=600.0,
        description="How long to wait for the reply after a message's final dot (RFC 5321 4.5.3.2.6: 10 "
                    "minutes). No reply in time: that message's fate is unknown, never sent again by itself.")

    @property
    def password(self) -> str:
        return os.environ.get(self.password_env, "")


class SendGridSettings(_Table):
    api_url: HttpURL = Field(default="https://api.sendgrid.com", description="The API's address.",
                             json_schema_extra={"env": ENV_SENDGRID_API_URL})
    concurrency: int = Field(default=4, ge=1, description="mail/send requests in flight at once.")
    # SendGrid's v3 mail/send takes at most 1000 personalizations per request
    # (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send)
    batch_size: int = Field(default=1000, ge=1, le=1000, description="Readers per request (SendGrid's limit is 1000).")
    max_retries: Count = Field(default=5, description="Retries of a request after a 5xx or a dropped connection.")
    webhook_public_key: str = Field(default="", description="The Signed Event Webhook's verification key (base64 DER).")
    webhook_max_age_seconds: int = Field(
        default=600, ge=1, description="An event webhook call signed longer ago than this is refused (replays).")
    timeout_seconds: Seconds = Field(default=60.0, description="One mail/send request.")
    backoff_seconds: float = Field(
        default=0.5, ge=0,
        description="The first retry's delay after a 5xx or a dropped connection (doubles, with jitter).")
    retry_unanswered: bool = Field(
        default=False,
        description="A request whose connection dropped after it was sent in full (no answer) is sent again (true), "
                    "or its readers are left of unknown fate for `digest deliveries resolve` (false: exactly once "
                    "first, never a possible duplicate).")
    # SendGrid's scheduled sends: send_at at most 72 h ahead, a batch cancellable until 10 minutes before
    # it (https://www.twilio.com/docs/sendgrid/api-reference/cancel-scheduled-sends)
    schedule_ahead_minutes: int = Field(
        default=15, ge=0, le=72 * 60 - 1,
        description="Each request is scheduled (send_at) at least this far ahead, in its own batch, so a request "
                    "whose answer was lost can be cancelled and sent again, and an issue recalled; at least 11 to "
                    "leave time for SendGrid's 10-minute cancel notice. 0: sent at once (no recovery, no recall).")

    @property
    def api_key(self) -> str:
        return os.environ.get(ENV_SENDGRID_API_KEY, "")


class Delivery(_Table):
    transport: Literal["outbox", "smtp", "sendgrid"] = Field(default="outbox", description="How the email goes out.")
    outbox_dir: str = Field(default="outbox", description='One .eml file per reader here (transport = "outbox").')
    list: str = Field(default="weekly", description="The list whose active members receive the digest.")
    lease_seconds: int = Field(
        default=60, ge=2,
        description="A send worker's claim on its batches lasts this long and is renewed while it works; the "
                    "batches of a worker silent longer are taken over by another (PostgreSQL, several workers).")
    allow_http_public_url: bool = Field(
        default=False,
        description="Let smtp or sendgrid send with an http:// publication.public_url: for a test setup only, since "
                    "Gmail and Yahoo ignore one-click unsubscribe links that are not https (RFC 8058).")
    click_redirect: bool = Field(
        default=False,
        description="SMTP and outbox copies: article, listing and appeal links go through public_url/r/<signed "
                    "token>, which records the click for the reports and redirects. Privacy: it records which "
                    "reader followed which link when (not the IP or browser); say so in your privacy notice. "
                    "Ignored with SendGrid, whose own click tracking reports the URL.")
    unsubscribe_mailbox: str = Field(
        default="",
        description="An address whose mail SendGrid Inbound Parse posts to /webhooks/inbound/<secret> (e.g. "
                    "unsubscribe@inbound.example.org): each reader's List-Unsubscribe then also offers "
                    "mailto:unsubscribe+TOKEN@..., which unsubscribes that reader. Empty (or no secret): no "
                    "mailto: at all, since nothing would act on it.")
    inbound_secret_env: str = Field(
        default="DIGEST_INBOUND_SECRET",
        description="The environment variable holding the secret path segment of the Inbound Parse URL "
                    "(at least 32 characters; never this file).")
    smtp: SMTPSettings = Field(default_factory=SMTPSettings, description='The SMTP transport (transport = "smtp").')
    sendgrid: SendGridSettings = Field(
        default_factory=SendGridSettings,
        description=f'The SendGrid transport (transport = "sendgrid"); its API key comes from {ENV_SENDGRID_API_KEY}.')


    @field_validator("unsubscribe_mailbox")
    @classmethod
    def _mailbox(cls, value: str) -> str:
        """A plain ASCII address whose local part leaves room for `+TOKEN` within RFC 5321's 64 characters."""
        if not value:
            return value
        local, at, domain = value.strip().rpartition("@")
        if not at or not re.fullmatch(r"[A-Za-z0-9._-]{1,20}", local) \
                or not re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}", domain):
            raise _Invalid(f"{value!r} is not an address like unsubscribe@inbound.example.org (ASCII letters, digits, "
                           "dot, dash or underscore; a local part of at most 20 characters and no '+')")
        return f"{local}@{domain.lower()}"

    @property
    def inbound_secret(self) -> str:
        """The Inbound Parse URL's secret; empty when unset or too short to be one (then no mailto: is offered)."""
        secret = os.environ.get(self.inbound_secret_env, "").strip()
        return secret if len(secret) >= INBOUND_SECRET_MIN else ""


class Schedule(_Table):
    day_of_week: str = Field(default="mon", description="The send day(s), cron style: mon, mon-fri, mon,thu.")
    hour: int = Field(default=7, description="The send's hour (0..23) in publication.timezone.")
    minute: int = Field(default=0, description="The send's minute (0..59).")
    review_hours: int = Field(default=24, description="The draft is built this long before the send, for the editors.")
    min_articles: Count = Field(default=1, description="Fewer new articles than this make an empty issue.")
    when_empty: Literal["skip", "send", "hold"] = Field(default="skip", description="What an empty issue does.")
    if_not_approved: Literal["send", "hold"] = Field(
        default="hold", description="What a draft nobody approved does at the send time.")
    misfire_grace_seconds: int = Field(
        default=3600, ge=1, description="A send missed (the scheduler was down) still runs this late.")
    editors: tuple[Email, ...] = Field(default=(), description="Who is mailed the draft to review.")
    check_links: bool = Field(
        default=True, description="Scheduled drafts check every link (false where the host has no outbound HTTP).")
    local_delivery: bool = Field(
        default=False,
        description="Each reader gets the issue at the send's local clock time in their own time zone (a reader "
                    "without one: publication.timezone); the draft is built review_hours before the earliest zone's "
                    "moment.")
    lock_expiry_seconds: int = Field(
        default=120, ge=30,
        description="A scheduler silent this long is taken for dead and its lock can be taken over (shorter would "
                    "let a standby take over from a live one between heartbeats).")


class Subscribers(_Table):
    confirm_expiry_days: int = Field(default=7, ge=1, description="A confirmation link works this long.")
    link_expiry_days: int = Field(
        default=365, ge=60,
        description="Unsubscribe and preference links work this long (an unsubscribe link must keep working well "
                    "after the send: CAN-SPAM asks 30 days).")
    resend_confirm_minutes: Count = Field(
        default=60, description="A second sign-up within this time sends no second confirmation email.")
    counts_refresh_minutes: int = Field(
        default=5, ge=1,
        description="The admin's list counts are recounted this often by `digest schedule` (and after an import); "
                    "above 10,000 memberships the pages show the last count and its age.")


class Web(_Table):
    """`digest serve`: sessions of editors and admins, and the limits on public forms (counted in the
    database, so shared by every worker and web node)."""

    session_hours: int = Field(default=12, ge=1, description="An editor's login lasts this long.")
    subscribe_limit: int = Field(default=5, ge=1, description="Sign-ups per IP address (shared by all workers) ...")
    subscribe_window_seconds: int = Field(default=600, ge=1, description="... within this window.")
    login_limit: int = Field(default=10, ge=1, description="Login attempts per IP address ...")
    login_window_seconds: int = Field(default=600, ge=1, description="... within this window.")
    forwarded_allow_ips: str = Field(
        default="", description='Proxies trusted for X-Forwarded-For (uvicorn), e.g. "127.0.0.1" (empty: ignored).')
    page_size: int = Field(default=50, ge=10, le=500, description="Subscribers per admin page.")
    media_dir: str = Field(
        default="", description="A folder of pictures `digest serve` serves at /media/ (the demo's sample images and "
                                "logos; in production they live on your own site). Empty: nothing served.")


class Database(_Table):
    # validate_default: the default is a relative path too, resolved against the config file's folder like
    # any other (without it, an empty or absent url put the database in the working folder)
    url: str = Field(default=config_file.DEFAULT_DATABASE_URL, validate_default=True,
                     description="SQLAlchemy URL: sqlite:///relative/to/this/file.db or "
                                 "postgresql+psycopg://user@host/db.",
                     json_schema_extra={"env": ENV_DATABASE_URL})

    @field_validator("url")
    @classmethod
    def _database_url(cls, url: str, info: ValidationInfo) -> str:
        try:  # the rule lives in digest.config_file: `digest status` finds the database by it, without pydantic
            return config_file.database_url(url, (info.context or {}).get("base_dir"))
        except ValueError as e:
            raise _Invalid(str(e)) from None


class DigestFile(_Table):
    """digest.toml: its sections, in the order `digest init` writes them."""

    publication: Publication = Field(description="Who sends the digest.")
    sources: Sources = Field(default_factory=Sources, description="What goes into an issue.")
    appeal: Appeal = Field(default_factory=Appeal, description="The appeal box (for support, a subscription).")
    delivery: Delivery = Field(default_factory=Delivery, description="How issues reach the readers.")
    schedule: Schedule = Field(default_factory=Schedule, description="`digest schedule`: when drafts are built "
                                                                     "and issues sent.")
    subscribers: Subscribers = Field(default_factory=Subscribers, description="Reader links and sign-ups.")
    web: Web = Field(default_factory=Web, description=Web.__doc__ or "")
    database: Database = Field(default_factory=Database, description="Where the ledger, readers and issues live.")


class Settings(DigestFile):
    """What a command, the scheduler or the web app runs with: the file's tables, where the file is, and
    the signing key (never in the file, never in a repr)."""

    path: Path
    secret_key: str = Field(repr=False)

    @property
    def database_url(self) -> str:
        return self.database.url

    @property
    def base_dir(self) -> Path:
        """Relative paths in the config are relative to the config file's folder."""
        return self.path.parent

    def resolve(self, value: str) -> str:
        """A path-or-URL from the config: URLs as they are, paths made absolute next to the config."""
        if "://" in value:
            return value
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (self.base_dir / p).resolve())


def public_url_problem(settings: Settings) -> str:
    """Why sending for real with this public_url must stop ("" when it may go): the links in the email
    (one-click unsubscribe, RFC 8058 §3.1; preferences; the archive) must be https for a real transport."""
    if settings.delivery.transport == "outbox" or settings.publication.public_url.startswith("https://"):
        return ""
    if settings.delivery.allow_http_public_url:
        return ""
    return (f"{settings.path}: publication.public_url {settings.publication.public_url!r} is not https: Gmail and "
            f"Yahoo ignore one-click unsubscribe without it (RFC 8058); use an https address, or set "
            f"delivery.allow_http_public_url = true for a test setup")


def load_settings(path: str | os.PathLike[str] | None = None, *, create_secret: bool = False) -> Settings:
    """Read and validate the config file, with the environment's overrides and the signing key."""
    cfg, data = config_file.read(path)
    data.setdefault("database", {})  # validated with the context below even when absent (relative sqlite)
    try:
        parsed = DigestFile.model_validate(data, context={"base_dir": cfg.parent})
    except ValidationError as e:
        raise ConfigError("\n".join(_problem(cfg, error) for error in _first_causes(e.errors()))) from None
    key = _secret_key(cfg, parsed.database.url, create_secret)
    return Settings(**dict(parsed), path=cfg, secret_key=key)


def _secret_key(cfg: Path, database_url: str, create: bool) -> str:
    """The signing key: from the environment, else a generated key kept next to the database (never TOML)."""
    key = os.environ.get(ENV_SECRET_KEY, "")
    if key:
        if len(key) < 16:
            raise ConfigError(f"{ENV_SECRET_KEY} is too short: use at least 16 random characters")
        return key
    folder = Path(database_url.removeprefix("sqlite:///")).parent if database_url.startswith("sqlite:///") \
        else cfg.parent
    secret = folder / SECRET_FILE
    if secret.exists():
        return secret.read_text(encoding="utf-8").strip()
    if not create:
        raise ConfigError(f"{ENV_SECRET_KEY} is not set (and no {secret} exists): "
                          f"set it to a long random string, e.g. `export {ENV_SECRET_KEY}=$(openssl rand -hex 32)`")
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
    secret.chmod(0o600)
    return secret.read_text(encoding="utf-8").strip()


# --- one line per validation problem -----------------------------------------------------------------

_REASONS = {
    "missing": "is missing",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "tuple_type": "must be a list",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "string_too_short": "must not be empty",
}
_RULES = {annotated_types.Ge: ("ge", "at least"), annotated_types.Gt: ("gt", "more than"),
          annotated_types.Le: ("le", "at most"), annotated_types.Lt: ("lt", "less than")}
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}


def _model_in(annotation: Any) -> type[_Table] | None:
    """The table type a field holds: itself, or inside `X | None` or `tuple[X, ...]`."""
    if get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, _Table):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def _field_at(loc: tuple[int | str, ...]) -> tuple[type[_Table] | None, FieldInfo | None]:
    """The table that holds the key at `loc`, and the key's field (None where unknown)."""
    table: type[_Table] | None = DigestFile
    field: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int):  # an item of an array of tables: the same table type
            continue
        if field is not None:
            table = _model_in(field.annotation)
        field = table.model_fields.get(part) if table is not None else None
        if field is None:
            return table, None
    return table, field


def _dotted(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _first_causes(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Unknown keys first; and a missing key is not reported when a misspelling of it is (`[publicatio]`
    is one mistake, not two)."""
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    suggested = {(*e["loc"][:-1], *difflib.get_close_matches(str(e["loc"][-1]), known, n=1))
                 for e in unknown for known in [_known_keys(e["loc"])]}
    rest = [e for e in errors if e["type"] != "extra_forbidden"
            and not (e["type"] == "missing" and tuple(e["loc"]) in suggested)]
    return unknown + rest


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    table, _ = _field_at(loc)
    return list(table.model_fields) if table is not None else []


def _problem(cfg: Path, error: ErrorDetails) -> str:
    """One validation error as one line: the file, the full key, the reason (and a suggestion)."""
    loc, kind, value, ctx = error["loc"], error["type"], error.get("input"), error.get("ctx") or {}
    key = _dotted(loc)
    table, field = _field_at(loc)
    if kind == "extra_forbidden":
        known = _known_keys(loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        array = isinstance(value, list | tuple) and bool(value) and all(isinstance(v, dict) for v in value)
        if isinstance(value, dict) or array:
            prefix = _dotted(loc[:-1]) + "." if len(loc) > 1 else ""
            left, right = ("[[", "]]") if array else ("[", "]")
            hint = f"did you mean {left}{prefix}{close[0]}{right}?" if close else \
                "known sections here: " + ", ".join(f"[{prefix}{k}]" for k in known)
            return f"{cfg}: unknown section {left}{key}{right} ({hint})"
        hint = f"did you mean `{close[0]}`?" if close else f"known keys here: {', '.join(known)}"
        return f"{cfg}: unknown key {key} ({hint})"
    if field is not None and _model_in(field.annotation) is not None and kind == "missing":
        return f"{cfg}: [{key}] is missing"
    where = f"{key} (from {_env(field)})" if field is not None and os.environ.get(_env(field)) else key
    if kind == "value_error" and isinstance(ctx.get("error"), _Invalid):
        invalid: _Invalid = ctx["error"]
        if invalid.key:
            where = f"{where}.{invalid.key}" if where else invalid.key
        return f"{cfg}: {where} {invalid}"
    if kind == "literal_error" and field is not None:
        choices = ", ".join(str(c) for c in get_args(field.annotation))
        return f"{cfg}: {where} must be one of {choices}, not {value!r}"
    if kind in _BOUNDS:
        name, words = _BOUNDS[kind]
        return f"{cfg}: {where} must be {words} {ctx.get(name)}, not {value!r}"
    reason = _REASONS.get(kind) or error["msg"][:1].lower() + error["msg"][1:]
    return f"{cfg}: {where} {reason}" + ("" if kind == "missing" else f", not {value!r}")


# --- the commented file `digest init` writes ---------------------------------------------------------

def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if "\n" in value:  # a multi-line basic string; its first newline is not part of the value
            return '"""\n' + value.replace("\\", "\\\\").replace('"', '\\"') + '"""'
        return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are TOML's basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def help_text(field: FieldInfo) -> str:
    """A key's help as `digest init` writes it: the description, its choices, bounds and environment."""
    notes: list[str] = []
    if get_origin(field.annotation) is Literal:
        notes.append(" | ".join(str(c) for c in get_args(field.annotation)))
    for rule in field.metadata:
        for cls, (name, word) in _RULES.items():
            if isinstance(rule, cls):
                notes.append(f"{word} {getattr(rule, name)}")
    if _env(field):
        notes.append(f"the environment's {_env(field)} overrides it")
    text = field.description or ""
    if not notes:
        return text
    stop = "." if text.endswith(".") and not text.endswith("...") else ""
    return f"{text.removesuffix(stop)} ({'; '.join(notes)}){stop}"


def _comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, width=100, initial_indent=f"# {indent}", subsequent_indent=f"# {indent}")


def _write_table(lines: list[str], name: str, model: type[_Table], help_: str,
                 values: Mapping[str, Any]) -> None:
    lines += ["", *_comment(help_), f"[{name}]"]
    tables: list[tuple[str, FieldInfo]] = []
    for key, field in model.model_fields.items():
        inner = _model_in(field.annotation)
        if inner is not None and field.annotation is inner:
            tables.append((key, field))  # a sub-table follows this table's own keys
            continue
        lines += _comment(help_text(field))
        if inner is not None:  # an optional table or an array of tables: documented, not written
            header = f"[[{name}.{key}]]" if get_origin(field.annotation) is tuple else f"[{name}.{key}]"
            lines += _comment(f"{'Each' if header.startswith('[[') else 'The'} {header} table has:")
            for sub, subfield in inner.model_fields.items():
                lines += _comment(f"{sub}: {help_text(subfield)}", indent="  ")
        elif key in values:
            lines.append(f"{key} = {_toml(values[key])}")
        elif field.is_required():
            raise ValueError(f"the sample has no value for the required key {name}.{key}")
        else:  # the default, commented out: the code stays its owner until the key is uncommented
            lines.append(f"#{key} = {_toml(field.get_default(call_default_factory=True))}")
    for key, field in tables:
        inner = _model_in(field.annotation)
        assert inner is not None
        _write_table(lines, f"{name}.{key}", inner, field.description or "", values.get(key, {}))


def commented_toml(values: Mapping[str, Mapping[str, Any]]) -> str:
    """digest.toml as `digest init` writes it: every section and key of the schema in order, each with its
    help; `values` (the sample) are written as set, every other key as its default, commented out."""
    lines = _comment(FILE_HEADER.replace("\n", " "))
    for name, field in DigestFile.model_fields.items():
        model = _model_in(field.annotation)
        assert model is not None
        _write_table(lines, name, model, field.description or "", values.get(name, {}))
    return "\n".join(lines) + "\n"
