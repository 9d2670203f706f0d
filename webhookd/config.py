"""Settings: one TOML file, overridden by WEBHOOKD_<SECTION>__<KEY> environment variables."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from webhookd.durations import Duration

DEFAULT_CONFIG_PATH = Path("/etc/webhookd/webhookd.toml")


class ConfigError(Exception):
    """Every problem found in the settings, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def redact_url(url: str) -> str:
    """A database URL with its password (and any password parameter) masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "**********"
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:**********@{host}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1**********", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _check_url(url: str, key: str) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"{key}: not a valid URL ({exc})") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"{key}: must start with postgresql:// (the PostgreSQL engine)")
    return url


class DatabaseSettings(_Section):
    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    path: Path = Path("/var/lib/webhookd/webhookd.duckdb")
    # PostgreSQL instead of the DuckDB file: several daemons may share one database.
    url: SecretStr | None = None
    url_file: Path | None = None
    db_schema: str = Field(default="webhookd", alias="schema")
    pool_size: int | None = Field(default=None, ge=2, le=1000)
    # PostgreSQL: a daemon whose heartbeat is older than this is taken for dead, and the
    # leader re-drives its inflight rows without waiting for their leases.
    peer_timeout: Duration = 30.0
    # DuckDB's automatic checkpoint stalls a big commit; the writer checkpoints itself when idle.
    checkpoint_interval: Duration = 30.0
    # DuckDB's buffer pool keeps what the queue and the log touched up to this cap: at 1GB
    # a steady stream of 400,000 deliveries peaked at 459 MB for both processes, at 128MB
    # under 300 MB with the same CPU per delivery (bench soak and throughput, issue 26).
    memory_limit: str = "128MB"
    # DuckDB: a call the database process leaves unanswered this long makes the daemon
    # unhealthy, and the systemd watchdog pings stop.
    stall_timeout: Duration = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _one_engine(self) -> DatabaseSettings:
        if self.url is not None and self.url_file is not None:
            raise ValueError("database.url, database.url_file: set one, not both")
        if (self.url is not None or self.url_file is not None) and "path" in self.model_fields_set:
            raise ValueError(
                "database.path, database.url: set one (path selects DuckDB, url PostgreSQL)"
            )
        if self.url is not None:
            _check_url(self.url.get_secret_value(), "database.url")
        if not _SCHEMA_NAME.fullmatch(self.db_schema):
            raise ValueError(
                "database.schema: a lower-case SQL identifier (letters, digits, _), "
                "at most 63 characters"
            )
        return self

    @property
    def engine(self) -> Literal["duckdb", "postgresql"]:
        return "postgresql" if self.url is not None or self.url_file is not None else "duckdb"

    def resolve_url(self) -> str:
        """The PostgreSQL URL, from `url` or read from `url_file` (systemd LoadCredential)."""
        if self.url is not None:
            return self.url.get_secret_value().strip()
        assert self.url_file is not None
        try:
            text = self.url_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                [f"database.url_file: cannot read {str(self.url_file)!r} ({exc.strerror})"]
            ) from exc
        if not text.strip():
            raise ConfigError([f"database.url_file: {str(self.url_file)!r} is empty"])
        try:
            return _check_url(text, "database.url_file")
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None

    def url_file_warnings(self) -> list[str]:
        """What check-config says of a credentials file others may read (not an error: the
        daemon runs, but the password in it is not only the daemon's)."""
        path = self.url_file
        if path is None:
            return []
        try:
            mode = path.stat().st_mode
        except OSError:
            return []  # resolve_url names the problem
        if mode & 0o004:
            return [
                f"database.url_file: {str(path)!r} is readable by every user of this machine "
                f"(mode {mode & 0o777:o}); chmod o-r it (0600 or 0640), or use systemd's "
                "LoadCredential"
            ]
        return []

    def pool(self, workers: int) -> int:
        """Connections per daemon: outcomes, claims, scans and the API share them."""
        return self.pool_size or max(4, min(20, workers // 8 + 2))


class AdminSettings(_Section):
    listen: str = "127.0.0.1:8787"
    token_file: Path = Path("/etc/webhookd/admin.token")
    token: SecretStr | None = None
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch_events: int = Field(default=1000, ge=1)
    # Slow or silent clients: a request head (line and headers) must arrive within
    # header_timeout, a body within body_timeout; a kept-alive connection idle for
    # idle_timeout is closed.
    header_timeout: Duration = Field(default=10.0, gt=0)
    body_timeout: Duration = Field(default=30.0, gt=0)
    idle_timeout: Duration = Field(default=60.0, gt=0)
    # Open API connections; unset: half of RLIMIT_NOFILE, the rest kept for the workers.
    max_connections: int | None = Field(default=None, ge=1)
    # Least privilege for producers: tokens (one a line) that may only POST /v1/events.
    producer_token_file: Path | None = None

    @model_validator(mode="after")
    def _listen_form(self) -> AdminSettings:
        if self.listen.startswith("unix:"):
            if len(self.listen) <= len("unix:"):
                raise ValueError("admin.listen: 'unix:' needs a socket path")
        else:
            host, sep, port = self.listen.rpartition(":")
            # Port 0 lets the OS choose (tests); "²".isdigit() is true, hence isascii().
            valid_port = port.isascii() and port.isdigit() and 0 <= int(port) < 65536
            if not sep or not host or not valid_port:
                raise ValueError(
                    f"admin.listen: {self.listen!r} is neither host:port nor unix:/path"
                )
        return self

    def address(self) -> tuple[str, int] | str:
        """(host, port) for TCP, or the socket path for unix:."""
        if self.listen.startswith("unix:"):
            return self.listen[len("unix:") :]
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def resolve_token(self) -> str:
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                [
                    f"admin.token_file: cannot read {str(self.token_file)!r} ({exc.strerror}); "
                    "create it or set WEBHOOKD_ADMIN__TOKEN"
                ]
            ) from exc
        if not token:
            raise ConfigError([f"admin.token_file: {str(self.token_file)!r} is empty"])
        return token

    def resolve_producer_tokens(self, operator_token: str | None = None) -> list[str]:
        """The producer tokens in `producer_token_file` (none if unset); see `producer_tokens`."""
        path = self.producer_token_file
        if path is None:
            return []
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                [f"admin.producer_token_file: cannot read {str(path)!r} ({why})"]
            ) from exc
        return producer_tokens(text, str(path), operator_token)


MIN_PRODUCER_TOKEN = 16


def producer_tokens(text: str, where: str, operator_token: str | None = None) -> list[str]:
    """Tokens from the text of a producer token file: one a line, so producers can be rotated
    one at a time; blank lines and lines starting with # are skipped.

    A token is one word of at least MIN_PRODUCER_TOKEN characters and never the operator's
    token (it would give a producer every route). Problems name the line, never its text.
    """
    tokens: list[str] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if any(ch.isspace() or not ch.isprintable() for ch in token):
            problems.append(
                f"admin.producer_token_file: {where!r} line {number}: a token is one word "
                "of printable characters (comments are lines of their own, starting with #)"
            )
        elif len(token) < MIN_PRODUCER_TOKEN:
            problems.append(
                f"admin.producer_token_file: {where!r} line {number}: a token of at least "
                f"{MIN_PRODUCER_TOKEN} characters"
            )
        elif operator_token is not None and token == operator_token:
            problems.append(
                f"admin.producer_token_file: {where!r} line {number}: the operator's token "
                "(admin.token_file); a producer token must be another"
            )
        elif token not in tokens:
            tokens.append(token)
    if problems:
        raise ConfigError(problems)
    return tokens


class ScannerSettings(_Section):
    poll_interval: Duration = 0.25
    batch_size: int = Field(default=500, ge=1, le=100_000)


class DeliverySettings(_Section):
    workers: int = Field(default=64, ge=1, le=10_000)
    per_webhook_concurrency: int = Field(default=8, ge=1)
    timeout: Duration = 15.0
    max_attempts: int = Field(default=8, ge=1)
    retry_schedule: list[Duration] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
    )
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    allow_private_destinations: bool = False
    max_response_bytes: int = Field(default=4096, ge=0)
    # A lease covers a row from its claim to its outcome: the wait for a free slot of its
    # webhook (claims run ahead of the per-webhook cap) and the attempt itself.
    lease: Duration = 600.0
    claim_batch: int = Field(default=512, ge=1)
    disable_after: Duration = 5 * 86400.0
    rotation_grace: Duration = 86400.0
    # Trusted CAs added to the system's, for receivers (or a proxy's tunnel) on a private CA.
    ca_file: Path | None = None
    # An HTTP forward proxy for every attempt (http://[user:password@]host:port), or a file
    # holding that URL (credentials out of the TOML); hosts in no_proxy bypass it.
    proxy: SecretStr | None = None
    proxy_file: Path | None = None
    no_proxy: list[str] = Field(default_factory=list)
    # The HTTP client of the attempts: pyreqwest (half the CPU per request) or aiohttp. With
    # a proxy it is aiohttp, whatever this says (see webhookd.senders).
    http_client: Literal["reqwest", "aiohttp"] = "reqwest"

    @model_validator(mode="after")
    def _lease_outlives_attempt(self) -> DeliverySettings:
        if self.lease <= self.timeout:
            raise ValueError("delivery.lease must be longer than delivery.timeout")
        if self.proxy is not None and self.proxy_file is not None:
            raise ValueError("delivery.proxy, delivery.proxy_file: set one, not both")
        if self.proxy is not None:
            check_proxy_url(self.proxy.get_secret_value(), "delivery.proxy")
        for host in self.no_proxy:
            if not host.strip() or any(ch.isspace() or ch in "/@" for ch in host.strip()):
                raise ValueError(f"delivery.no_proxy: {host!r} is not a host name or address")
        return self

    def resolve_proxy(self) -> str | None:
        """The proxy URL, from `proxy` or read from `proxy_file`; None without a proxy."""
        if self.proxy is not None:
            return self.proxy.get_secret_value().strip()
        if self.proxy_file is None:
            return None
        try:
            text = self.proxy_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                [f"delivery.proxy_file: cannot read {str(self.proxy_file)!r} ({why})"]
            ) from exc
        try:
            return check_proxy_url(text, "delivery.proxy_file")
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None


def check_proxy_url(url: str, key: str) -> str:
    """An HTTP forward proxy's URL, checked: http, a host, a port; nothing after it."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{key}: not a valid URL ({exc})") from None
    if parts.scheme != "http":
        raise ValueError(f"{key}: an HTTP proxy, http://[user:password@]host:port")
    if not parts.hostname or port is None:
        raise ValueError(f"{key}: needs a host and a port (http://host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{key}: nothing after host:port")
    return url


_CERT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ClientCertificate(_Section):
    """A certificate and its private key (PEM files), presented to receivers that ask."""

    cert_file: Path
    key_file: Path


class TlsSettings(_Section):
    client_certificates: dict[str, ClientCertificate] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names(self) -> TlsSettings:
        for name in self.client_certificates:
            if not _CERT_NAME.fullmatch(name):
                raise ValueError(
                    f"tls.client_certificates.{name}: a name of 1-64 letters, digits, _ . -"
                )
        return self


class RetentionSettings(_Section):
    delivered_ttl: Duration = 3600.0
    log_ttl: Duration = 30 * 86400.0
    prune_interval: Duration = 60.0
    prune_batch: int = Field(default=5000, ge=1)


class OperationalSettings(_Section):
    # A webhook failing this long (every attempt since its last delivery) is reported
    # once, as webhookd.webhook.failing.
    failing_after: Duration = Field(default=900.0, gt=0)


class TracingSettings(_Section):
    # OTLP/HTTP endpoint for spans (the webhookd[otel] extra); unset: no export.
    otlp_endpoint: str | None = None

    @model_validator(mode="after")
    def _endpoint(self) -> TracingSettings:
        if self.otlp_endpoint is not None:
            parts = urlsplit(self.otlp_endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    "tracing.otlp_endpoint: an http:// or https:// URL of an OTLP/HTTP "
                    "receiver (e.g. http://127.0.0.1:4318)"
                )
        return self


class ShutdownSettings(_Section):
    grace: Duration = 10.0


class LoggingSettings(_Section):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WEBHOOKD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    scanner: ScannerSettings = Field(default_factory=ScannerSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    operational: OperationalSettings = Field(default_factory=OperationalSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("WEBHOOKD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _read_toml(path: Path, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError([f"config: file {str(path)!r} does not exist"]) from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config: {path}: malformed TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"config: cannot read {str(path)!r}: {exc.strerror}"]) from None


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "config"
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    message = message.removeprefix("Value error, ")
    # A section's own validator names its keys itself ("admin.listen: ...").
    if message.startswith((key + ":", key + ".")):
        return message
    return f"{key}: {message}"


def load_settings(
    path: str | os.PathLike[str] | None = None, *, required: bool | None = None
) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError naming every bad key.

    An explicitly named file must exist; the default path may be absent (defaults apply).
    """
    resolved = config_path(path)
    must_exist = (
        required if required is not None else (path is not None or "WEBHOOKD_CONFIG" in os.environ)
    )
    data = _read_toml(resolved, must_exist)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None


def redacted(settings: Settings) -> dict[str, Any]:
    """The resolved settings as check-config prints them: secrets masked, durations spelled."""
    data = settings.model_dump(mode="json", by_alias=True)
    if settings.admin.token is not None:
        data["admin"]["token"] = "**********"
    database = settings.database
    data["database"] = {"engine": database.engine, **data["database"]}
    if database.url is not None:
        data["database"]["url"] = redact_url(database.url.get_secret_value())
    if settings.delivery.proxy is not None:
        data["delivery"]["proxy"] = redact_url(settings.delivery.proxy.get_secret_value())
    if database.engine == "postgresql":
        for key in ("path", "checkpoint_interval", "memory_limit", "stall_timeout"):
            data["database"].pop(key, None)
    else:
        for key in ("url", "url_file", "schema", "pool_size", "peer_timeout"):
            data["database"].pop(key, None)
    return data
