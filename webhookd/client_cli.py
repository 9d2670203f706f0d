"""Operator commands that talk to a running daemon through its API.

Every command takes --config (the daemon's own settings: address and token), --url and
--token-file (overrides), --timeout, and --json (the API's JSON as-is, for scripts).

Exit codes: 0 success; 1 the API answered an error, or a test delivery failed;
2 usage or configuration problem; 3 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webhookd.client import (
    DEFAULT_TIMEOUT,
    Client,
    ClientError,
    Unreachable,
    UsageError,
    connect,
    segment,
)
from webhookd.durations import parse_duration
from webhookd.logs import printable
from webhookd.states import Status

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

WEBHOOK_COLUMNS = (
    "webhook_id",
    "url",
    "tenant",
    "active",
    "event_types",
    "ordering",
    "rate_limit",
    "max_in_flight",
)
FIFO_BLOCKED_COLUMNS = ("webhook_id", "event_id", "blocked_seconds", "attempts", "blocked_since")
# Limits of the API (webhookd/api/models.py), checked here too for a clearer message.
MIN_RATE_LIMIT = 0.001
MAX_RATE_LIMIT = 100_000
MAX_IN_FLIGHT = 10_000
KEEP = object()  # `webhooks set`: an option left out, so the setting stays as it is
DELIVERY_COLUMNS = (
    "webhook_id",
    "event_id",
    "status",
    "attempts",
    "last_status_code",
    "next_attempt_at",
    "last_error",
)
ATTEMPT_COLUMNS = ("attempt", "attempted_at", "outcome", "status_code", "duration_ms", "error")
TEST_ATTEMPT_COLUMNS = ("attempt", "status_code", "duration_ms", "error")
MAX_CELL = 60
SECRET_KEYS = frozenset({"secret"})

if TYPE_CHECKING:  # argparse's action class is generic only to the type checker
    from typing import TypeAlias

    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    WithConfig: TypeAlias = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


@dataclass(frozen=True)
class Result:
    """What a command got from the API, how to show it to a human, and its exit code."""

    payload: Any
    render: Callable[[Any], None]
    code: int = EXIT_OK


Action = Callable[[Client, argparse.Namespace], Result]


# --- output ------------------------------------------------------------------------------
# Human output shows stored strings (ids, types, descriptions, errors) through
# `printable`: an ESC or a bidi override in one must not act on the operator's terminal.
# --json prints the API's JSON exactly.


def _cell(value: Any, limit: int | None = MAX_CELL) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, list):
        text = ",".join(str(v) for v in value) or "-"
    elif isinstance(value, float):
        text = repr(round(value, 2))
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    else:
        text = " ".join(str(value).split()) if isinstance(value, str) else str(value)
    text = printable(text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Aligned plain-text columns; the one table printer every listing uses."""
    if not rows:
        print("(none)")
        return
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    header = [printable(col) for col in columns]
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(header)]
    for line in [header, *cells]:
        print(
            "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        )


def print_fields(obj: Mapping[str, Any], reveal: frozenset[str] = frozenset()) -> None:
    """`key: value` lines for one object; secrets only when explicitly revealed."""
    shown = {printable(k): v for k, v in obj.items() if k not in SECRET_KEYS or k in reveal}
    width = max((len(k) for k in shown), default=0) + 1
    for key, value in shown.items():
        print(f"{key + ':':<{width}} {_cell(value, None)}")


def print_json(payload: Any) -> None:
    if payload is not None:
        print(json.dumps(payload, indent=2, ensure_ascii=False))


def note(message: str) -> None:
    print(f"webhookd: {printable(message)}", file=sys.stderr)


def show_object(payload: Any) -> None:
    print_fields(payload)


def show_secret_once(payload: Any) -> None:
    print_fields(payload, reveal=SECRET_KEYS)
    if payload.get("secret") is None and payload.get("public_key"):
        note("signing v1a: receivers verify with public_key (the private key is never shown)")
    else:
        note("store the secret now: it is not shown again")
    if payload.get("headers"):
        note("header values are shown only now; listings mask them")


def show_page(columns: Sequence[str], payload: Any) -> None:
    print_table(payload["items"], columns)
    if payload.get("next"):
        note(f"more rows: add --cursor {payload['next']}")


def show_webhooks(payload: Any) -> None:
    rows = [{**row, "event_types": row["event_types"] or ["*"]} for row in payload["items"]]
    show_page(WEBHOOK_COLUMNS, {**payload, "items": rows})


def show_status(payload: Any) -> None:
    by_status: dict[str, int] = payload["by_status"]
    tables = ("by_status", "by_webhook", "fifo_blocked")
    rest = {k: v for k, v in payload.items() if k not in tables}
    print_fields({**by_status, **rest})
    rows = [
        {"webhook_id": wid, **{s: counts.get(s, 0) for s in by_status}}
        for wid, counts in sorted(payload["by_webhook"].items())
    ]
    if rows:
        print()
        print_table(rows, ["webhook_id", *by_status])
    blocked = payload.get("fifo_blocked") or {}
    if blocked:
        print()
        print("fifo webhooks held up by a failing head:")
        print_table(
            [{"webhook_id": wid, **row} for wid, row in sorted(blocked.items())],
            FIFO_BLOCKED_COLUMNS,
        )


def show_test(payload: Any) -> None:
    print_fields({k: v for k, v in payload.items() if k != "attempts"})
    print()
    print_table(payload["attempts"], TEST_ATTEMPT_COLUMNS)


def show_ids(payload: Any) -> None:
    for event_id in payload["ids"]:
        print(printable(str(event_id)))


def show_count(what: str, payload: Any) -> None:
    count = payload["count"]
    print(printable(f"{count} {'delivery' if count == 1 else 'deliveries'} {what}"))


def show_line(line: str, payload: Any) -> None:
    print(printable(line))


# --- argument types ----------------------------------------------------------------------


def _limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
        raise argparse.ArgumentTypeError("a whole number from 1 to 1000")
    return int(raw)


def _json_data(raw: str) -> Any:
    """JSON text, or @FILE to read it from a file, or - for standard input."""
    try:
        if raw == "-":
            raw = sys.stdin.read()
        elif raw.startswith("@"):
            raw = Path(raw[1:]).read_text(encoding="utf-8")
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {raw[1:]!r} ({exc.strerror})") from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def _since(raw: str) -> str:
    """An RFC 3339 time, or a duration ("2h") meaning that long ago."""
    try:
        ago = parse_duration(raw)
    except ValueError:
        pass
    else:
        moment = datetime.now(UTC) - timedelta(seconds=ago)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    try:
        datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            "an RFC 3339 time (2024-05-01T12:00:00Z) or a duration ago (30m, 2h, 1d)"
        ) from None
    return raw


def _positive(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError("a number of seconds above zero")
    return value


def _rate_limit(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not MIN_RATE_LIMIT <= value <= MAX_RATE_LIMIT:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"deliveries per second: a number from {MIN_RATE_LIMIT} to {MAX_RATE_LIMIT}"
        )
    return value


def _max_in_flight(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_IN_FLIGHT:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to {MAX_IN_FLIGHT}")
    return int(raw)


def _header(raw: str) -> tuple[str, str]:
    """NAME=VALUE (the daemon checks the name and value; this only splits them)."""
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("NAME=VALUE, e.g. X-Api-Key=abc123")
    return name, value


def _timeout(raw: str) -> float:
    """A duration (5s, 1500ms) or a number of seconds."""
    try:
        value = float(raw) if raw.replace(".", "", 1).isdigit() else parse_duration(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError("a duration above zero (5s, 1500ms) or seconds")
    return value


def _headers(pairs: list[tuple[str, str]] | None) -> dict[str, str] | None:
    return None if pairs is None else dict(pairs)


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse`, or `none` for no value (the setting cleared)."""

    def parse_or_none(raw: str) -> Any:
        return None if raw == "none" else parse(raw)

    parse_or_none.__name__ = parse.__name__  # argparse names the type in its message
    return parse_or_none


def _some(**fields: Any) -> dict[str, Any]:
    """The request body without the options the operator left out."""
    return {k: v for k, v in fields.items() if v is not None}


# --- commands ----------------------------------------------------------------------------


def webhooks_add(client: Client, args: argparse.Namespace) -> Result:
    body = _some(
        url=args.url_to_deliver,
        event_types=args.event_type,
        description=args.description,
        secret=args.secret,
        rate_limit=args.rate_limit,
        max_in_flight=args.max_in_flight,
        ordering=args.ordering,
        headers=_headers(args.header),
        signing=args.signing,
        client_certificate=args.client_certificate,
        timeout=args.timeout,
        tenant=args.tenant,
    )
    return Result(client.request("POST", "/v1/webhooks", body), show_secret_once)


def webhooks_set(client: Client, args: argparse.Namespace) -> Result:
    body = {
        name: getattr(args, name)
        for name in ("rate_limit", "max_in_flight", "ordering", "client_certificate", "timeout")
        if getattr(args, name) is not KEEP
    }
    if args.header is not None or args.no_headers:
        body["headers"] = _headers(args.header or [])
    if not body:
        raise UsageError(
            "nothing to change: give --rate-limit, --max-in-flight, --ordering, --header, "
            "--no-headers, --client-certificate or --timeout"
        )
    payload = client.request("PATCH", f"/v1/webhooks/{segment(args.id)}", body)
    return Result(payload, show_object)


def webhooks_list(client: Client, args: argparse.Namespace) -> Result:
    params = {"limit": str(args.limit), "cursor": args.cursor or "", "tenant": args.tenant or ""}
    return Result(client.request("GET", "/v1/webhooks", params=params), show_webhooks)


def webhooks_show(client: Client, args: argparse.Namespace) -> Result:
    return Result(client.request("GET", f"/v1/webhooks/{segment(args.id)}"), show_object)


def _set_active(active: bool, client: Client, args: argparse.Namespace) -> Result:
    payload = client.request("PATCH", f"/v1/webhooks/{segment(args.id)}", {"active": active})
    return Result(payload, show_object)


def webhooks_remove(client: Client, args: argparse.Namespace) -> Result:
    payload = client.request("DELETE", f"/v1/webhooks/{segment(args.id)}")
    return Result(payload, partial(show_line, f"removed {args.id}"))


def webhooks_rotate_secret(client: Client, args: argparse.Namespace) -> Result:
    payload = client.request("POST", f"/v1/webhooks/{segment(args.id)}/rotate-secret", {})
    return Result(payload, show_secret_once)


def send_test(client: Client, args: argparse.Namespace) -> Result:
    payload = client.request("POST", f"/v1/webhooks/{segment(args.id)}/test", {})
    return Result(payload, show_test, EXIT_OK if payload.get("delivered") else EXIT_FAILURE)


def status(client: Client, args: argparse.Namespace) -> Result:
    params = {"tenant": args.tenant or ""}
    return Result(client.request("GET", "/v1/status", params=params), show_status)


def deliveries(client: Client, args: argparse.Namespace) -> Result:
    params = {
        "webhook_id": args.webhook or "",
        "event_id": args.event or "",
        "status": args.status or "",
        "tenant": args.tenant or "",
        "limit": str(args.limit),
        "cursor": args.cursor or "",
    }
    payload = client.request("GET", "/v1/deliveries", params=params)
    return Result(payload, partial(show_page, DELIVERY_COLUMNS))


def attempts(client: Client, args: argparse.Namespace) -> Result:
    path = f"/v1/deliveries/{segment(args.webhook_id)}/{segment(args.event_id)}/attempts"
    return Result(client.request("GET", path), partial(show_page, ATTEMPT_COLUMNS))


def redrive(client: Client, args: argparse.Namespace) -> Result:
    body = _some(status=args.status, webhook_id=args.webhook, since=args.since, tenant=args.tenant)
    payload = client.request("POST", "/v1/redrive", body)
    return Result(payload, partial(show_count, "set due now"))


def replay(client: Client, args: argparse.Namespace) -> Result:
    body = _some(event_id=args.event_id, webhook_id=args.webhook)
    payload = client.request("POST", "/v1/replay", body)
    return Result(payload, partial(show_count, "queued again"))


def events_emit(client: Client, args: argparse.Namespace) -> Result:
    body = _some(
        id=args.id, type=args.type, data=args.data, occurred_at=args.occurred_at, tenant=args.tenant
    )
    return Result(client.request("POST", "/v1/events", body), show_ids)


# --- wiring ------------------------------------------------------------------------------


def run_action(action: Action, args: argparse.Namespace) -> int:
    """Call the API, print the outcome, and map every failure to one line and an exit code."""
    try:
        client = connect(args.config, args.url, args.token_file, args.wait)
        result = action(client, args)
    except UsageError as exc:
        note(str(exc))
        return EXIT_USAGE
    except Unreachable as exc:
        note(str(exc))
        return EXIT_UNREACHABLE
    except ClientError as exc:
        note(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        note("interrupted")
        return EXIT_INTERRUPTED
    if args.json:
        print_json(result.payload)
    else:
        result.render(result.payload)
    return result.code


def _command(
    sub: SubParsers,
    with_config: WithConfig,
    name: str,
    help_text: str,
    action: Action,
    *,
    wait_option: str = "--timeout",
) -> argparse.ArgumentParser:
    """A command's parser. `wait_option` names how long to wait for the daemon: on the
    commands where `--timeout` is a webhook's own attempt timeout, `--wait`."""
    parser = with_config(sub.add_parser(name, help=help_text, description=help_text))
    parser.add_argument(
        "--url",
        metavar="URL",
        help="the daemon's address (http://HOST:PORT or unix:/PATH); default: admin.listen",
    )
    parser.add_argument(
        "--token-file", metavar="PATH", help="bearer token file; default: the config's token"
    )
    parser.add_argument(
        wait_option,
        dest="wait",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up waiting for the daemon after this long (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON as-is")
    parser.set_defaults(func=partial(run_action, action))
    return parser


def _tenant(parser: argparse.ArgumentParser, help_text: str) -> argparse.ArgumentParser:
    parser.add_argument("--tenant", metavar="TENANT", help=help_text)
    return parser


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_limit, default=100, help="rows per page (1-1000)")
    parser.add_argument("--cursor", help="the next page, as a previous listing printed it")


def _network_options(parser: argparse.ArgumentParser, *, keep: bool = False) -> None:
    """What a receiver's network requires: extra headers, a client certificate, a timeout."""
    parser.add_argument(
        "--header",
        action="append",
        type=_header,
        metavar="NAME=VALUE",
        help="an extra request header (repeatable)"
        + ("; replaces every header the webhook had" if keep else ""),
    )
    parser.add_argument(
        "--client-certificate",
        type=_or_none(str) if keep else str,
        default=KEEP if keep else None,
        metavar="NAME|none" if keep else "NAME",
        help="present [tls.client_certificates.NAME] of the daemon's config on https (mTLS)",
    )
    parser.add_argument(
        "--timeout",
        type=_or_none(_timeout) if keep else _timeout,
        default=KEEP if keep else None,
        metavar="DURATION|none" if keep else "DURATION",
        help="this webhook's attempt timeout (5s), at most delivery.timeout",
    )


def _add_webhook_commands(sub: SubParsers, with_config: WithConfig) -> None:
    group = sub.add_parser("webhooks", help="manage subscriptions", description="subscriptions")
    hooks = group.add_subparsers(dest="webhooks_command", required=True, metavar="COMMAND")
    add = _command(
        hooks,
        with_config,
        "add",
        "subscribe a URL (prints its secret once)",
        webhooks_add,
        wait_option="--wait",
    )
    add.add_argument("url_to_deliver", metavar="URL", help="where to POST events")
    add.add_argument(
        "--event-type",
        action="append",
        metavar="TYPE",
        help="deliver only this event type (repeatable; default: every type)",
    )
    add.add_argument("--description", help="a note for operators")
    add.add_argument("--secret", help="the signing secret (whsec_…); default: a new random one")
    add.add_argument(
        "--rate-limit",
        type=_rate_limit,
        metavar="N",
        help="at most N deliveries per second (a burst of N); default: no limit",
    )
    add.add_argument(
        "--max-in-flight",
        type=_max_in_flight,
        metavar="N",
        help="at most N attempts at once; default: delivery.per_webhook_concurrency",
    )
    add.add_argument(
        "--ordering",
        choices=["none", "fifo"],
        help="fifo: one at a time, in the events' order (a failing event holds the rest "
        "back); default: none",
    )
    _network_options(add)
    add.add_argument(
        "--signing",
        choices=["v1", "v1a"],
        help="v1: HMAC-SHA256 with the secret (default); v1a: ed25519, webhookd makes the "
        "key pair and prints the public key",
    )
    _tenant(add, "the tenant (customer) it belongs to: only its events reach it; for good")
    listing = _command(hooks, with_config, "list", "list subscriptions", webhooks_list)
    _paging(_tenant(listing, "only this tenant's"))
    change = _command(
        hooks,
        with_config,
        "set",
        "change a subscription's rate limit, concurrency, ordering, headers, client "
        "certificate or timeout",
        webhooks_set,
        wait_option="--wait",
    )
    change.add_argument("id", metavar="ID")
    change.add_argument(
        "--rate-limit",
        type=_or_none(_rate_limit),
        default=KEEP,
        metavar="N|none",
        help="at most N deliveries per second; none: no limit",
    )
    change.add_argument(
        "--max-in-flight",
        type=_or_none(_max_in_flight),
        default=KEEP,
        metavar="N|none",
        help="at most N attempts at once; none: delivery.per_webhook_concurrency",
    )
    change.add_argument(
        "--ordering",
        choices=["none", "fifo"],
        default=KEEP,
        help="fifo: pending deliveries go one at a time from the oldest",
    )
    _network_options(change, keep=True)
    change.add_argument("--no-headers", action="store_true", help="remove every extra header")
    singles: list[tuple[str, str, Action]] = [
        ("show", "show one subscription", webhooks_show),
        ("disable", "stop delivering; pending deliveries are parked", partial(_set_active, False)),
        ("enable", "deliver again; parked deliveries resume", partial(_set_active, True)),
        ("remove", "delete a subscription", webhooks_remove),
        (
            "rotate-secret",
            "new signing secret (printed once); the old one signs for a grace period",
            webhooks_rotate_secret,
        ),
    ]
    for name, help_text, action in singles:
        _command(hooks, with_config, name, help_text, action).add_argument("id", metavar="ID")


def _add_delivery_commands(sub: SubParsers, with_config: WithConfig) -> None:
    listing = _command(
        sub,
        with_config,
        "deliveries",
        "list queued deliveries (see `webhookd attempts` for one delivery's log)",
        deliveries,
    )
    listing.add_argument("--webhook", metavar="ID", help="only this webhook")
    listing.add_argument("--event", metavar="ID", help="only this event")
    listing.add_argument("--status", choices=[s.value for s in Status])
    _tenant(listing, "only deliveries to this tenant's webhooks")
    _paging(listing)
    log = _command(sub, with_config, "attempts", "the attempt log of one delivery", attempts)
    log.add_argument("webhook_id", metavar="WEBHOOK_ID")
    log.add_argument("event_id", metavar="EVENT_ID")
    again = _command(sub, with_config, "redrive", "retry dead or parked deliveries now", redrive)
    again.add_argument("--status", required=True, choices=[Status.DEAD, Status.PARKED])
    again.add_argument("--webhook", metavar="ID", help="only this webhook")
    again.add_argument(
        "--since", type=_since, metavar="TIME", help="only rows failed since (RFC 3339, or 2h ago)"
    )
    _tenant(again, "only this tenant's webhooks")
    replayed = _command(sub, with_config, "replay", "deliver an event again", replay)
    replayed.add_argument("event_id", metavar="EVENT_ID")
    replayed.add_argument("--webhook", metavar="ID", help="only to this webhook")


def _add_event_commands(sub: SubParsers, with_config: WithConfig) -> None:
    group = sub.add_parser("events", help="append events", description="events")
    events = group.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    emit = _command(events, with_config, "emit", "append one event; prints its id", events_emit)
    emit.add_argument("--type", required=True, metavar="TYPE", help="the event type")
    emit.add_argument(
        "--data", required=True, type=_json_data, metavar="JSON", help="JSON, @FILE or - (stdin)"
    )
    emit.add_argument("--id", metavar="ID", help="idempotency id (default: a new one)")
    emit.add_argument("--occurred-at", metavar="TIME", help="RFC 3339 (default: now)")
    _tenant(emit, "deliver to this tenant's webhooks only (default: to those of no tenant)")


def add_commands(sub: SubParsers, with_config: WithConfig) -> None:
    """The API commands, added to `webhookd`'s subcommands by webhookd.cli."""
    _add_webhook_commands(sub, with_config)
    _command(
        sub, with_config, "test", "send a test event now; exit 1 unless delivered", send_test
    ).add_argument("id", metavar="ID")
    _tenant(
        _command(sub, with_config, "status", "queue counts, lag and workers", status),
        "only this tenant's counts and webhooks",
    )
    _add_delivery_commands(sub, with_config)
    _add_event_commands(sub, with_config)
