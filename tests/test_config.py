"""Settings: every key validated with a one-line message naming the key and the file; unknown keys are errors
with a suggestion; `digest init` writes the file from the same schema."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from digest.cli.main import main
from digest.config import DigestFile, Sources, Subscribers, Web, help_text, load_settings
from digest.demo import SAMPLE_CONFIG, init
from digest.errors import ConfigError, DigestError
from tests.conftest import SECRET, edit_config, run_cli
from tests.fakes.readers import set_keys

pytestmark = pytest.mark.nodb  # settings are read, never a database: these run once


def test_sample_config_loads_with_paths_relative_to_the_file(workdir: Path) -> None:
    s = load_settings(workdir / "digest.toml")
    assert s.publication.name == "Leisure Industry Weekly"
    assert s.database_url == f"sqlite:///{workdir / 'digest.db'}"
    assert s.resolve(s.sources.feeds[0]) == str(workdir / "sample" / "feed.xml")
    assert s.delivery.transport == "outbox"
    assert s.publication.tz.key == "Australia/Sydney"
    assert s.delivery.sendgrid.retry_unanswered is False  # exactly once before throughput


@pytest.mark.parametrize(("old", "new", "message"), [
    ('postal_address = "PO Box 100, Sydney NSW 2000, Australia"', "", "publication.postal_address is missing"),
    ('transport = "outbox"', 'transport = "pigeon"', "delivery.transport must be one of outbox, smtp, sendgrid"),
    ("window_days = 14", 'window_days = "two weeks"', "sources.window_days must be an integer, not 'two weeks'"),
    ('timezone = "Australia/Sydney"', 'timezone = "Mars/Olympus"', "publication.timezone 'Mars/Olympus'"),
    ('public_url = "http://127.0.0.1:8000"', 'public_url = "localhost"', "publication.public_url must be an http"),
])
def test_bad_keys_name_the_key_and_the_file(workdir: Path, old: str, new: str, message: str) -> None:
    edit_config(workdir, old, new)
    with pytest.raises(ConfigError) as info:
        load_settings(workdir / "digest.toml")
    assert message in str(info.value)
    assert str(workdir / "digest.toml") in str(info.value)


def test_environment_overrides_database_and_needs_a_secret(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_DATABASE_URL", f"sqlite:///{workdir / 'other.db'}")
    assert load_settings(workdir / "digest.toml").database_url.endswith("other.db")
    monkeypatch.delenv("DIGEST_SECRET_KEY")
    with pytest.raises(ConfigError, match="DIGEST_SECRET_KEY is not set"):
        load_settings(workdir / "digest.toml")
    generated = load_settings(workdir / "digest.toml", create_secret=True).secret_key
    assert len(generated) == 64
    assert generated not in (workdir / "digest.toml").read_text()
    assert (workdir / ".digest-secret").stat().st_mode & 0o077 == 0
    assert load_settings(workdir / "digest.toml").secret_key == generated


@pytest.mark.slow  # the real command in a subprocess
def test_cli_reports_a_bad_key_in_one_line_with_exit_2(workdir: Path) -> None:
    edit_config(workdir, 'transport = "outbox"', 'transport = "pigeon"')
    result = run_cli("collect", cwd=workdir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, result.stderr  # rich may wrap one long line
    assert "delivery.transport" in result.stderr and "digest.toml" in result.stderr


@pytest.mark.slow  # the real command in a subprocess
def test_cli_missing_config_names_the_file(tmp_path: Path) -> None:
    result = run_cli("send", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.toml" in result.stderr and "not found" in result.stderr
    assert "Traceback" not in result.stderr


def digest_cli(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               *args: str) -> tuple[int, list[str]]:
    """`digest ARGS` through the real entry point (digest.cli.main.main): its exit code and stderr lines."""
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["digest", *args])
    monkeypatch.setenv("COLUMNS", "500")  # rich wraps at the terminal width; a "line" here is a logical line
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize(("old", "new", "message"), [
    ("window_days = 14", "windows_days = 14",
     "unknown key sources.windows_days (did you mean `window_days`?)"),
    ("[delivery]\n", "[delivry]\n", "unknown section [delivry] (did you mean [delivery]?)"),
    ("[delivery.sendgrid]\n", "[delivery.sendgird]\n",
     "unknown section [delivery.sendgird] (did you mean [delivery.sendgrid]?)"),
    ("[publication]\n", "[publicatio]\n",  # one mistake, one line: not also "[publication] is missing"
     "unknown section [publicatio] (did you mean [publication]?)"),
    ("concurrency = 4", 'concurrency = "four"', "delivery.sendgrid.concurrency must be an integer, not 'four'"),
    ("editors = [", "editor = [", "unknown key schedule.editor (did you mean `editors`?)"),
])
def test_cli_names_a_misspelled_or_mistyped_key_in_one_line_with_exit_2(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        old: str, new: str, message: str) -> None:
    edit_config(workdir, old, new)
    # `users list` loads the whole schema; `status` and `subscribers show` read only the keys they need
    # (digest.config_file: the database and the zone), so they are not the commands to check the rest with
    code, lines = digest_cli(workdir, monkeypatch, capsys, "users", "list")
    assert code == 2
    assert lines == [f"error: {workdir / 'digest.toml'}: {message}"]


def test_a_key_at_the_top_of_the_file_belongs_in_a_section(workdir: Path) -> None:
    (workdir / "digest.toml").write_text("window_days = 14\n" + (workdir / "digest.toml").read_text())
    with pytest.raises(ConfigError, match=r"unknown key window_days \(known keys here: publication, sources, "):
        load_settings(workdir / "digest.toml")


def test_every_problem_is_one_line_naming_the_file(workdir: Path) -> None:
    edit_config(workdir, "window_days = 14", "window_days = -1")
    edit_config(workdir, 'transport = "outbox"', 'transport = "pigeon"')
    with pytest.raises(ConfigError) as info:
        load_settings(workdir / "digest.toml")
    lines = str(info.value).splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "sources.window_days must be at least 0, not -1",
        "delivery.transport must be one of outbox, smtp, sendgrid, not 'pigeon'",
    ]
    assert all(line.startswith(f"{workdir / 'digest.toml'}: ") for line in lines)


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    # the old reader clamped these silently; a value outside the bounds now says which bound and why
    ("schedule", "lock_expiry_seconds", 10, "schedule.lock_expiry_seconds must be at least 30, not 10"),
    ("subscribers", "link_expiry_days", 30, "subscribers.link_expiry_days must be at least 60, not 30"),
    ("web", "page_size", 1000, "web.page_size must be at most 500, not 1000"),
    ("web", "page_size", 5, "web.page_size must be at least 10, not 5"),
    ("web", "session_hours", 0, "web.session_hours must be at least 1, not 0"),
    ("delivery.sendgrid", "batch_size", 5000, "delivery.sendgrid.batch_size must be at most 1000, not 5000"),
    ("delivery.sendgrid", "concurrency", 0, "delivery.sendgrid.concurrency must be at least 1, not 0"),
    ("delivery.smtp", "port", 0, "delivery.smtp.port must be at least 1, not 0"),
    ("delivery.smtp", "security", "ssl", "delivery.smtp.security must be one of none, starttls, tls, not 'ssl'"),
    ("schedule", "check_links", "no", "schedule.check_links must be true or false, not 'no'"),
    ("sources", "feeds", "feed.xml", "sources.feeds must be a list, not 'feed.xml'"),
    ("sources", "feeds", ["a.xml", 3], "sources.feeds[1] must be a string, not 3"),
    ("publication", "from_email", "digest", "publication.from_email 'digest' is not an email address"),
])
def test_out_of_bounds_values_are_errors_not_clamps(workdir: Path, section: str, key: str, value: object,
                                                    message: str) -> None:
    set_keys(workdir, section, **{key: value})
    with pytest.raises(ConfigError) as info:
        load_settings(workdir / "digest.toml")
    assert str(info.value) == f"{workdir / 'digest.toml'}: {message}"


def test_appeal_needs_a_url_with_a_title_and_variants_get_keys_in_order(workdir: Path) -> None:
    edit_config(workdir, 'url = "https://news.example.com/subscribe"', "")
    with pytest.raises(ConfigError, match=r"appeal\.url is missing"):
        load_settings(workdir / "digest.toml")
    edit_config(workdir, "\n[delivery]\n", '\nurl = "https://a.example"\n[[appeal.variants]]\ntitle = "B"\nbody = "b"\n'
                "url = \"https://b.example\"\n[[appeal.variants]]\ntitle = \"C\"\nbody = \"c\"\n"
                '[appeal.thank_you]\ntitle = "Thanks"\nbody = "t"\n\n[delivery]\n')
    with pytest.raises(ConfigError, match=r"appeal\.variants\[1\]\.url is missing"):
        load_settings(workdir / "digest.toml")
    edit_config(workdir, 'body = "c"\n', 'body = "c"\nurl = "https://c.example"\n')
    appeal = load_settings(workdir / "digest.toml").appeal
    assert [v.key for v in appeal.all_variants()] == ["main", "v1", "v2"]
    assert appeal.thank_you is not None and appeal.thank_you.key == "thank_you" and appeal.thank_you.url == ""
    assert appeal.variants[0].button == "Subscribe"


def test_environment_overrides_are_validated_and_named(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SENDGRID_API_URL", "http://127.0.0.1:9/")
    assert load_settings(workdir / "digest.toml").delivery.sendgrid.api_url == "http://127.0.0.1:9"
    monkeypatch.setenv("DIGEST_SENDGRID_API_URL", "127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"delivery\.sendgrid\.api_url \(from DIGEST_SENDGRID_API_URL\) must be "
                                          r"an http\(s\) URL, not '127.0.0.1:9'"):
        load_settings(workdir / "digest.toml")
    monkeypatch.delenv("DIGEST_SENDGRID_API_URL")
    monkeypatch.setenv("DIGEST_DATABASE_URL", "sqlite:///elsewhere/x.db")  # relative to the file, as in it
    assert load_settings(workdir / "digest.toml").database_url == f"sqlite:///{workdir / 'elsewhere' / 'x.db'}"


def test_secrets_come_from_the_environment_and_stay_out_of_reprs(workdir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.very-secret")
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "smtp-very-secret")
    s = load_settings(workdir / "digest.toml")
    assert s.delivery.sendgrid.api_key == "SG.very-secret" and s.delivery.smtp.password == "smtp-very-secret"
    for text in (repr(s), str(s)):
        assert SECRET not in text and "very-secret" not in text
    with pytest.raises(ConfigError, match="unknown key secret_key"):  # a secret never comes from the file
        (workdir / "digest.toml").write_text(f'secret_key = "{SECRET}"\n' + (workdir / "digest.toml").read_text())
        load_settings(workdir / "digest.toml")


def _schema_keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, FieldInfo]]:
    """(dotted key, bare key, field) for every key of the schema, nested tables included."""
    out = []
    for key, field in model.model_fields.items():
        out.append((prefix + key, key, field))
        annotation = field.annotation
        inner = next((a for a in (annotation, *get_args(annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if inner is not None:
            out += _schema_keys(inner, f"{prefix}{key}.")
    return out


def test_init_writes_every_key_with_its_help_and_loads_back_to_the_defaults(workdir: Path) -> None:
    path = workdir / "digest.toml"
    text = path.read_text()
    loaded = load_settings(path)
    expected = DigestFile.model_validate({**SAMPLE_CONFIG}, context={"base_dir": workdir})
    for section in DigestFile.model_fields:
        assert getattr(loaded, section) == getattr(expected, section), section
    # the sample's values as written; every other key its default (a fresh schema object)
    assert loaded.sources.window_days == 14 and loaded.sources.timeout_seconds == Sources().timeout_seconds
    assert loaded.web == Web(media_dir="sample/media") and loaded.subscribers == Subscribers()

    prose = " ".join(text.replace("#", " ").split())
    for dotted, key, field in _schema_keys(DigestFile):
        assert field.description, f"{dotted} has no help"
        assert " ".join(help_text(field).split()) in prose, f"{dotted}: its help is not in digest.toml"
        written = re.search(rf"^#?{key} = |\[{re.escape(dotted)}\]|^# +{key}: ", text, re.MULTILINE)
        assert written, f"{dotted} is not in digest.toml"

    # the defaults shown commented out are the code's defaults: uncommented, the file loads the same
    path.write_text(re.sub(r"^#(?=\w+ = )", "", text, flags=re.MULTILINE))
    assert "\n#" not in path.read_text().replace("\n# ", "")
    assert load_settings(path) == loaded


@pytest.mark.slow  # the real command in a subprocess
def test_init_refuses_to_overwrite_and_demo_still_works_from_it(tmp_path: Path) -> None:
    init(tmp_path)
    with pytest.raises(DigestError, match="already exists"):
        init(tmp_path)
    result = run_cli("demo", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "readers sent 5" in " ".join(result.stdout.split())
    assert load_settings(tmp_path / "demo" / "digest.toml").publication.name == "Leisure Industry Weekly"
