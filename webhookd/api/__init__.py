"""The HTTP API (aiohttp): ingest for producers, admin routes for operators."""

from webhookd.api.app import Services, build_app

__all__ = ["Services", "build_app"]
