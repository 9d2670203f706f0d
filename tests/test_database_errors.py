"""A database webhookd cannot open: `webhookd run` exits 2 at once, and its JSON log says why
in words an operator can act on (held by another process, not writable, not DuckDB)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Api, DaemonProcess, write_config
from receivers import Recorder

RUN_DEADLINE = 60.0


class Exited:
    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.code = result.returncode
        self.output = result.stdout + result.stderr
        self.lines: list[dict[str, Any]] = []
        for raw in result.stdout.splitlines():
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                continue

    def problem(self) -> str:
        """The `problem` of the daemon's "cannot open the database" log line."""
        for line in self.lines:
            if line.get("event") == "cannot open the database":
                assert line["level"] == "error", line
                problem: str = line["problem"]
                return problem
        raise AssertionError(f"no 'cannot open the database' line in: {self.output}")


def run_daemon(config: Path, prefix: Sequence[str] = ()) -> Exited:
    """`webhookd run` as a subprocess; it must exit by itself (killed past the deadline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKD_")}
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "webhookd", "run", "--config", str(config)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE,
    )
    return Exited(result)


def config_with_database(tmp_path: Path, database: Path) -> Path:
    return write_config(tmp_path, database={"path": str(database)})


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Path]:
    """Another process holding the database file open read-write, until the test ends."""
    path = tmp_path / "held.duckdb"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
            "print('held', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        yield path
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def test_database_held_by_another_process(tmp_path: Path, holder: Path) -> None:
    exited = run_daemon(config_with_database(tmp_path, holder))
    assert exited.code == 2, exited.output
    problem = exited.problem()
    assert problem.startswith("database.path:")
    assert str(holder) in problem
    assert "held by another process" in problem
    assert "webhookd ready" not in exited.output


async def test_a_second_webhookd_on_the_same_file_exits_2_and_the_first_keeps_serving(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    first = DaemonProcess(write_config(tmp_path), tmp_path / "first.log")
    daemon_process.append(first)
    first.start()
    database = tmp_path / "webhookd.duckdb"
    elsewhere = tmp_path / "second"
    elsewhere.mkdir()
    exited = await asyncio.to_thread(run_daemon, config_with_database(elsewhere, database))
    assert exited.code == 2, exited.output
    problem = exited.problem()
    assert problem.startswith("database.path:")
    assert str(database) in problem
    assert "held by another process" in problem
    assert "webhookd ready" not in exited.output
    # The first one never noticed: it answers, and delivers.
    assert first.proc is not None and first.proc.poll() is None
    async with Recorder(status=204) as receiver, Api(first.url) as api:
        assert (await api.request("GET", "/readyz"))[0] == 200
        await api.create_webhook(receiver.url_for("/after"))
        (event_id,) = await api.emit({"type": "t", "data": {}})
        (request,) = await receiver.wait_for_requests(1)
        assert request.headers["webhook-id"] == event_id
        await api.wait_status({"delivered": 1})
    assert first.stop() == 0


def test_database_is_free_again_once_the_holder_is_gone(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    """The same file, no longer held, opens: the refusal above was the lock, not the file."""
    path = tmp_path / "held.duckdb"
    subprocess.run(
        [sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1]).close()", path],
        check=True,
        timeout=60,
    )
    proc = DaemonProcess(config_with_database(tmp_path, path), tmp_path / "daemon.log")
    daemon_process.append(proc)
    proc.start()
    assert proc.stop() == 0


def test_database_directory_does_not_exist(tmp_path: Path) -> None:
    database = tmp_path / "no" / "such" / "dir" / "webhookd.duckdb"
    exited = run_daemon(config_with_database(tmp_path, database))
    assert exited.code == 2, exited.output
    problem = exited.problem()
    assert problem.startswith("database.path:")
    assert str(database.parent) in problem
    assert "does not exist" in problem
    assert not database.parent.exists()


def test_file_where_the_database_directory_should_be(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("I am a file\n")
    exited = run_daemon(config_with_database(tmp_path, not_a_dir / "webhookd.duckdb"))
    assert exited.code == 2, exited.output
    problem = exited.problem()
    assert problem.startswith("database.path:")
    assert str(not_a_dir) in problem
    assert not_a_dir.read_text() == "I am a file\n"


NOBODY = 65534


def test_database_directory_not_writable(tmp_path: Path) -> None:
    """chmod 0o500 stops everyone but root; as root, the daemon runs as `nobody` for this."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, where chmod does not deny writes, and no setpriv")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        usable = subprocess.run(
            [*prefix, sys.executable, "-c", "import webhookd"],
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )
        if usable.returncode != 0:
            pytest.skip("running as root, and `nobody` cannot run this Python and webhookd")
        # pytest's tmp_path is private to root; nobody must reach the config and token.
        tmp_path = Path(tempfile.mkdtemp(prefix="webhookd-nobody-"))
        tmp_path.chmod(0o755)
    try:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        config = config_with_database(tmp_path, locked / "webhookd.duckdb")
        for readable in (config, tmp_path / "admin.token"):
            readable.chmod(0o644)
        exited = run_daemon(config, prefix)
        assert exited.code == 2, exited.output
        problem = exited.problem()
        assert problem.startswith("database.path:")
        assert str(locked) in problem
        assert "not writable" in problem
        assert list(locked.iterdir()) == []
    finally:
        if prefix:
            shutil.rmtree(tmp_path)


def test_database_path_is_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "webhookd.duckdb"
    directory.mkdir()
    exited = run_daemon(config_with_database(tmp_path, directory))
    assert exited.code == 2, exited.output
    problem = exited.problem()
    assert problem.startswith("database.path:")
    assert str(directory) in problem
    assert "cannot be opened" in problem


NOT_DUCKDB = {
    "random bytes": os.urandom(16384),
    "text": b"hello, I am a text file\n" * 100,
    "empty": b"",
    # DuckDB hands a SQLite file to its sqlite extension (which it may try to download)
    # instead of saying "not a valid DuckDB database": webhookd's own words must still say so.
    "sqlite header": b"SQLite format 3\x00" + bytes(4080),
}


@pytest.mark.parametrize("content", NOT_DUCKDB.values(), ids=list(NOT_DUCKDB.keys()))
def test_file_that_is_not_a_duckdb_database(tmp_path: Path, content: bytes) -> None:
    database = tmp_path / "webhookd.duckdb"
    database.write_bytes(content)
    exited = run_daemon(config_with_database(tmp_path, database))
    assert exited.code == 2, exited.output
    problem = exited.problem()
    assert problem.startswith("database.path:")
    assert str(database) in problem
    assert "cannot be opened as a DuckDB database" in problem
    assert "move it aside" in problem
    assert "held by another process" not in problem
    # Left alone for the operator to inspect: never truncated or overwritten.
    assert database.read_bytes() == content
