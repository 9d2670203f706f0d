"""The DuckDB engine: one daemon, its database in a child process (server.py, remote.py).

Nothing is imported here: the daemon imports remote.py alone, and only the child
process loads DuckDB (store.py).
"""
