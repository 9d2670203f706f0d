"""`python -m webhookd.api.openapi > openapi.json`: print the API's OpenAPI document."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import cast

from webhookd.api import Services, build_app
from webhookd.api.openapi import document, render
from webhookd.config import Settings


def main() -> int:
    # The document depends on the route table only, not on any setting or service.
    app = build_app(cast(Services, SimpleNamespace(settings=Settings())))
    sys.stdout.write(render(document(app)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
