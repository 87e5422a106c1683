"""Settings from digest.toml and the environment: the one place configuration keys are named.

Every key is read here and validated here, so the CLI, the scheduler and the web app see the same
values and a bad key is reported once, naming the key and the file.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.errors import ConfigError

DEFAULT_CONFIG = "digest.toml"
ENV_CONFIG = "DIGEST_CONFIG"
ENV_DATABASE_URL = "DIGEST_DATABASE_URL"
ENV_SECRET_KEY = "DIGEST_SECRET_KEY"
ENV_SENDGRID_API_KEY = "SENDGRID_API_KEY"
ENV_SENDGRID_API_URL = "DIGEST_SENDGRID_API_URL"
SECRET_FILE = ".digest-secret"


@dataclass(frozen=True)
class Publication:
    name: str
    site_url: str
    public_url: str
    from_email: str
    from_name: str
    reply_to: str
    postal_address: str
    timezone: str = "UTC"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Sources:
    feeds: tuple[str, ...] = ()
    directory: str = ""
    window_days: int = 7
    max_articles: int = 8
    headlines: int = 6
    featured_listings: int = 3
    rotation_issues: int = 4
    timeout_seconds: float = 10.0
    max_feed_bytes: int = 5_000_000
    stale_runs: int = 3
    summary_chars: int = 240


@dataclass(frozen=True)
class AppealVariant:
    key: str
    title: str
    body: str
    button: str
    url: str


@dataclass(frozen=True)
class Appeal:
    title: str = ""
    body: str = ""
    button: str = ""
    url: str = ""
    variants: tuple[AppealVariant, ...] = ()
    thank_you: AppealVariant | None = None
    rotate: str = "issue"  # "issue" | "reader"
    quiet_issues_after_click: int = 4

    def all_variants(self) -> tuple[AppealVariant, ...]:
        """The main appeal first, then any extra variants."""
        main = AppealVariant("main", self.title, self.body, self.button, self.url) if self.title else None
        return tuple(v for v in (main, *self.variants) if v is not None)


@dataclass(frozen=True)
class SMTPSettings:
    host: str = "localhost"
    port: int = 25
    security: str = "starttls"  # "none" | "starttls" | "tls"
    username: str = ""
    password_env: str = "DIGEST_SMTP_PASSWORD"
    max_per_second: float = 0.0  # 0: no cap
    timeout_seconds: float = 30.0

    @property
    def password(self) -> str:
        return os.environ.get(self.password_env, "")


@dataclass(frozen=True)
class SendGridSettings:
    api_url: str = "https://api.sendgrid.com"
    concurrency: int = 4
    batch_size: int = 1000
    max_retries: int = 5
    webhook_public_key: str = ""
    webhook_max_age_seconds: int = 600
    timeout_seconds: float = 60.0  # one mail/send request
    backoff_seconds: float = 0.5  # first retry delay after a 5xx or a dropped connection (doubles, with jitter)
    #: a request whose connection dropped after it was fully sent (no answer) is sent again (true), or its
    #: readers are left of unknown fate for `digest deliveries resolve` (false: never a possible duplicate)
    retry_unanswered: bool = False  # exactly once first: an unanswered request is left for an admin

    @property
    def api_key(self) -> str:
        return os.environ.get(ENV_SENDGRID_API_KEY, "")


@dataclass(frozen=True)
class Delivery:
    transport: str = "outbox"
    outbox_dir: str = "outbox"
    list: str = "weekly"
    smtp: SMTPSettings = field(default_factory=SMTPSettings)
    sendgrid: SendGridSettings = field(default_factory=SendGridSettings)


@dataclass(frozen=True)
class Schedule:
    day_of_week: str = "mon"
    hour: int = 7
    minute: int = 0
    review_hours: int = 24
    min_articles: int = 1
    when_empty: str = "skip"  # skip | send | hold
    if_not_approved: str = "hold"  # send | hold
    misfire_grace_seconds: int = 3600
    editors: tuple[str, ...] = ()
    check_links: bool = True  # scheduled drafts HEAD every link (false where the host has no outbound HTTP)
    lock_expiry_seconds: int = 120  # a scheduler silent this long is taken for dead; its lock can be taken over


@dataclass(frozen=True)
class Subscribers:
    confirm_expiry_days: int = 7
    link_expiry_days: int = 365
    resend_confirm_minutes: int = 60


@dataclass(frozen=True)
class Web:
    """`digest serve`: sessions of editors and admins, and the per-process limits on public forms."""

    session_hours: int = 12
    subscribe_limit: int = 5  # /subscribe posts per IP per window (in-process sliding window)
    subscribe_window_seconds: int = 600
    login_limit: int = 10  # login attempts per IP per window
    login_window_seconds: int = 600
    forwarded_allow_ips: str = ""  # proxies trusted for X-Forwarded-For (uvicorn), e.g. "127.0.0.1"
    page_size: int = 50  # subscribers per admin page


@dataclass(frozen=True)
class Settings:
    path: Path
    publication: Publication
    sources: Sources
    appeal: Appeal
    delivery: Delivery
    database_url: str
    secret_key: str
    schedule: Schedule = field(default_factory=Schedule)
    subscribers: Subscribers = field(default_factory=Subscribers)
    web: Web = field(default_factory=Web)

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


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG)


def _section(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return value


def _get(table: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str, path: Path,
         default: Any = ..., choices: tuple[str, ...] = ()) -> Any:
    if key not in table or table[key] in ("", None):
        if default is ...:
            raise ConfigError(f"{path}: {where}.{key} is missing")
        return default
    value = table[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"{path}: {where}.{key} must be a {names}, not {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"{path}: {where}.{key} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _positive(value: int, key: str, path: Path) -> int:
    if value < 0:
        raise ConfigError(f"{path}: {key} must not be negative, not {value}")
    return value


def _url(value: str, key: str, path: Path) -> str:
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: {key} must be an http(s) URL, not {value!r}")
    return value.rstrip("/")


def _variant(table: dict[str, Any], key: str, where: str, path: Path, *, url_required: bool = True) -> AppealVariant:
    return AppealVariant(
        key=str(table.get("key", key)),
        title=_get(table, "title", str, where, path),
        body=_get(table, "body", str, where, path),
        button=_get(table, "button", str, where, path, "Subscribe"),
        url=_get(table, "url", str, where, path, ... if url_required else ""),  # a thank-you may ask nothing
    )


def load_settings(path: str | os.PathLike[str] | None = None, *, create_secret: bool = False) -> Settings:
    """Read and validate the config file, then apply environment overrides."""
    cfg = config_path(path)
    if not cfg.exists():
        raise ConfigError(f"{cfg}: config file not found (run `digest init` to write one, or pass --config)")
    try:
        data = tomllib.loads(cfg.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{cfg}: not valid TOML: {e}") from None
    cfg = cfg.resolve()

    pub = _section(data, "publication", cfg)
    tz = _get(pub, "timezone", str, "publication", cfg, "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{cfg}: publication.timezone {tz!r} is not a known time zone") from None
    from_email = _get(pub, "from_email", str, "publication", cfg)
    if "@" not in from_email:
        raise ConfigError(f"{cfg}: publication.from_email {from_email!r} is not an email address")
    publication = Publication(
        name=_get(pub, "name", str, "publication", cfg),
        site_url=_url(_get(pub, "site_url", str, "publication", cfg), "publication.site_url", cfg),
        public_url=_url(_get(pub, "public_url", str, "publication", cfg), "publication.public_url", cfg),
        from_email=from_email,
        from_name=_get(pub, "from_name", str, "publication", cfg, ""),
        reply_to=_get(pub, "reply_to", str, "publication", cfg, from_email),
        postal_address=_get(pub, "postal_address", str, "publication", cfg),
        timezone=tz,
    )

    src = _section(data, "sources", cfg)
    feeds = _get(src, "feeds", list, "sources", cfg, [])
    if not all(isinstance(f, str) for f in feeds):
        raise ConfigError(f"{cfg}: sources.feeds must be a list of URLs or paths")
    sources = Sources(
        feeds=tuple(feeds),
        directory=_get(src, "directory", str, "sources", cfg, ""),
        window_days=_positive(_get(src, "window_days", int, "sources", cfg, 7), "sources.window_days", cfg),
        max_articles=_positive(_get(src, "max_articles", int, "sources", cfg, 8), "sources.max_articles", cfg),
        headlines=_positive(_get(src, "headlines", int, "sources", cfg, 6), "sources.headlines", cfg),
        featured_listings=_positive(
            _get(src, "featured_listings", int, "sources", cfg, 3), "sources.featured_listings", cfg),
        rotation_issues=_positive(
            _get(src, "rotation_issues", int, "sources", cfg, 4), "sources.rotation_issues", cfg),
        timeout_seconds=_get(src, "timeout_seconds", float, "sources", cfg, 10.0),
        max_feed_bytes=_get(src, "max_feed_bytes", int, "sources", cfg, 5_000_000),
        stale_runs=_get(src, "stale_runs", int, "sources", cfg, 3),
        summary_chars=_get(src, "summary_chars", int, "sources", cfg, 240),
    )

    ap = _section(data, "appeal", cfg)
    variants = tuple(_variant(v, f"v{i + 1}", f"appeal.variants[{i}]", cfg)
                     for i, v in enumerate(_get(ap, "variants", list, "appeal", cfg, [])))
    thank = _get(ap, "thank_you", dict, "appeal", cfg, None)
    appeal = Appeal(
        title=_get(ap, "title", str, "appeal", cfg, ""),
        body=_get(ap, "body", str, "appeal", cfg, ""),
        button=_get(ap, "button", str, "appeal", cfg, "Subscribe"),
        url=_get(ap, "url", str, "appeal", cfg, ""),
        variants=variants,
        thank_you=_variant(thank, "thank_you", "appeal.thank_you", cfg, url_required=False) if thank else None,
        rotate=_get(ap, "rotate", str, "appeal", cfg, "issue", choices=("issue", "reader")),
        quiet_issues_after_click=_get(ap, "quiet_issues_after_click", int, "appeal", cfg, 4),
    )
    if appeal.title and not appeal.url:
        raise ConfigError(f"{cfg}: appeal.url is missing")
    appeal_keys = [v.key for v in (*appeal.all_variants(), appeal.thank_you) if v is not None]
    if len(set(appeal_keys)) != len(appeal_keys):
        raise ConfigError(f"{cfg}: appeal variant keys must differ (they name the editions and the report): "
                          f"{', '.join(appeal_keys)}")

    dl = _section(data, "delivery", cfg)
    sm = _section(dl, "smtp", cfg)
    sg = _section(dl, "sendgrid", cfg)
    delivery = Delivery(
        transport=_get(dl, "transport", str, "delivery", cfg, "outbox", choices=("outbox", "smtp", "sendgrid")),
        outbox_dir=_get(dl, "outbox_dir", str, "delivery", cfg, "outbox"),
        list=_get(dl, "list", str, "delivery", cfg, "weekly"),
        smtp=SMTPSettings(
            host=_get(sm, "host", str, "delivery.smtp", cfg, "localhost"),
            port=_get(sm, "port", int, "delivery.smtp", cfg, 25),
            security=_get(sm, "security", str, "delivery.smtp", cfg, "starttls",
                          choices=("none", "starttls", "tls")),
            username=_get(sm, "username", str, "delivery.smtp", cfg, ""),
            password_env=_get(sm, "password_env", str, "delivery.smtp", cfg, "DIGEST_SMTP_PASSWORD"),
            max_per_second=_get(sm, "max_per_second", float, "delivery.smtp", cfg, 0.0),
            timeout_seconds=_get(sm, "timeout_seconds", float, "delivery.smtp", cfg, 30.0),
        ),
        sendgrid=SendGridSettings(
            api_url=_url(os.environ.get(ENV_SENDGRID_API_URL)
                         or _get(sg, "api_url", str, "delivery.sendgrid", cfg, "https://api.sendgrid.com"),
                         "delivery.sendgrid.api_url", cfg),
            concurrency=max(1, _get(sg, "concurrency", int, "delivery.sendgrid", cfg, 4)),
            batch_size=min(1000, max(1, _get(sg, "batch_size", int, "delivery.sendgrid", cfg, 1000))),
            max_retries=_get(sg, "max_retries", int, "delivery.sendgrid", cfg, 5),
            webhook_public_key=_get(sg, "webhook_public_key", str, "delivery.sendgrid", cfg, ""),
            webhook_max_age_seconds=_get(sg, "webhook_max_age_seconds", int, "delivery.sendgrid", cfg, 600),
            timeout_seconds=_get(sg, "timeout_seconds", float, "delivery.sendgrid", cfg, 60.0),
            backoff_seconds=_get(sg, "backoff_seconds", float, "delivery.sendgrid", cfg, 0.5),
            retry_unanswered=_get(sg, "retry_unanswered", bool, "delivery.sendgrid", cfg, False),
        ),
    )

    sc = _section(data, "schedule", cfg)
    schedule = Schedule(
        day_of_week=_get(sc, "day_of_week", str, "schedule", cfg, "mon"),
        hour=_get(sc, "hour", int, "schedule", cfg, 7),
        minute=_get(sc, "minute", int, "schedule", cfg, 0),
        review_hours=_get(sc, "review_hours", int, "schedule", cfg, 24),
        min_articles=_get(sc, "min_articles", int, "schedule", cfg, 1),
        when_empty=_get(sc, "when_empty", str, "schedule", cfg, "skip", choices=("skip", "send", "hold")),
        if_not_approved=_get(sc, "if_not_approved", str, "schedule", cfg, "hold", choices=("send", "hold")),
        misfire_grace_seconds=_get(sc, "misfire_grace_seconds", int, "schedule", cfg, 3600),
        editors=tuple(_get(sc, "editors", list, "schedule", cfg, [])),
        check_links=_get(sc, "check_links", bool, "schedule", cfg, True),
        lock_expiry_seconds=max(30, _get(sc, "lock_expiry_seconds", int, "schedule", cfg, 120)),
    )
    for i, editor in enumerate(schedule.editors):
        if not isinstance(editor, str) or "@" not in editor:
            raise ConfigError(f"{cfg}: schedule.editors[{i}] {editor!r} is not an email address")

    sb = _section(data, "subscribers", cfg)
    subs = Subscribers(
        confirm_expiry_days=_get(sb, "confirm_expiry_days", int, "subscribers", cfg, 7),
        link_expiry_days=max(60, _get(sb, "link_expiry_days", int, "subscribers", cfg, 365)),
        resend_confirm_minutes=_get(sb, "resend_confirm_minutes", int, "subscribers", cfg, 60),
    )

    wb = _section(data, "web", cfg)
    web = Web(
        session_hours=max(1, _get(wb, "session_hours", int, "web", cfg, 12)),
        subscribe_limit=max(1, _get(wb, "subscribe_limit", int, "web", cfg, 5)),
        subscribe_window_seconds=max(1, _get(wb, "subscribe_window_seconds", int, "web", cfg, 600)),
        login_limit=max(1, _get(wb, "login_limit", int, "web", cfg, 10)),
        login_window_seconds=max(1, _get(wb, "login_window_seconds", int, "web", cfg, 600)),
        forwarded_allow_ips=_get(wb, "forwarded_allow_ips", str, "web", cfg, ""),
        page_size=min(500, max(10, _get(wb, "page_size", int, "web", cfg, 50))),
    )

    db = _section(data, "database", cfg)
    url = os.environ.get(ENV_DATABASE_URL) or _get(db, "url", str, "database", cfg, "sqlite:///digest.db")
    if "://" not in url:
        raise ConfigError(f"{cfg}: database.url {url!r} is not a database URL (e.g. sqlite:///digest.db)")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        url = "sqlite:///" + str((cfg.parent / url.removeprefix("sqlite:///")).resolve())

    return Settings(
        path=cfg, publication=publication, sources=sources, appeal=appeal, delivery=delivery,
        database_url=url, secret_key=_secret_key(cfg, url, create_secret), schedule=schedule,
        subscribers=subs,
        web=web,
    )


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
