"""Which webhookd/ the bench's subprocesses run: a snapshot taken when the bench starts, so
that edits made to the tree while a scenario runs do not mix two versions of the code in
one set of figures (or a saved copy given with --code, or the working tree itself)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A benchmark could not run (a process did not start, a deadline passed)."""


# None: the working tree itself.
CODE_DIR: Path | None = None


def code_dir() -> Path:
    """The directory holding the webhookd/ package the subprocesses import."""
    return CODE_DIR or REPO


def code_hash(root: Path) -> str:
    """A short digest of webhookd/ under root (sources and SQL, not caches)."""
    digest = hashlib.sha256()
    package = root / "webhookd"
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def snapshot_code(existing: Path | None = None) -> Iterator[str]:
    """Run every subprocess on a copy of webhookd/ taken now (or on `existing`, a directory
    that holds a webhookd/ package, e.g. an older copy to compare with); yields its hash."""
    global CODE_DIR
    if existing is not None:
        if not (existing / "webhookd" / "__init__.py").is_file():
            raise BenchError(f"{existing} holds no webhookd/ package")
        CODE_DIR = existing.resolve()
        try:
            yield code_hash(CODE_DIR)
        finally:
            CODE_DIR = None
        return
    snap = Path(tempfile.mkdtemp(prefix="webhookd-bench-code-"))
    try:
        shutil.copytree(
            REPO / "webhookd", snap / "webhookd", ignore=shutil.ignore_patterns("__pycache__")
        )
        CODE_DIR = snap
        yield code_hash(snap)
    finally:
        CODE_DIR = None
        shutil.rmtree(snap, ignore_errors=True)


def code_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a `python -m ...` subprocess started in code_dir(): that directory comes
    first on its path (so webhookd/ is the snapshot's), the repository after it (for the
    `bench` and `tests` packages)."""
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(code_dir()), str(REPO), env.get("PYTHONPATH", "")) if p
    )
    return env
