"""The shipped systemd unit: sandboxed (systemd-analyze security), valid, and agreeing with SPEC."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from webhookd.config import DatabaseSettings, Settings, ShutdownSettings
from webhookd.durations import parse_duration

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "webhookd.service"
MAX_EXPOSURE = 2.0
OVERALL_EXPOSURE = re.compile(r"Overall exposure level for webhookd\.service:\s*(\d+(?:\.\d+)?)")

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)


def directives(path: Path = UNIT) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; keys may repeat."""
    section = ""
    out: list[tuple[str, str, str]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def service(key: str) -> list[str]:
    return [value for section, k, value in directives() if section == "Service" and k == key]


def one(key: str) -> str:
    values = service(key)
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in service("Environment"):
        name, _, val = value.partition("=")
        env[name] = val
    return env


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


@needs_systemd_analyze
def test_security_exposure_is_at_most_2() -> None:
    result = analyze("security", "--offline=yes", "--no-pager", str(UNIT))
    output = result.stdout + result.stderr
    match = OVERALL_EXPOSURE.search(output)
    if match is None and "offline" in output.lower() and result.returncode != 0:
        pytest.skip(f"this systemd-analyze cannot assess offline: {output.strip()[:200]}")
    assert match is not None, f"no overall exposure in output:\n{output}"
    assert float(match.group(1)) <= MAX_EXPOSURE, output


@needs_systemd_analyze
def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    # verify insists the ExecStart binary exists; point it at a stand-in, keep all else as is.
    stand_in = tmp_path / "webhookd"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/usr/local/bin/webhookd " in text
    unit = tmp_path / "webhookd.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/webhookd ", f"ExecStart={stand_in} "))

    result = analyze("verify", "--man=no", str(unit))
    # verify exits 0 on unknown keys and bad values, but names them on stderr.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_type_notify_with_main_process_notifications_and_watchdog() -> None:
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert parse_duration(one("WatchdogSec")) == 30.0
    assert one("Restart") == "on-failure"


def test_runs_webhookd_run_with_the_system_config() -> None:
    assert one("ExecStart") == "/usr/local/bin/webhookd run --config /etc/webhookd/webhookd.toml"


def test_stop_timeout_outlasts_shutdown_grace() -> None:
    assert one("KillSignal") == "SIGTERM"
    grace = ShutdownSettings().grace
    assert parse_duration(one("TimeoutStopSec")) > grace


def test_database_default_lives_in_the_state_directory() -> None:
    state = one("StateDirectory")
    assert Path("/var/lib") / state / "webhookd.duckdb" == DatabaseSettings().path


def test_directories_for_config_and_admin_socket() -> None:
    assert one("ConfigurationDirectory") == "webhookd"
    assert one("RuntimeDirectory") == "webhookd"  # unix:/run/webhookd/admin.sock


def test_runs_as_an_unprivileged_user() -> None:
    dynamic = service("DynamicUser") == ["yes"]
    assert dynamic or service("User"), "neither DynamicUser=yes nor User="
    assert one("CapabilityBoundingSet") == ""
    assert one("NoNewPrivileges") == "yes"


def test_open_file_limit_allows_many_connections() -> None:
    assert int(one("LimitNOFILE")) >= 65536


def test_logs_json_to_the_journal() -> None:
    assert environment()["WEBHOOKD_LOGGING__FORMAT"] == "json"


def test_token_credential_is_the_token_file_the_daemon_reads() -> None:
    name, _, source = one("LoadCredential").partition(":")
    assert source == "/etc/webhookd/admin.token"
    assert environment()["WEBHOOKD_ADMIN__TOKEN_FILE"] == f"/run/credentials/{UNIT.name}/{name}"


def test_environment_names_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings forbid unknown keys, so a misspelt WEBHOOKD_* variable fails here, not at boot.
    for name in list(os.environ):
        if name.startswith("WEBHOOKD_"):
            monkeypatch.delenv(name)
    for name, value in environment().items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.logging.format == "json"
    assert str(settings.admin.token_file) == environment()["WEBHOOKD_ADMIN__TOKEN_FILE"]


DROP_IN = UNIT.parent / "postgresql.conf"


def test_starts_after_a_local_postgresql_without_pulling_it_in() -> None:
    unit = [(k, v) for section, k, v in directives() if section == "Unit"]
    assert "postgresql.service" in " ".join(v for k, v in unit if k == "After")
    assert "postgresql.service" not in " ".join(v for k, v in unit if k in ("Wants", "Requires"))


def test_postgresql_drop_in_passes_the_url_as_a_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = {k: v for section, k, v in directives(DROP_IN) if section == "Service"}
    name, _, source = values["LoadCredential"].partition(":")
    assert source.startswith("/etc/webhookd/")
    env_name, _, env_value = values["Environment"].partition("=")
    assert env_name == "WEBHOOKD_DATABASE__URL_FILE"
    assert env_value == f"/run/credentials/{UNIT.name}/{name}"
    for variable in list(os.environ):
        if variable.startswith("WEBHOOKD_"):
            monkeypatch.delenv(variable)
    monkeypatch.setenv(env_name, env_value)
    settings = Settings()
    assert settings.database.engine == "postgresql"
    assert str(settings.database.url_file) == env_value
