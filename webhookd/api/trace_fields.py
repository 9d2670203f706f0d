"""The `traceparent` field of an event, as the API checks and documents it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic.json_schema import SkipJsonSchema

from webhookd.tracing import traceparent_problem

TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[!-~]*)?$"


def _traceparent(value: Any) -> str:
    problem = traceparent_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return str(value)


Traceparent = Annotated[
    str | SkipJsonSchema[None],
    Field(
        pattern=TRACEPARENT_PATTERN,
        description="a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>), stored with the event: "
        "every attempt sends one with the same trace id and a span id of its own. Absent: "
        "the request's traceparent header, if any",
    ),
    BeforeValidator(_traceparent),
]
