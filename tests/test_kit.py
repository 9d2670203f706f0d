"""The test kit (tests/kit/) is the one copy of the plumbing tests and bench share.

The bench runs only in CI's last step, so these check here what would break it first: that
every module of bench/ imports as a package from the repository's root (its commands are
`python -m bench.run`, ...), that none reaches the tests by putting a path on sys.path, and
that the kit's daemon process finds a daemon that logs warnings only, as the bench's do,
and that the scale scenario's prefill still fills a database through the store.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_config
from tests.kit.api import Api
from tests.kit.daemon import REPO, DaemonProcess

BENCH = REPO / "bench"


def bench_modules() -> list[str]:
    paths = sorted(BENCH.glob("*.py")) + sorted((BENCH / "scenarios").glob("*.py"))
    return [
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in paths
    ]


def test_every_bench_module_imports_as_a_package_from_the_repository_root() -> None:
    modules = bench_modules()
    assert "bench.run" in modules and "bench.scenarios.scale" in modules
    load = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(REPO)}  # no PYTHONPATH: the root only
    done = subprocess.run(
        [sys.executable, "-c", load, *modules],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_no_bench_module_puts_its_own_directories_on_sys_path() -> None:
    # `--code DIR` (a saved copy of webhookd/ to measure) may go on the path; the bench's
    # own directories and tests/ must not: they are packages.
    edit = re.compile(r"sys\.path\.(insert|append)\([^)]*__file__")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted(BENCH.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if edit.search(line)
    ]
    assert offenders == []


async def test_the_kit_finds_a_daemon_that_logs_warnings_only_by_its_notify_status(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    # At level warning the daemon never logs "webhookd ready": the port (127.0.0.1:0)
    # can only come from the sd_notify STATUS it sends to the kit's socket.
    config = write_config(tmp_path, logging={"format": "json", "level": "warning"})
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify=True)
    daemon_process.append(daemon)
    await asyncio.to_thread(daemon.start)
    assert not any(line.get("event") == "webhookd ready" for line in daemon.lines())
    async with Api(daemon.url) as api:
        status, _ = await api.request("GET", "/healthz")
    assert status == 200
    assert daemon.stop() == 0


async def test_the_bench_prefill_leaves_delivered_rows_through_the_store(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    # The scale scenario fills its big database with bench.prefill (the store's own calls),
    # so a change of the store's interface that breaks it shows here, not in CI's last step.
    config = write_config(tmp_path)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon_process.append(daemon)
    await asyncio.to_thread(daemon.start)
    async with Api(daemon.url) as api:
        webhook = await api.create_webhook("http://127.0.0.1:9/hook", event_types=["t0"])
    assert daemon.stop() == 0
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench.prefill", "--config", str(config), "--rows", "300"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    await asyncio.to_thread(daemon.start)
    async with Api(daemon.url) as api:
        items = await api.deliveries(webhook_id=webhook["webhook_id"])
        last = f"/v1/deliveries/{webhook['webhook_id']}/evt_pre_000000299/attempts"
        attempts = await api.ok("GET", last)
    assert len(items) == 300
    assert {(item["status"], item["attempts"]) for item in items} == {("delivered", 1)}
    assert [a["status_code"] for a in attempts["items"]] == [204]
