"""`webhookd tenants token create|list|revoke`: tenant tokens through the API (operator
token only). A new token is printed once; store it in the customer's portal at once."""

from __future__ import annotations

import argparse
from functools import partial
from typing import TYPE_CHECKING, Any

from webhookd.client import Client, segment
from webhookd.client_cli import (
    Result,
    _command,
    note,
    print_fields,
    print_table,
    show_line,
)
from webhookd.durations import parse_duration

if TYPE_CHECKING:
    from webhookd.client_cli import SubParsers, WithConfig

TOKEN_COLUMNS = ("token_id", "tenant", "expires_at", "created_at", "description")


def _ttl(raw: str) -> int:
    try:
        seconds = parse_duration(raw)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds <= 10 * 365 * 86400:
        raise argparse.ArgumentTypeError("a duration from 1s to 3650d (30d, 12h, 90d)")
    return int(seconds)


def show_token_once(payload: Any) -> None:
    print_fields(payload)
    note("store the token now: it is not shown again")


def show_tokens(payload: Any) -> None:
    print_table(payload["items"], TOKEN_COLUMNS)


def token_create(client: Client, args: argparse.Namespace) -> Result:
    body: dict[str, Any] = {}
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.description is not None:
        body["description"] = args.description
    path = f"/v1/tenants/{segment(args.tenant)}/tokens"
    return Result(client.request("POST", path, body), show_token_once)


def token_list(client: Client, args: argparse.Namespace) -> Result:
    path = f"/v1/tenants/{segment(args.tenant)}/tokens"
    return Result(client.request("GET", path), show_tokens)


def token_revoke(client: Client, args: argparse.Namespace) -> Result:
    path = f"/v1/tenants/{segment(args.tenant)}/tokens/{segment(args.token_id)}"
    payload = client.request("DELETE", path)
    return Result(payload, partial(show_line, f"revoked {args.token_id}"))


def add_tenant_commands(sub: SubParsers, with_config: WithConfig) -> None:
    group = sub.add_parser(
        "tenants", help="tenant (customer) tokens", description="tenants and their tokens"
    )
    tenants = group.add_subparsers(dest="tenants_command", required=True, metavar="COMMAND")
    token = tenants.add_parser("token", help="tokens a customer portal holds", description="")
    tokens = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    create = _command(
        tokens,
        with_config,
        "create",
        "make a token limited to one tenant (printed once)",
        token_create,
    )
    create.add_argument("tenant", metavar="TENANT")
    create.add_argument("--ttl", type=_ttl, metavar="DURATION", help="lifetime (default 90d)")
    create.add_argument("--description", help="a note for operators: whose token it is")
    listing = _command(tokens, with_config, "list", "a tenant's tokens (no values)", token_list)
    listing.add_argument("tenant", metavar="TENANT")
    revoke = _command(tokens, with_config, "revoke", "revoke a token at once", token_revoke)
    revoke.add_argument("tenant", metavar="TENANT")
    revoke.add_argument("token_id", metavar="TOKEN_ID")
