"""The API's bodies and query strings as pydantic models: the handlers validate what clients
send with them, and the OpenAPI document (webhookd.api.openapi) is generated from the same
classes, so the document cannot say one thing while the code checks another.

Requests are strict (a string is a string, `"yes"` is not `true`) and forbid unknown fields.
Each field's own check (the rules of `guard.validate_url`, `events.token_problem`,
`signing.secret_key`) raises the message the API has always answered with; :func:`parse`
turns pydantic's errors into the API's error shape: a 400 naming the field, with the code of
the field (`invalid_url`, `invalid_secret`, `invalid_event`, else `invalid_request`).

The type of each field carries its JSON-schema constraints (lengths, patterns, enums) for the
document; the check beside it is what refuses a value, in the API's words, before pydantic's
own validation (which then always agrees) runs.

Responses are described here too (the operations routes' in operation_models.py); the
handlers build them from the stores' rows, and the property-based run
(tests/test_openapi.py) checks every answer against these schemas.

To add a field to webhooks: a type with its check below, the field on `WebhookCreate` /
`WebhookChange` (requests) and on `Webhook` (responses), then the handler passes it on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)
from pydantic.json_schema import SkipJsonSchema

from webhookd import guard, signing
from webhookd.api.common import MAX_CURSOR, MAX_LIMIT, ApiError, parse_delivery_cursor, shown
from webhookd.api.network_fields import NetworkChange, NetworkShown, Signing
from webhookd.api.tenant_fields import OptionalTenant, QueryTenant
from webhookd.api.trace_fields import Traceparent
from webhookd.events import MAX_ID_LENGTH, MAX_TYPE_LENGTH, token_problem
from webhookd.states import Status

MAX_DESCRIPTION = 1024
MAX_EVENT_TYPES = 256
# What events.token_problem accepts, as a JSON-schema pattern: printable ASCII but space.
TOKEN_PATTERN = r"^[!-~]+$"
# A webhook id as the stores make them ("wh_" and hex); the listing's cursor is one.
WEBHOOK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}$"
_WEBHOOK_ID = re.compile(WEBHOOK_ID_PATTERN[1:-1])
# whsec_ and the base64 of 24 to 64 bytes.
SECRET_PATTERN = r"^whsec_[A-Za-z0-9+/]{32,88}={0,2}$"

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Missing:
    """What the error message says when a required field is absent (in a field's Annotated)."""

    text: str


def _absent(schema: dict[str, Any]) -> None:
    """No `"default": null` in the document for a field that may be left out but not null."""
    schema.pop("default", None)


# -- checks: each raises ValueError with the API's message, or returns the value ------------


def _token(max_length: int, *, optional: bool) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        problem = token_problem(value, max_length)
        if problem is not None:
            raise ValueError(problem)
        return value

    return check


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 timestamp string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        # e.g. "0001-01-01T00:00:00+01:00": valid RFC 3339, but before datetime.min in UTC.
        raise ValueError("out of the supported range") from None


def _url(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str):
        raise ValueError("required, a string")
    context = info.context if isinstance(info.context, Mapping) else {}
    return guard.validate_url(value, allow_private=bool(context.get("allow_private", False)))


def _event_types(value: Any) -> list[str]:
    """null is no filter (every type); a list is kept sorted and without repeats."""
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > MAX_EVENT_TYPES
        or not all(isinstance(t, str) and t for t in value)
    ):
        raise ValueError("a list of non-empty strings")
    return sorted(set(value))


def _description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise ValueError(f"a string of at most {MAX_DESCRIPTION}")
    return value


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("a secret is a string")
    if not value.startswith(signing.SECRET_PREFIX):
        raise ValueError("a secret starts with 'whsec_'")
    signing.secret_key(value)
    return value


def _active(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _optional_string(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError("a string")
    return value


def _required_string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string" if value is not None else "required")
    if not value:
        raise ValueError("required")
    return value


# A rate limit's bounds: one delivery every 1000 s at the slowest (its slots stay within
# reach of any clock), 100,000 a second at the fastest.
MIN_RATE_LIMIT = 0.001
MAX_RATE_LIMIT = 100_000
MAX_IN_FLIGHT = 10_000


def _rate_limit(value: Any) -> float | None:
    """Deliveries per second, above zero; null: no limit."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not MIN_RATE_LIMIT <= value <= MAX_RATE_LIMIT
    ):
        raise ValueError(
            f"deliveries per second, a number from {MIN_RATE_LIMIT} to {MAX_RATE_LIMIT}, "
            "or null for no limit"
        )
    return float(value)


def _max_in_flight(value: Any) -> int | None:
    """Concurrent attempts, at least one; null: delivery.per_webhook_concurrency."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IN_FLIGHT:
        raise ValueError(
            f"a whole number from 1 to {MAX_IN_FLIGHT}, "
            "or null for delivery.per_webhook_concurrency"
        )
    return value


def _ordering(value: Any) -> str:
    if value not in ("none", "fifo") or not isinstance(value, str):
        raise ValueError("one of none, fifo")
    return str(value)


def _status_of(allowed: tuple[Status, ...]) -> Callable[[Any], Status]:
    def check(value: Any) -> Status:
        if isinstance(value, str) and value in {s.value for s in allowed}:
            return Status(value)
        raise ValueError("one of " + ", ".join(s.value for s in allowed))

    return check


def _redrive_status(value: Any) -> str:
    return _status_of((Status.DEAD, Status.PARKED))(value).value


def _since(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("an RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("an RFC 3339 timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# Query strings: every value arrives as text; an empty value is the same as none.


def _limit(value: Any) -> int:
    if value is None:
        return 100
    if not (
        isinstance(value, str)
        and value.isascii()
        and value.isdigit()
        and 1 <= int(value) <= MAX_LIMIT
    ):
        raise ValueError(f"a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def _query_text(value: Any) -> str | None:
    return value or None


def _query_status(value: Any) -> Status | None:
    return _status_of(tuple(Status))(value) if value else None


_BAD_CURSOR = "not one this listing gave out; pass `next` from the previous page as is"


def _delivery_cursor(value: Any) -> str | None:
    """[created_at, webhook_id, event_id], base64: what /v1/deliveries gives out as `next`."""
    if not value:
        return None
    if len(value) > MAX_CURSOR:
        raise ValueError(_BAD_CURSOR)
    try:
        parse_delivery_cursor(value)
    except (ValueError, RecursionError):
        raise ValueError(_BAD_CURSOR) from None
    return str(value)


def _webhook_cursor(value: Any) -> str | None:
    """The last webhook id of the previous page."""
    if not value:
        return None
    if not _WEBHOOK_ID.fullmatch(value):
        raise ValueError(_BAD_CURSOR)
    return str(value)


# -- field types: the schema in the type, the check beside it ---------------------------------

EventType = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TYPE_LENGTH,
        pattern=TOKEN_PATTERN,
        description="1 to 256 printable ASCII characters (0x21-0x7E: no spaces); "
        "subscriptions match it byte for byte",
    ),
    BeforeValidator(_token(MAX_TYPE_LENGTH, optional=False)),
    Missing(token_problem(None, MAX_TYPE_LENGTH) or "required"),
]
EventId = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=TOKEN_PATTERN,
        description="1 to 256 printable ASCII characters (0x21-0x7E: no spaces), sent as the "
        "webhook-id header; absent or null: webhookd makes one (evt_ and 24 hex digits)",
    ),
    BeforeValidator(_token(MAX_ID_LENGTH, optional=True)),
]
Timestamp = Annotated[
    datetime | SkipJsonSchema[None],
    Field(description="RFC 3339; a time without an offset is UTC. Absent: now"),
    BeforeValidator(_timestamp),
]
Url = Annotated[
    str,
    Field(
        max_length=guard.MAX_URL_LENGTH,
        json_schema_extra={"format": "uri"},
        description="http or https, a valid DNS name or IP literal, no credentials, at most "
        "2048 characters; loopback, private, link-local and metadata addresses are refused "
        "unless delivery.allow_private_destinations",
    ),
    BeforeValidator(_url),
    Missing("required, a string"),
]
EventTypes = Annotated[
    list[Annotated[str, Field(min_length=1)]] | None,
    Field(
        max_length=MAX_EVENT_TYPES,
        description="the event types delivered; empty or null: every type",
    ),
    BeforeValidator(_event_types),
]
Description = Annotated[
    str | None,
    Field(max_length=MAX_DESCRIPTION, description="free text for operators; null: empty"),
    BeforeValidator(_description),
]
Secret = Annotated[
    str | None,
    Field(
        pattern=SECRET_PATTERN,
        description="whsec_ and the base64 of 24 to 64 random bytes; absent or null: "
        "webhookd makes one",
    ),
    BeforeValidator(_secret),
]
Active = Annotated[
    bool | None,
    Field(
        description="false deactivates the webhook (its deliveries are parked); true "
        "re-enables it and re-drives what was parked; null: unchanged"
    ),
    BeforeValidator(_active),
]
RateLimit = Annotated[
    float | None,
    Field(
        ge=MIN_RATE_LIMIT,
        le=MAX_RATE_LIMIT,
        description="at most this many deliveries per second to this webhook, across every "
        "daemon: a token bucket with a burst of this many (at least one); rows waiting for "
        "it are no attempts, their next_attempt_at moves. null: no limit",
    ),
    BeforeValidator(_rate_limit),
]
MaxInFlight = Annotated[
    int | None,
    Field(
        ge=1,
        le=MAX_IN_FLIGHT,
        description="at most this many attempts to this webhook at once, across every "
        "daemon, instead of delivery.per_webhook_concurrency; null: that setting",
    ),
    BeforeValidator(_max_in_flight),
]
OrderingField = Annotated[
    Literal["none", "fifo"],
    Field(
        description="none: any order, several at once; fifo: one at a time in the events' "
        "order, event n+1 not before event n is delivered or dead (a head that keeps "
        "failing holds the rest back)"
    ),
    BeforeValidator(_ordering),
]
OptionalWebhookId = Annotated[
    str | None,
    Field(description="only the deliveries of this webhook"),
    BeforeValidator(_optional_string),
]


# -- requests -------------------------------------------------------------------------------


class Request(BaseModel):
    """A JSON request body: strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # The error code of a field's problems; `code` for any other.
    codes: ClassVar[Mapping[str, str]] = {}
    code: ClassVar[str] = "invalid_request"


class Event(Request):
    """One event as a producer posts it."""

    code: ClassVar[str] = "invalid_event"

    type: EventType
    id: EventId = None
    data: Annotated[
        Any,
        Field(
            description="any JSON value: what subscribers receive as `data`; no string in "
            "it may hold U+0000"
        ),
        Missing("required"),
    ]
    occurred_at: Timestamp = Field(default=None, json_schema_extra=_absent)
    tenant: OptionalTenant = None
    traceparent: Traceparent = Field(default=None, json_schema_extra=_absent)


class Events(RootModel[Event | Annotated[list[Event], Field(min_length=1)]]):
    """One event, or a list of them (at most admin.max_batch_events, default 1000): all are
    accepted or none."""


class WebhookCreate(Request, NetworkChange):
    """A new subscription."""

    codes: ClassVar[Mapping[str, str]] = {"url": "invalid_url", "secret": "invalid_secret"}

    url: Url
    secret: Secret = None
    event_types: EventTypes = None
    description: Description = None
    rate_limit: RateLimit = None
    max_in_flight: MaxInFlight = None
    ordering: Annotated[OrderingField, Field(json_schema_extra=_absent)] = "none"
    tenant: OptionalTenant = None
    signing: Annotated[Signing, Field(json_schema_extra=_absent)] = "v1"


class WebhookChange(Request, NetworkChange):
    """A change to a subscription: only the fields present change."""

    codes: ClassVar[Mapping[str, str]] = {"url": "invalid_url"}

    url: Annotated[Url | SkipJsonSchema[None], Field(json_schema_extra=_absent)] = None
    event_types: EventTypes = None
    active: Active = None
    description: Description = None
    rate_limit: RateLimit = None
    max_in_flight: MaxInFlight = None
    # Absent: unchanged; null is refused (the check runs before the union would take it).
    ordering: Annotated[
        OrderingField | SkipJsonSchema[None],
        BeforeValidator(_ordering),
        Field(json_schema_extra=_absent),
    ] = None
    # Set at creation: the same value is accepted, another is a 400 (handler).
    tenant: OptionalTenant = None


class Redrive(Request):
    """Set matching dead or parked deliveries due now."""

    status: Annotated[
        Literal["dead", "parked"],
        BeforeValidator(_redrive_status),
        Missing("one of dead, parked"),
    ]
    since: Annotated[
        datetime | None,
        Field(description="only those whose last attempt was at or after this time (RFC 3339)"),
        BeforeValidator(_since),
    ] = None
    webhook_id: OptionalWebhookId = None
    tenant: OptionalTenant = None


class Replay(Request):
    """Deliver an event again, even if delivered."""

    event_id: Annotated[
        str,
        Field(min_length=1),
        BeforeValidator(_required_string),
        Missing("required"),
    ]
    webhook_id: Annotated[
        str | None,
        Field(description="only to this webhook; absent or null: to every webhook it went to"),
        BeforeValidator(_optional_string),
    ] = None


# Query strings: fields are query parameters, each value text; unknown parameters are ignored.


class Query(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    codes: ClassVar[Mapping[str, str]] = {}
    code: ClassVar[str] = "invalid_request"


Limit = Annotated[
    int,
    Field(ge=1, le=MAX_LIMIT, description="items per page"),
    BeforeValidator(_limit),
]


class WebhookQuery(Query):
    limit: Limit = 100
    cursor: Annotated[
        Annotated[str, Field(pattern=WEBHOOK_ID_PATTERN)] | SkipJsonSchema[None],
        Field(description="`next` of the previous page"),
        BeforeValidator(_webhook_cursor),
    ] = Field(default=None, json_schema_extra=_absent)
    tenant: QueryTenant = Field(default=None, json_schema_extra=_absent)


class DeliveryQuery(Query):
    webhook_id: Annotated[str | SkipJsonSchema[None], BeforeValidator(_query_text)] = Field(
        default=None, json_schema_extra=_absent
    )
    event_id: Annotated[str | SkipJsonSchema[None], BeforeValidator(_query_text)] = Field(
        default=None, json_schema_extra=_absent
    )
    status: Annotated[Status | SkipJsonSchema[None], BeforeValidator(_query_status)] = Field(
        default=None, json_schema_extra=_absent
    )
    limit: Limit = 100
    cursor: Annotated[
        Annotated[str, Field(max_length=MAX_CURSOR)] | SkipJsonSchema[None],
        Field(description="`next` of the previous page"),
        BeforeValidator(_delivery_cursor),
    ] = Field(default=None, json_schema_extra=_absent)
    tenant: QueryTenant = Field(default=None, json_schema_extra=_absent)


# -- turning pydantic's errors into the API's -------------------------------------------------


def _missing_text(model: type[BaseModel], name: str) -> str:
    info = model.model_fields.get(name)
    if info is not None:
        for item in info.metadata:
            if isinstance(item, Missing):
                return item.text
    return "required"


def _refusal(model: type[Request] | type[Query], errors: list[Any], where: str | None) -> ApiError:
    """The first problem as the API states it. `where` is "events[i]" inside a list of
    events, None for a request body or query string of its own."""
    unknown = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        names = ", ".join(shown(name)[1:-1] for name in unknown)
        text = f"{where}: unknown field(s) {names}" if where else f"unknown field(s): {names}"
        return ApiError(400, model.code, text)
    first = errors[0]
    if not first["loc"]:
        text = f"{where}: expected an object" if where else "expected a JSON object"
        return ApiError(400, model.code, text)
    name = str(first["loc"][0])
    if first["type"] == "missing":
        problem = _missing_text(model, name)
    elif first["type"] == "value_error":
        problem = str(first["ctx"]["error"])
    else:  # pydantic's own check, which the field's check should have made first
        problem = str(first["msg"])
    field = f"{where}.{name}" if where else name
    return ApiError(400, model.codes.get(name, model.code), f"{field}: {problem}")


def parse(model: type[M], value: Any, *, context: Mapping[str, Any] | None = None) -> M:
    """`value` (a parsed JSON body) as `model`, or the API's 400 naming the field at fault."""
    try:
        return model.model_validate(value, strict=True, context=context)
    except ValidationError as exc:
        assert issubclass(model, Request | Query)
        raise _refusal(model, exc.errors(include_url=False), None) from None


def parse_query(model: type[M], query: Mapping[str, str]) -> M:
    """The query string's parameters that `model` names (the first of each), checked."""
    values = {name: query[name] for name in model.model_fields if name in query}
    return parse(model, values)


_EVENT_LIST: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


def parse_events(raw: list[Any]) -> list[Event]:
    """The events of a request, or a 400 naming the first one at fault."""
    try:
        return _EVENT_LIST.validate_python(raw, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        index = min(int(e["loc"][0]) for e in errors)
        mine = [{**e, "loc": e["loc"][1:]} for e in errors if e["loc"][0] == index]
        raise _refusal(Event, mine, f"events[{index}]") from None


# -- responses ------------------------------------------------------------------------------


class Response(BaseModel):
    """A JSON answer: exactly these fields."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(Response):
    code: str = Field(description="stable, for programs: invalid_request, not_found, ...")
    message: str = Field(description="for people: names the field or value at fault")


class Error(Response):
    """Every error answer."""

    error: ErrorDetail


class Accepted(Response):
    """The events are committed; ids in the order posted (made ones included)."""

    ids: list[str]


class Webhook(Response, NetworkShown):
    """A subscription, without its secrets."""

    webhook_id: str
    url: str
    event_types: list[str] = Field(description="empty: every type")
    active: bool
    description: str
    disabled_reason: str | None = Field(
        description="why webhookd deactivated it (410 Gone, failing too long), if it did"
    )
    failing_since: datetime | None = Field(description="every attempt has failed since then")
    previous_secret_expires_at: datetime | None = Field(
        description="during a rotation: when the previous secret stops signing"
    )
    created_at: datetime
    updated_at: datetime
    rate_limit: float | None = Field(description="deliveries per second; null: no limit")
    max_in_flight: int | None = Field(
        description="concurrent attempts; null: delivery.per_webhook_concurrency"
    )
    ordering: Literal["none", "fifo"]
    tenant: str | None = Field(description="the tenant it belongs to; null: none")


class WebhookWithSecret(Webhook):
    """A webhook and its (new) secret: shown once, on creation and rotation."""

    secret: str | None = Field(description="null for signing v1a (see public_key)")


class Delivery(Response):
    """One (webhook, event) in the queue."""

    webhook_id: str
    event_id: str
    status: Status
    attempts: int
    next_attempt_at: datetime | None
    lease_until: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime


class Attempt(Response):
    """One attempt in the append-only log."""

    attempt_id: int
    webhook_id: str
    event_id: str
    attempt: int
    attempted_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    outcome: Literal["delivered", "retry", "dead", "gone"]


class WebhookPage(Response):
    items: list[Webhook]
    next: str | None = Field(description="pass as `cursor` for the next page; null: the last")


class DeliveryPage(Response):
    items: list[Delivery]
    next: str | None = Field(description="pass as `cursor` for the next page; null: the last")


class AttemptPage(Response):
    items: list[Attempt]
    next: None = Field(description="always null: every attempt is on one page")


class Count(Response):
    count: int = Field(description="deliveries set due now")


class TestAttempt(Response):
    attempt: int
    status_code: int | None
    duration_ms: float
    error: str | None
    response_excerpt: str


class TestResult(Response):
    """A test event sent now, with a short inline retry burst; nothing is queued."""

    event_id: str
    delivered: bool
    status_code: int | None
    duration_ms: float
    error: str | None
    attempts: list[TestAttempt]
