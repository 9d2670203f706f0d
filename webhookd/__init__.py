"""webhookd: durable at-least-once webhook delivery from an embedded DuckDB."""

__version__ = "0.1.0"
