"""webhookd's benchmarks: `python -m bench.run --scenario NAME` from the repository's root
(see bench/README.md). The bench shares the tests' kit (tests/kit/: the daemon process, the
API client, the throwaway PostgreSQL server)."""
