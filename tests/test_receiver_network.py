"""What a receiver's network requires, end to end on both engines: a webhook's headers
(masked but in the answer that set them), v1a signatures (verified with the cryptography
package's own Ed25519 verifier, through a rotation), a client certificate presented to a
receiver that requires one, a webhook's own timeout, and the bad inputs refused."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trustme
from conftest import Api, DaemonProcess, make_settings, running, write_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from forward_proxy import ForwardProxy
from receivers import RawServer, RecordedRequest, Recorder, never_answer

from tests.pg import PgCluster
from webhookd.daemon import EXIT_CONFIG, Daemon


def database(engine: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if engine == "duckdb":
        return {}
    cluster: PgCluster = request.getfixturevalue("pg")
    return {"url": cluster.url, "schema": request.getfixturevalue("pg_schema")}


def verify_v1a(public_key: str, request: RecordedRequest) -> int:
    """How many v1a signatures of the request verify with `public_key`."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key.removeprefix("whpk_")))
    signed = (
        f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode()
        + request.body
    )
    good = 0
    for entry in request.headers["webhook-signature"].split(" "):
        assert entry.startswith("v1a,"), entry
        try:
            key.verify(base64.b64decode(entry[4:]), signed)
        except Exception:
            continue
        good += 1
    return good


async def test_headers_are_sent_and_masked_but_where_they_were_set(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database=database(engine, request))
    async with Recorder() as rx, running(settings) as daemon, Api(daemon.url) as api:
        created = await api.create_webhook(
            rx.url_for("/h"), headers={"X-Api-Key": "k-123", "Authorization": "Bearer t0"}
        )
        assert created["headers"] == {"X-Api-Key": "k-123", "Authorization": "Bearer t0"}
        wid = created["webhook_id"]
        shown = await api.ok("GET", f"/v1/webhooks/{wid}")
        assert shown["headers"] == {"X-Api-Key": "**********", "Authorization": "**********"}
        listed = await api.ok("GET", "/v1/webhooks")
        assert listed["items"][0]["headers"] == shown["headers"]
        await api.emit({"type": "t", "data": {}})
        [first] = await rx.wait_for_requests(1)
        assert first.headers["X-Api-Key"] == "k-123"
        assert first.headers["Authorization"] == "Bearer t0"
        changed = await api.ok("PATCH", f"/v1/webhooks/{wid}", {"headers": {"X-Api-Key": "k-2"}})
        assert changed["headers"] == {"X-Api-Key": "k-2"}
        untouched = await api.ok("PATCH", f"/v1/webhooks/{wid}", {"description": "d"})
        assert untouched["headers"] == {"X-Api-Key": "**********"}
        await api.emit({"type": "t", "data": {}})
        second = (await rx.wait_for_requests(2))[1]
        assert second.headers["X-Api-Key"] == "k-2"
        assert "Authorization" not in second.headers
        tested = await api.ok("POST", f"/v1/webhooks/{wid}/test", {})
        assert tested["delivered"] is True
        assert rx.requests[2].headers["X-Api-Key"] == "k-2"  # the test route sends them too
    assert "k-123" not in (await_text := str(shown) + str(listed))
    assert "k-2" not in await_text


async def test_v1a_deliveries_verify_with_the_public_key_through_a_rotation(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database=database(engine, request))
    async with Recorder() as rx, running(settings) as daemon, Api(daemon.url) as api:
        created = await api.create_webhook(rx.url_for("/h"), signing="v1a")
        assert created["signing"] == "v1a" and created["secret"] is None
        old_key = created["public_key"]
        assert old_key.startswith("whpk_")
        wid = created["webhook_id"]
        assert (await api.ok("GET", f"/v1/webhooks/{wid}"))["public_key"] == old_key
        await api.emit({"type": "t", "data": {"n": 1}})
        [first] = await rx.wait_for_requests(1)
        assert verify_v1a(old_key, first) == 1
        rotated = await api.ok("POST", f"/v1/webhooks/{wid}/rotate-secret", {})
        new_key = rotated["public_key"]
        assert rotated["secret"] is None and new_key != old_key
        await api.emit({"type": "t", "data": {"n": 2}})
        second = (await rx.wait_for_requests(2))[1]
        # During the grace period both keys sign: each public key verifies one signature.
        assert len(second.headers["webhook-signature"].split(" ")) == 2
        assert verify_v1a(new_key, second) == 1
        assert verify_v1a(old_key, second) == 1
        plain = await api.create_webhook(rx.url_for("/v1"))
        assert (plain["signing"], plain["public_key"]) == ("v1", None)
        assert plain["secret"].startswith("whsec_")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def mtls_settings(tmp_path: Path, ca: trustme.CA, database: dict[str, Any]) -> Any:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("webhookd@example.com")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    return make_settings(
        tmp_path,
        database=database,
        delivery={"ca_file": str(tmp_path / "ca.pem"), "max_attempts": 1},
        tls={
            "client_certificates": {
                "partner": {
                    "cert_file": str(tmp_path / "client.crt"),
                    "key_file": str(tmp_path / "client.key"),
                }
            }
        },
    )


async def test_a_client_certificate_reaches_a_receiver_that_requires_one(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, ca: trustme.CA
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    settings = mtls_settings(tmp_path, ca, database(engine, request))
    async with (
        Recorder(ssl_context=context) as rx,
        running(settings) as daemon,
        Api(daemon.url) as api,
    ):
        with_cert = await api.create_webhook(rx.url_for("/mtls"), client_certificate="partner")
        assert with_cert["client_certificate"] == "partner"
        without = await api.create_webhook(rx.url_for("/none"))
        await api.emit({"type": "t", "data": {}})
        await api.wait_status({"delivered": 1}, webhook_id=with_cert["webhook_id"])
        [dead] = await api.wait_status({"dead": 1}, webhook_id=without["webhook_id"])
        assert dead["last_status_code"] is None
        assert dead["last_error"], dead
        attempts = await api.ok(
            "GET", f"/v1/deliveries/{without['webhook_id']}/{dead['event_id']}/attempts"
        )
        assert attempts["items"][0]["error"] == dead["last_error"]
    assert [r.path for r in rx.requests] == ["/mtls"]


async def test_a_webhooks_timeout_ends_its_attempts(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, database=database(engine, request), delivery={"max_attempts": 1}
    )
    async with RawServer(never_answer) as rx, running(settings) as daemon, Api(daemon.url) as api:
        created = await api.create_webhook(rx.url + "/slow", timeout=0.3)
        assert created["timeout"] == 0.3
        await api.emit({"type": "t", "data": {}})
        [dead] = await api.wait_status({"dead": 1})
        assert dead["last_error"] == "timeout after 0.3s"
        cleared = await api.ok("PATCH", f"/v1/webhooks/{created['webhook_id']}", {"timeout": None})
        assert cleared["timeout"] is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"headers": {"Webhook-Id": "x"}}, "headers: 'Webhook-Id' is set by webhookd"),
        ({"headers": {"Host": "x"}}, "headers: 'Host' is set by webhookd"),
        ({"headers": {"X-A": "a\r\nX-B: b"}}, "headers: X-A: the value is printable ASCII"),
        ({"headers": {"Bad Name": "x"}}, "headers: 'Bad Name' is not an HTTP header name"),
        ({"headers": {"X-A": "x" * 1025}}, "headers: X-A: the value is longer than 1024"),
        ({"headers": {f"X-{i}": "v" for i in range(21)}}, "headers: at most 20 headers"),
        ({"signing": "v2"}, "signing: one of v1 (HMAC-SHA256), v1a (ed25519)"),
        ({"client_certificate": "nope"}, "client_certificate: not a client certificate"),
        ({"timeout": 6}, "timeout: seconds, above 0 and at most delivery.timeout (5)"),
        ({"timeout": 0}, "timeout: seconds, above 0"),
        ({"timeout": "5s"}, "timeout: seconds"),
    ],
)
async def test_bad_network_fields_are_refused_naming_the_field(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    async with running(make_settings(tmp_path)) as daemon, Api(daemon.url) as api:
        status, body = await api.request(
            "POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/h", **fields}
        )
        assert status == 400, body
        assert body["error"]["message"].startswith(message), body
        created = await api.create_webhook("http://127.0.0.1:9/h")
        status, body = await api.request(
            "PATCH", f"/v1/webhooks/{created['webhook_id']}", {**fields}
        )
        if "signing" in fields:
            assert (status, body["error"]["message"]) == (400, "unknown field(s): signing")
        else:
            assert status == 400 and body["error"]["message"].startswith(message), body


async def test_a_secret_with_signing_v1a_is_refused(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path)) as daemon, Api(daemon.url) as api:
        status, body = await api.request(
            "POST",
            "/v1/webhooks",
            {"url": "http://127.0.0.1:9/h", "signing": "v1a", "secret": "whsec_" + "A" * 32},
        )
    assert status == 400
    assert body["error"] == {
        "code": "invalid_secret",
        "message": "secret: not with signing v1a (webhookd makes its keys)",
    }


async def test_header_values_and_the_v1a_private_key_never_leak(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    """A daemon subprocess logging at debug: the header value is in the create answer only,
    the v1a private key (read from the database afterwards) in no answer and no log line."""
    config = write_config(tmp_path, logging={"format": "json", "level": "debug"})
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon_process.append(daemon)
    value = "hv-" + "q7Zx" * 6
    answers: list[str] = []
    async with Recorder() as rx:
        daemon.start()
        async with Api(daemon.url) as api:
            created = await api.create_webhook(
                rx.url_for("/h"), headers={"X-Api-Key": value}, signing="v1a"
            )
            assert created["headers"] == {"X-Api-Key": value}
            wid = created["webhook_id"]
            await api.emit({"type": "t", "data": {}})
            [delivered] = await rx.wait_for_requests(1)
            assert delivered.headers["X-Api-Key"] == value
            for path in (f"/v1/webhooks/{wid}", "/v1/webhooks", "/v1/deliveries"):
                answers.append(str(await api.ok("GET", path)))
            answers.append(str(await api.ok("POST", f"/v1/webhooks/{wid}/test", {})))
            answers.append(str(await api.ok("POST", f"/v1/webhooks/{wid}/rotate-secret", {})))
        assert daemon.stop() == 0
    with duckdb.connect(str(tmp_path / "webhookd.duckdb"), read_only=True) as con:
        keys = con.execute("SELECT secret, previous_secret FROM webhooks").fetchone()
    assert keys is not None and all(k.startswith("whsk_") for k in keys)
    everything = daemon.output() + "\n".join(answers) + str(created)
    for key in keys:
        assert key not in everything and key.removeprefix("whsk_") not in everything
    assert value not in daemon.output() + "\n".join(answers)


async def test_every_attempt_goes_through_the_proxy_of_the_config(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with Recorder() as rx, Recorder() as direct, ForwardProxy() as proxy:
        proxy_file = tmp_path / "proxy"
        proxy_file.write_text(proxy.url_with("egress", "s3cret") + "\n")
        settings = make_settings(
            tmp_path,
            database=database(engine, request),
            delivery={"proxy_file": str(proxy_file), "no_proxy": ["localhost"]},
        )
        async with running(settings) as daemon, Api(daemon.url) as api:
            await api.create_webhook(rx.url_for("/via-proxy"), headers={"X-Api-Key": "k"})
            await api.create_webhook(direct.url_for("/direct", host="localhost"))
            await api.emit({"type": "t", "data": {}})
            await api.wait_status({"delivered": 2})
    [asked] = proxy.asked
    assert (asked.method, asked.target) == ("POST", rx.url_for("/via-proxy"))
    assert asked.headers["proxy-authorization"] == "Basic ZWdyZXNzOnMzY3JldA=="
    [received] = rx.requests
    assert received.headers["X-Api-Key"] == "k" and "Proxy-Authorization" not in received.headers
    assert [r.path for r in direct.requests] == ["/direct"]  # no_proxy: reached directly


async def test_the_daemon_does_not_start_with_an_unreadable_client_certificate(
    tmp_path: Path,
) -> None:
    pair = {"cert_file": str(tmp_path / "none.crt"), "key_file": str(tmp_path / "none.key")}
    settings = make_settings(tmp_path, tls={"client_certificates": {"partner": pair}})
    assert await Daemon(settings).run() == EXIT_CONFIG
