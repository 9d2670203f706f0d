"""check-config reads database.url_file as `run` does (issue 22, item 12): a missing or
empty file is an error naming the key, and a file every user may read gets a warning."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_config
from tests.test_config import check_config


def config_with_url_file(tmp_path: Path, url_file: Path) -> Path:
    return write_config(tmp_path, database={"url_file": str(url_file)})


def test_a_missing_url_file_is_an_error(tmp_path: Path) -> None:
    result = check_config(config_with_url_file(tmp_path, tmp_path / "nowhere.url"))
    assert result.returncode == 2, result.stdout
    assert "database.url_file" in result.stderr and "nowhere.url" in result.stderr


def test_an_empty_url_file_is_an_error(tmp_path: Path) -> None:
    url_file = tmp_path / "db.url"
    url_file.write_text("\n")
    url_file.chmod(0o600)
    result = check_config(config_with_url_file(tmp_path, url_file))
    assert result.returncode == 2, result.stdout
    assert "database.url_file" in result.stderr and "empty" in result.stderr


def test_a_world_readable_url_file_gets_a_warning(tmp_path: Path) -> None:
    url_file = tmp_path / "db.url"
    url_file.write_text("postgresql://webhookd:hunter2@127.0.0.1:5432/app\n")
    url_file.chmod(0o644)
    result = check_config(config_with_url_file(tmp_path, url_file))
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "database.url_file" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr

    url_file.chmod(0o600)
    result = check_config(config_with_url_file(tmp_path, url_file))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
