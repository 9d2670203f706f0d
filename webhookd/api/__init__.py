"""The HTTP API (aiohttp): ingest for producers, admin routes for operators."""

from webhookd.api.app import build_app
from webhookd.api.common import Services
from webhookd.api.server import ApiSite, runner_options

__all__ = ["ApiSite", "Services", "build_app", "runner_options"]
