"""The daemons of the bench: the kit's DaemonProcess in a work directory of its own, on the
bench's settings, run from the code snapshot, with its memory sampled; and its API client."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import tomli_w

from bench.code import code_dir, code_env
from bench.procfs import descendants, proc_status, tree_rss_kb
from tests.kit.api import Api
from tests.kit.daemon import DaemonProcess

TOKEN = "bench-admin-token-" + os.urandom(8).hex()
# run.py --otlp-endpoint: every daemon exports spans there (tracing.otlp_endpoint).
OTLP_ENDPOINT: str | None = None


def api(url: str, *, connections: int = 32) -> Api:
    """A client of a bench daemon's API: its token, 2 minutes a request."""
    return Api(url, TOKEN, connections=connections, timeout=120)


async def create_webhook(client: Api, url: str, event_types: list[str], **settings: Any) -> str:
    """A new webhook's id; `settings`: the webhook's own (rate_limit, max_in_flight, ...)."""
    created = await client.create_webhook(url, event_types=event_types, **settings)
    return str(created["webhook_id"])


# --set SECTION.KEY=VALUE of bench.run: settings of every daemon of the run, under a
# scenario's own overrides.
SETTINGS: dict[str, dict[str, Any]] = {}


def daemon_sections(workdir: Path, **overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Bench settings: the defaults of webhookd except where the bench needs otherwise."""
    token_file = workdir / "admin.token"
    token_file.write_text(TOKEN + "\n")
    sections: dict[str, dict[str, Any]] = {
        "database": {"path": str(workdir / "webhookd.duckdb")},
        "admin": {"listen": "127.0.0.1:0", "token_file": str(token_file)},
        "delivery": {"allow_private_destinations": True},
        # Delivered rows stay in the queue for the whole run (the scale scenario prefills them).
        "retention": {"delivered_ttl": "1d"},
        "shutdown": {"grace": "2s"},
        "logging": {"format": "json", "level": "warning"},
    }
    if OTLP_ENDPOINT:
        sections["tracing"] = {"otlp_endpoint": OTLP_ENDPOINT}
    for section, values in (*SETTINGS.items(), *overrides.items()):
        sections.setdefault(section, {}).update(values)
    if "url" in sections["database"]:  # PostgreSQL: no DuckDB file (setting both is an error)
        sections["database"].pop("path", None)
    return sections


class BenchDaemon(DaemonProcess):
    """`python -m webhookd run` in `workdir` (webhookd.toml from daemon_sections with
    `overrides`, daemon.log, webhookd.duckdb), on the code snapshot (bench.code).

    The bench logs at level warning, where "webhookd ready" is not written: the admin port
    (listen = 127.0.0.1:0) is learnt from the sd_notify STATUS the daemon sends to the kit's
    NOTIFY_SOCKET. WEBHOOKD_* variables of the environment are dropped: the bench's settings
    come from its TOML file only. The daemon is killed if the bench dies without stopping it.
    """

    def __init__(self, workdir: Path, overrides: Mapping[str, Mapping[str, Any]] | None = None):
        self.workdir = workdir
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        self.rss_samples_kb: list[int] = []
        base = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKD_")}
        super().__init__(
            workdir / "webhookd.toml",
            workdir / "daemon.log",
            {"PYTHONUNBUFFERED": "0"},
            base_env=base,
            notify=True,
            die_with_parent=True,
        )

    @property
    def db_path(self) -> Path:
        return self.workdir / "webhookd.duckdb"

    def start(self, *, deadline: float = 60.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(tomli_w.dumps(daemon_sections(self.workdir, **self.overrides)))
        self.cwd = code_dir()
        self.env = code_env(self.env)
        return super().start(deadline=deadline)

    def sample_rss(self) -> None:
        """Record the RSS of the daemon plus its live descendants (the store server) now."""
        if self.proc is not None and self.proc.poll() is None:
            rss, _, _ = tree_rss_kb(self.proc.pid)
            if rss:
                self.rss_samples_kb.append(rss)

    def memory(self) -> dict[str, float]:
        """Current and peak RSS of the live daemon plus its descendants, in MB.

        The peak is the largest sum over the processes seen by sample_rss (or now), but no
        less than the VmHWM of any one of them (a lower bound of the true peak of the sum).
        """
        if self.proc is None or self.proc.poll() is not None:
            return {}
        rss, hwm, threads = tree_rss_kb(self.proc.pid)
        own = proc_status(self.proc.pid).get("VmRSS", 0)
        peak = max([rss, hwm, *self.rss_samples_kb])
        return {
            "rss_mb": round(rss / 1024, 1),
            "peak_rss_mb": round(peak / 1024, 1),
            "children_rss_mb": round((rss - own) / 1024, 1),
            "processes": 1 + len(descendants(self.proc.pid)),
            "threads": threads,
        }

    def close(self) -> None:
        """SIGTERM (the daemon drains for shutdown.grace, 2 s here), kill after 20 s."""
        self.stop(grace=20.0)
        self.proc = None
