"""The test kit: the plumbing shared by tests/ and bench/ (bench imports it as `tests.kit`,
run from the repository's root as `python -m bench.run`).

- `procs`: free ports, waiting for a port, stopping a child process by its id.
- `daemon`: `DaemonProcess`, `python -m webhookd run` as a real subprocess.
- `api`: `Api`, a client of the daemon's HTTP API.
- `pg`: `pg_cluster()`, a throwaway PostgreSQL server, and a schema per test or run.

Everything listens on and talks to 127.0.0.1 only.
"""
