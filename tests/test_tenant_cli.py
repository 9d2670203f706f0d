"""The CLI for tenants: `--tenant` on `webhooks add/list`, `events emit`, `deliveries`,
`status` and `redrive`; `webhookd tenants token create|list|revoke`; the CLI run with a
tenant token (`--token-file`) sees its tenant only."""

from __future__ import annotations

from pathlib import Path

from tests.receivers import Recorder
from tests.test_cli import (  # noqa: F401 (start_daemon: the fixture)
    StartDaemon,
    add_webhook,
    eventually,
    fields,
    start_daemon,
    table,
)


async def test_tenant_options_and_tenant_tokens(
    start_daemon: StartDaemon,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    cli = start_daemon()
    async with Recorder(status=204) as rx:
        acme = await add_webhook(cli, rx.url_for("/acme"), "--tenant", "acme")
        plain = await add_webhook(cli, rx.url_for("/plain"))
        assert acme["tenant"] == "acme" and plain["tenant"] is None
        emitted = await cli.ok(
            "events", "emit", "--type", "invoice.paid", "--data", "{}", "--tenant", "acme"
        )
        acme_event = emitted.out.strip()
        await cli.ok("events", "emit", "--type", "invoice.paid", "--data", "{}")
        await rx.wait_for_requests(2)

        listed = await cli.json("webhooks", "list", "--tenant", "acme")
        assert [w["webhook_id"] for w in listed["items"]] == [acme["webhook_id"]]
        assert ["acme"] in [r[2:3] for r in table((await cli.ok("webhooks", "list")).out)]
        rows = await eventually(
            lambda: cli.json("deliveries", "--tenant", "acme"),
            lambda page: [d["status"] for d in page["items"]] == ["delivered"],
            "acme's delivery",
        )
        assert rows["items"][0]["event_id"] == acme_event
        status = await cli.json("status", "--tenant", "acme")
        assert list(status["by_webhook"]) == [acme["webhook_id"]]
        redriven = await cli.json("redrive", "--status", "dead", "--tenant", "acme")
        assert redriven == {"count": 0}

    made = await cli.ok(
        "tenants", "token", "create", "acme", "--ttl", "1h", "--description", "acme portal"
    )
    shown = fields(made.out)
    assert shown["token"].startswith("wht_" + shown["token_id"] + ".")
    assert "not shown again" in made.err
    listing = await cli.ok("tenants", "token", "list", "acme")
    assert table(listing.out)[0] == [
        "token_id",
        "tenant",
        "expires_at",
        "created_at",
        "description",
    ]
    assert table(listing.out)[1][:2] == [shown["token_id"], "acme"]
    assert shown["token"] not in listing.out

    token_file = tmp_path / "acme.token"
    token_file.write_text(shown["token"] + "\n")
    as_acme = ["--token-file", str(token_file)]
    mine = await cli.json("webhooks", "list", *as_acme)
    assert [w["webhook_id"] for w in mine["items"]] == [acme["webhook_id"]]
    refused = await cli("status", *as_acme)
    assert refused.code == 1 and "403" in refused.err
    assert (await cli.json("status", "--tenant", "acme", *as_acme))["by_webhook"]
    other = await cli("webhooks", "show", plain["webhook_id"], *as_acme)
    assert other.code == 1 and "404" in other.err

    revoked = await cli.ok("tenants", "token", "revoke", "acme", shown["token_id"])
    assert revoked.out == f"revoked {shown['token_id']}\n"
    after = await cli("webhooks", "list", *as_acme)
    assert after.code == 1 and "401" in after.err
    assert (await cli.ok("tenants", "token", "list", "acme")).out == "(none)\n"
    bad = await cli("tenants", "token", "create", "acme corp")
    assert bad.code == 1 and "400" in bad.err and "tenant:" in bad.err
