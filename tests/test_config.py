"""Settings: SPEC's defaults, config.example.toml, environment overrides, durations, and
every kind of bad configuration named by its key, in the library and in `check-config`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, TOKEN, write_config

from webhookd.config import ConfigError, Settings, load_settings
from webhookd.durations import format_duration, parse_duration
from webhookd.proxy import parse_proxy
from webhookd.reqwest_sender import ReqwestSender
from webhookd.sender import Sender
from webhookd.senders import HttpClient, build_sender, client_in_use

EXAMPLE = REPO / "config.example.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No WEBHOOKD_* variable of the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("WEBHOOKD_"):
            monkeypatch.delenv(name)
    yield


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "webhookd.toml"
    path.write_text(text)
    return path


def check_config(
    config: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKD_")}
    return subprocess.run(
        [sys.executable, "-m", "webhookd", "check-config", "--config", str(config)],
        env={**clean, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- defaults -------------------------------------------------------------------------


def test_defaults_are_specs_table() -> None:
    s = Settings()
    assert s.database.path == Path("/var/lib/webhookd/webhookd.duckdb")
    assert s.admin.listen == "127.0.0.1:8787"
    assert s.admin.token_file == Path("/etc/webhookd/admin.token")
    assert s.admin.token is None
    assert s.scanner.poll_interval == 0.25
    assert s.scanner.batch_size == 500
    assert s.delivery.workers == 64
    assert s.delivery.per_webhook_concurrency == 8
    assert s.delivery.timeout == 15.0
    assert s.delivery.max_attempts == 8
    assert s.delivery.retry_schedule == [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    assert s.delivery.jitter == 0.2
    assert s.delivery.allow_private_destinations is False
    assert s.delivery.max_response_bytes == 4096
    assert s.delivery.http_client == "reqwest"
    assert s.retention.delivered_ttl == 3600.0
    assert s.retention.log_ttl == 30 * 86400.0
    assert s.shutdown.grace == 10.0
    assert s.logging.format == "json"
    assert s.logging.level == "info"


def test_default_retry_schedule_spans_about_27_and_a_half_hours() -> None:
    """5s + 5m + 30m + 2h + 5h + 10h + 10h: SPEC's "about 33 hours" miscounts it."""
    s = Settings()
    assert len(s.delivery.retry_schedule) == s.delivery.max_attempts - 1
    assert sum(s.delivery.retry_schedule) == 27 * 3600 + 35 * 60 + 5


def test_absent_default_config_file_means_defaults(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "nowhere.toml", required=False)
    assert settings.model_dump() == Settings().model_dump()


# -- config.example.toml ----------------------------------------------------------------


def test_example_config_loads_and_equals_the_defaults() -> None:
    assert load_settings(EXAMPLE).model_dump() == Settings().model_dump()


def test_example_config_writes_out_every_setting() -> None:
    text = EXAMPLE.read_text()
    lines = [line.strip() for line in text.splitlines()]
    for section, model in Settings.model_fields.items():
        assert f"[{section}]" in lines, section
        section_model: Any = model.annotation
        for name, field in section_model.model_fields.items():
            key = field.alias or name
            if (section, key) == ("admin", "token"):
                continue  # never in a file: WEBHOOKD_ADMIN__TOKEN, documented in a comment
            written = [ln for ln in lines if ln.lstrip("# ").startswith(f"{key} = ")]
            assert written, f"{section}.{key} is not in config.example.toml"
    assert "WEBHOOKD_ADMIN__TOKEN" in text
    assert not any(line.startswith("token =") for line in lines)


def test_example_config_keeps_its_comments_one_per_setting() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith(("#", "[")):
            assert lines[number - 1].startswith("#"), f"no comment above {line!r}"


def test_example_config_with_quick_start_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's quick start copies the file and overrides three keys from the environment."""
    monkeypatch.setenv("WEBHOOKD_DATABASE__PATH", str(tmp_path / "w.duckdb"))
    monkeypatch.setenv("WEBHOOKD_ADMIN__TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("WEBHOOKD_DELIVERY__ALLOW_PRIVATE_DESTINATIONS", "true")
    settings = load_settings(EXAMPLE)
    assert settings.database.path == tmp_path / "w.duckdb"
    assert settings.admin.token_file == tmp_path / "token"
    assert settings.delivery.allow_private_destinations is True
    assert settings.delivery.workers == 64


# -- the environment ----------------------------------------------------------------------


def test_environment_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path)  # delivery.workers = 16, delivery.timeout = "5s"
    assert load_settings(config).delivery.workers == 16
    monkeypatch.setenv("WEBHOOKD_DELIVERY__WORKERS", "3")
    settings = load_settings(config)
    assert settings.delivery.workers == 3
    # The rest of the section still comes from the file.
    assert settings.delivery.timeout == 5.0
    assert settings.delivery.allow_private_destinations is True


def test_environment_token_is_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WEBHOOKD_ADMIN__TOKEN", "supersecret")
    settings = load_settings(write_config(tmp_path))
    assert settings.admin.resolve_token() == "supersecret"
    assert "supersecret" not in repr(settings)
    assert "supersecret" not in str(settings.model_dump())


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, delivery={"workers": 5})
    monkeypatch.setenv("WEBHOOKD_CONFIG", str(config))
    assert load_settings().delivery.workers == 5


def test_config_file_named_by_environment_must_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOKD_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "missing.toml" in caught.value.problems[0]
    assert "does not exist" in caught.value.problems[0]


# -- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0)],
)
def test_durations_parse(text: str, seconds: float, tmp_path: Path) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == text
    config = write(tmp_path, f'[shutdown]\ngrace = "{text}"\n')
    assert load_settings(config).shutdown.grace == seconds


def test_durations_in_a_list_parse(tmp_path: Path) -> None:
    config = write(tmp_path, '[delivery]\nretry_schedule = ["250ms", "10s", "5m", "2h", "1d"]\n')
    assert load_settings(config).delivery.retry_schedule == [0.25, 10.0, 300.0, 7200.0, 86400.0]


def test_bad_duration_names_the_key(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, '[delivery]\ntimeout = "10 parsecs"\n'))
    assert len(problems) == 1
    assert problems[0].startswith("delivery.timeout:")
    assert "10 parsecs" in problems[0]


def test_bad_duration_in_a_list_names_the_key(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, '[delivery]\nretry_schedule = ["5s", "soon"]\n'))
    assert len(problems) == 1
    assert problems[0].startswith("delivery.retry_schedule")
    assert "soon" in problems[0]


def test_negative_duration_names_the_key(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "[shutdown]\ngrace = -1\n"))
    assert problems == ["shutdown.grace: a duration cannot be negative"]


# -- bad keys and values ----------------------------------------------------------------


def test_unknown_section_is_an_error_naming_it(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, '[databse]\npath = "/tmp/x.duckdb"\n'))
    assert problems == ["databse: unknown key"]


def test_unknown_nested_key_is_an_error_naming_it(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "[delivery]\nwokers = 3\n"))
    assert problems == ["delivery.wokers: unknown key"]


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, '[delivery]\nworkers = "many"\n'))
    assert len(problems) == 1
    assert problems[0].startswith("delivery.workers:")
    assert "integer" in problems[0]


def test_wrong_type_for_a_whole_section_names_it(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "delivery = 5\n"))
    assert len(problems) == 1
    assert problems[0].startswith("delivery:")


def test_out_of_range_names_the_key(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "[delivery]\nworkers = 0\n"))
    assert len(problems) == 1
    assert problems[0].startswith("delivery.workers:")
    assert "greater than or equal to 1" in problems[0]


def test_bad_choice_names_the_key(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, '[logging]\nlevel = "loud"\n'))
    assert len(problems) == 1
    assert problems[0].startswith("logging.level:")


def test_an_http_client_webhookd_does_not_have_names_the_key(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, '[delivery]\nhttp_client = "curl"\n'))
    assert len(problems) == 1
    assert problems[0].startswith("delivery.http_client:")
    assert "'reqwest' or 'aiohttp'" in problems[0]


@pytest.mark.parametrize(
    ("configured", "proxy", "used"),
    [
        ("reqwest", None, "reqwest"),
        ("aiohttp", None, "aiohttp"),
        ("reqwest", "http://127.0.0.1:3128", "aiohttp"),
        ("aiohttp", "http://127.0.0.1:3128", "aiohttp"),
    ],
)
def test_the_client_in_use_is_aiohttp_whenever_a_proxy_is_set(
    configured: HttpClient, proxy: str | None, used: HttpClient
) -> None:
    parsed = parse_proxy(proxy, []) if proxy else None
    assert client_in_use(configured, parsed) == used
    sender = build_sender(
        configured,
        timeout=1.0,
        max_response_bytes=0,
        allow_private=False,
        pool_size=1,
        user_agent="t",
        proxy=parsed,
    )
    assert isinstance(sender, ReqwestSender if used == "reqwest" else Sender)


@pytest.mark.parametrize("listen", ["nope", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:²", ":80"])
def test_bad_listen_address_names_the_key_once(tmp_path: Path, listen: str) -> None:
    problems = problems_of(write(tmp_path, f'[admin]\nlisten = "{listen}"\n'))
    assert problems == [f"admin.listen: {listen!r} is neither host:port nor unix:/path"]


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:8787", "unix:/run/webhookd/admin.sock"])
def test_listen_address_forms(tmp_path: Path, listen: str) -> None:
    assert load_settings(write(tmp_path, f'[admin]\nlisten = "{listen}"\n')).admin.listen == listen


def test_lease_shorter_than_timeout_names_both_keys(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, '[delivery]\ntimeout = "30s"\nlease = "10s"\n'))
    assert problems == ["delivery.lease must be longer than delivery.timeout"]


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    text = (
        '[databse]\npath = "x"\n'
        '[delivery]\nwokers = 3\nworkers = 0\ntimeout = "soon"\n'
        '[logging]\nlevel = "loud"\n'
    )
    problems = problems_of(write(tmp_path, text))
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == [
        "databse",
        "delivery.timeout",
        "delivery.wokers",
        "delivery.workers",
        "logging.level",
    ]


def test_malformed_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[delivery\nworkers = \n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert "malformed TOML" in problems[0]
    assert str(path) in problems[0]


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    problems = problems_of(path)
    assert problems == [f"config: file {str(path)!r} does not exist"]


def test_missing_token_file_names_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, admin={"token_file": str(tmp_path / "no-such.token")})
    with pytest.raises(ConfigError) as caught:
        load_settings(config).admin.resolve_token()
    assert caught.value.problems[0].startswith("admin.token_file:")
    assert "no-such.token" in caught.value.problems[0]


def test_empty_token_file_names_the_key(tmp_path: Path) -> None:
    token_file = tmp_path / "empty.token"
    token_file.write_text("\n")
    config = write_config(tmp_path, admin={"token_file": str(token_file)})
    with pytest.raises(ConfigError) as caught:
        load_settings(config).admin.resolve_token()
    assert caught.value.problems[0].startswith("admin.token_file:")
    assert "empty" in caught.value.problems[0]


# -- check-config ---------------------------------------------------------------------


def test_check_config_prints_resolved_settings(tmp_path: Path) -> None:
    config = write_config(tmp_path, delivery={"retry_schedule": ["250ms", "5m", "1d"]})
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["database"]["path"] == str(tmp_path / "webhookd.duckdb")
    assert printed["scanner"]["poll_interval"] == "50ms"
    assert printed["delivery"]["timeout"] == "5s"
    assert printed["delivery"]["retry_schedule"] == ["250ms", "5m", "1d"]
    assert printed["delivery"]["workers"] == 16
    assert printed["retention"]["delivered_ttl"] == "1h"
    assert printed["retention"]["log_ttl"] == "30d"
    assert printed["shutdown"]["grace"] == "5s"
    assert TOKEN not in result.stdout + result.stderr


def test_check_config_of_the_example_with_an_environment_token(tmp_path: Path) -> None:
    result = check_config(EXAMPLE, {"WEBHOOKD_ADMIN__TOKEN": "supersecret"})
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["delivery"]["retry_schedule"] == ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]
    assert printed["scanner"]["poll_interval"] == "250ms"
    assert printed["admin"]["token"] == "**********"
    assert "supersecret" not in result.stdout
    assert "supersecret" not in result.stderr


def test_check_config_names_every_problem(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        '[databse]\npath = "x"\n'
        '[delivery]\nwokers = 3\nworkers = 0\ntimeout = "soon"\n'
        '[logging]\nlevel = "loud"\n',
    )
    result = check_config(config, {"WEBHOOKD_ADMIN__TOKEN": "supersecret"})
    assert result.returncode == 2
    assert result.stdout == ""
    for key in ("databse", "delivery.wokers", "delivery.workers", "delivery.timeout"):
        assert f"webhookd: {key}:" in result.stderr, key
    assert "webhookd: logging.level:" in result.stderr
    assert "5 problem(s)" in result.stderr
    assert "supersecret" not in result.stderr


def test_check_config_missing_token_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, admin={"token_file": str(tmp_path / "no-such.token")})
    result = check_config(config)
    assert result.returncode == 2
    assert "webhookd: admin.token_file:" in result.stderr
    assert "no-such.token" in result.stderr
    assert "WEBHOOKD_ADMIN__TOKEN" in result.stderr


def test_check_config_malformed_toml(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, "[delivery\n"))
    assert result.returncode == 2
    assert "malformed TOML" in result.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = check_config(tmp_path / "missing.toml")
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "missing.toml" in result.stderr


# -- the PostgreSQL engine's keys ------------------------------------------------------


def test_a_database_url_selects_postgresql(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[database]\nurl = "postgresql://app:hunter2@127.0.0.1:5432/app"\nschema = "hooks"\n',
    )
    settings = load_settings(path)
    assert settings.database.engine == "postgresql"
    assert settings.database.db_schema == "hooks"
    assert settings.database.resolve_url() == "postgresql://app:hunter2@127.0.0.1:5432/app"
    assert load_settings(write(tmp_path, "")).database.engine == "duckdb"


def test_a_url_and_a_path_are_an_error_naming_both(tmp_path: Path) -> None:
    problems = problems_of(
        write(tmp_path, '[database]\nurl = "postgresql://h/db"\npath = "/tmp/x.duckdb"\n')
    )
    assert len(problems) == 1
    assert "database.path" in problems[0] and "database.url" in problems[0]


def test_a_url_and_a_url_file_are_an_error(tmp_path: Path) -> None:
    problems = problems_of(
        write(tmp_path, '[database]\nurl = "postgresql://h/db"\nurl_file = "/tmp/u"\n')
    )
    assert "database.url_file" in problems[0]


@pytest.mark.parametrize("url", ["mysql://h/db", "http://h/db", "postgresql://h:99999/db"])
def test_a_bad_database_url_names_the_key(tmp_path: Path, url: str) -> None:
    problems = problems_of(write(tmp_path, f'[database]\nurl = "{url}"\n'))
    assert problems[0].startswith("database.url:"), problems


def test_a_bad_schema_name_names_the_key(tmp_path: Path) -> None:
    problems = problems_of(
        write(tmp_path, '[database]\nurl = "postgresql://h/db"\nschema = "a; DROP"\n')
    )
    assert problems[0].startswith("database.schema:"), problems


def test_the_url_file_is_read_and_checked(tmp_path: Path) -> None:
    url_file = tmp_path / "database-url"
    url_file.write_text("postgresql://app:s3cret@127.0.0.1/app\n")
    settings = load_settings(write(tmp_path, f'[database]\nurl_file = "{url_file}"\n'))
    assert settings.database.resolve_url() == "postgresql://app:s3cret@127.0.0.1/app"
    url_file.write_text("nonsense\n")
    with pytest.raises(ConfigError) as caught:
        settings.database.resolve_url()
    assert caught.value.problems[0].startswith("database.url_file:")
    url_file.unlink()
    with pytest.raises(ConfigError) as caught:
        settings.database.resolve_url()
    assert caught.value.problems[0].startswith("database.url_file:")


def test_check_config_shows_the_engine_and_hides_the_password(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text().replace(
        f'path = "{tmp_path / "webhookd.duckdb"}"',
        'url = "postgresql://app:hunter2@127.0.0.1:5432/app?password=hunter2"',
    )
    config.write_text(text)
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["database"]["engine"] == "postgresql"
    assert printed["database"]["schema"] == "webhookd"
    assert "127.0.0.1:5432/app" in printed["database"]["url"]
    assert "path" not in printed["database"]
    assert "hunter2" not in result.stdout + result.stderr
    duck = json.loads(check_config(write_config(tmp_path)).stdout)
    assert duck["database"]["engine"] == "duckdb"
