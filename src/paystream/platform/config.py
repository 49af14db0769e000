"""Every setting paystream reads, in one place. Environment variables are ``PAYSTREAM_<NAME>``.

`paystream up` sets them for each service process it starts; a production deployment
sets them however it likes. Nothing is read at import time: call `load_settings()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of one paystream process. Defaults suit the embedded stack."""

    model_config = SettingsConfigDict(env_prefix="PAYSTREAM_", frozen=True, extra="ignore")

    # Where `paystream up` keeps its state (data dirs, logs, stack.json).
    home: Path = Path(".paystream")
    # Where a server that runs as a user of its own (PostgreSQL, when paystream runs as root)
    # gets its binaries and data, outside the home: see `paystream.stack.place`. None: the
    # default, /var/lib/paystream as root, in the home itself otherwise.
    server_root: Path | None = None
    # Backups (`paystream.stack.backup`, docs/backups.md): `up` takes a base backup this often
    # ("4h", "30m", "1d"; "off": never) and keeps the newest `backup_keep` (0: all) with the WAL
    # they need. `archive_timeout_seconds` > 0 makes PostgreSQL archive a segment at least that
    # often even when it is not full (each one costs a whole 16 MB file); 0: only full segments.
    backup_every: str = "4h"
    backup_keep: int = 6
    archive_timeout_seconds: float = 0.0

    # Connections. `database_url` is the service's own role, reaching only its schema.
    database_url: str = "postgresql://localhost:5432/paystream"
    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"

    # This process's HTTP listener (public API for the gateway, internal + operations otherwise).
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # With several copies of a service, they share ``http_port`` (SO_REUSEPORT: the kernel
    # spreads connections) and each also answers alone on ``own_port`` (readiness, metrics).
    own_port: int | None = None
    # How long the HTTP server keeps an idle keep-alive connection open (uvicorn's
    # timeout_keep_alive). Above a load balancer's idle timeout (60 s on common ones), so the
    # server is never the one to close a connection the balancer is about to reuse; a wallet
    # app's user that pays once a minute keeps its connection too (`bench --users`).
    http_keep_alive_seconds: int = Field(default=75, ge=1)
    # The listen backlog: connections the kernel queues before the server accepts them
    # (capped by net.core.somaxconn). Thousands of clients connecting at once need thousands.
    http_backlog: int = Field(default=4096, ge=16)
    # The operations listener: when set, ``/readyz`` and ``/metrics`` answer only on this port,
    # which serves nothing else (``/healthz`` answers on both). The gateway gets one, so its
    # public port carries no operations data (`paystream up` sets it; the Helm chart too).
    operations_port: int | None = None
    # `paystream migrate`, a deployment's migration step (`paystream up` does the same itself):
    # a role that may create roles and schemas (the cluster's superuser), and the password each
    # service's role gets, by service name (JSON: {"gateway": "...", ...}).
    admin_database_url: SecretStr | None = None
    role_passwords: dict[str, SecretStr] = Field(default_factory=dict)
    # Shared secret the gateway presents to internal service routes.
    internal_token: SecretStr = SecretStr("")
    # Base URLs of the other services, by name, e.g. {"payments": "http://127.0.0.1:8402"}.
    service_urls: dict[str, str] = Field(default_factory=dict)

    # Bus topology. Each consumer's stream is split in ``partitions`` (by account); a copy
    # of a service consumes the partitions it holds the lease of (platform/leases.py).
    partitions: int = 8
    # This process is copy ``copy_index`` of ``copies`` of its service (`paystream up --scale`).
    copy_index: int = 1
    copies: int = 1
    consumer_batch: int = 256
    stream_replicas: int = 1

    # /readyz answers 503 while a work pool (bulkhead) or the DB pool is busier than this.
    saturation_share: float = 0.9

    # Timeouts (seconds) for every call that leaves the process.
    db_timeout: float = 10.0
    db_pool_min: int = 2
    db_pool_max: int = 10
    nats_timeout: float = 5.0
    redis_timeout: float = 0.5
    http_timeout: float = 10.0

    # Gateway: access tokens.
    token_issuer: str = "paystream"  # noqa: S105 - a name, not a secret
    token_audience: str = "paystream-api"  # noqa: S105 - a name, not a secret
    token_ttl_seconds: int = 900
    idempotency_ttl_hours: int = 48
    # How often a gateway looks for keys added by `paystream keys rotate`.
    signing_keys_refresh_seconds: float = 15.0

    # Fraud rules (amounts in minor units, whatever the currency).
    # How long a payment's funds stay held while fraud review decides; then the hold expires.
    ledger_review_hold_seconds: int = 7 * 86400
    ledger_hold_sweep_seconds: float = 1.0
    fraud_amount_limit: int = 500_000
    fraud_review_threshold: int = 100_000
    fraud_velocity_limit: int = 30
    fraud_velocity_window_seconds: int = 60
    fraud_check_budget_seconds: float = 0.5
    # The fraud model beside the rules (fraud/model.py): "on" decides with them, "shadow" scores
    # and records only, "off" does not score. None: the model shipped in the package. The file
    # is looked at every `fraud_model_reload_seconds`; a new version takes over without a restart.
    fraud_model_mode: Literal["off", "shadow", "on"] = "shadow"
    fraud_model_path: Path | None = None
    fraud_model_reload_seconds: float = 2.0
    # The screening deadline (payments/deadline.py): a payment fraud has not decided within
    # this many seconds of its creation goes to review with its funds held; 0 switches it
    # off. The worker looks for overdue payments every `screening_deadline_sweep_seconds`.
    screening_deadline_seconds: float = 2.0
    screening_deadline_sweep_seconds: float = 0.25
    # Re-screening (fraud/rescreen.py) of reviews opened only because a dependency was away
    # (reasons screening_deadline, velocity_unavailable): a re-screen that takes longer than
    # its budget counts the dependency as still away; attempts back off exponentially from
    # `fraud_rescreen_backoff_seconds` up to the cap.
    fraud_rescreen_budget_seconds: float = 1.0
    fraud_rescreen_backoff_seconds: float = 1.0
    fraud_rescreen_backoff_cap_seconds: float = 60.0
    fraud_rescreen_interval_seconds: float = 0.5

    # Notifications: webhook deliveries.
    webhook_timeout_seconds: float = 5.0
    webhook_max_attempts: int = 8
    webhook_backoff_base_seconds: float = 1.0
    webhook_backoff_cap_seconds: float = 300.0
    webhook_concurrency: int = 32
    # Off in production: webhooks may reach only public addresses (notifications/ssrf.py).
    # `paystream up --allow-local-webhooks` (and `--demo`) turn it on for local receivers.
    webhook_allow_private: bool = False

    # The keyring of key-encryption keys for the card vault (platform/crypto.py); the
    # PAYSTREAM_KEYRING variable (the JSON itself) takes precedence over the file.
    keyring_file: str | None = None

    # TLS: the gateway serves HTTPS (TLS 1.2+) when both are set (`paystream up --tls`).
    tls_certfile: str | None = None
    tls_keyfile: str | None = None

    # Rate limits per route class, each for the API client and for the source address
    # (gateway/rate_limit.py). "auth" is the token endpoint, which fails closed without Redis.
    rate_limits: dict[str, str] = Field(default_factory=lambda: {
        "auth": "60/60s", "money": "2000/1s", "write": "500/1s", "read": "2000/1s",
    })

    # Logging: JSON lines on stdout, or in ``log_file`` when set (`paystream up` sets it to
    # ``<home>/logs/<process>.log``), which is rotated once it passes ``log_max_bytes``:
    # ``<name>.log.1`` … ``<name>.log.<log_backups>`` keep the older lines.
    log_level: str = "info"
    log_file: Path | None = None
    log_max_bytes: int = Field(default=50 * 1024 * 1024, ge=4096)
    log_backups: int = Field(default=5, ge=1)

    # Traces (platform/tracing.py): exported over OTLP/HTTP when an endpoint is set, by the
    # standard OpenTelemetry variables (not PAYSTREAM_ ones); off, nothing is traced. The
    # exporter and batch processor read the other OTEL_* variables themselves.
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    )
    otel_sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED")
    # The share of traces kept, decided where a trace starts (the gateway's requests, mostly)
    # and followed downstream, so a payment's trace is kept or dropped whole.
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    @property
    def tracing_endpoint(self) -> str | None:
        """Where spans go; None when tracing is off."""
        return None if self.otel_sdk_disabled else self.otlp_endpoint

    # Fault injection for tests: publish every outbox event twice under distinct
    # broker de-duplication ids, so every consumer sees every event twice.
    chaos_duplicate_delivery: bool = False


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides winning."""
    return Settings(**overrides)  # type: ignore[arg-type]
