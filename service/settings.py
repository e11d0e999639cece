"""Service settings, from environment variables (prefix `TUNESET_`; `REDIS_URL` is read too).

Defaults work on one machine with no set-up: Redis on localhost, blobs under `./.tuneset`.
Secrets are `SecretStr`, so they never appear in logs or reprs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.store.state import DEFAULT_JOB_RETENTION_S


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNESET_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("TUNESET_REDIS_URL", "REDIS_URL"),
        description="Redis for job state, events, idempotency records and API keys; also the Celery broker. "
        "`sentinel://host:26379;sentinel://host2:26379/0?master_name=mymaster` finds the master through "
        "Sentinel (service/store/redis_conn.py).",
    )
    data_dir: Path = Field(
        Path(".tuneset"), description="Local state for `tuneset dev` and the local blob store."
    )
    blob_backend: Literal["local", "s3"] = Field("local", description="Where batches and artifacts live.")
    blob_dir: Path | None = Field(None, description="Local blob store root (default: DATA_DIR/blobs).")
    s3_bucket: str = Field("tuneset", description="S3 bucket for the s3 blob backend.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, ...).")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_access_key_id: SecretStr | None = Field(
        None, description="S3 access key (else the AWS default chain)."
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest accepted request body (413 beyond)."
    )
    # -- request limits and retention: what one client may make the service read or keep --
    tools_max_body_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="Largest body of POST /v1/inspect and POST /v1/validate, checked before it is read "
        "(413 beyond): they answer synchronously, larger inputs belong in a dataset and a build.",
    )
    browse_scan_lines: int = Field(
        10_000,
        gt=0,
        description="Most lines one GET /v1/datasets/{id}/examples looks at past its cursor (each is "
        "validated under the request's recipe); a filtered page that finds too few ends early, with "
        "a next_cursor to go on from.",
    )
    webhook_max_body_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="Largest body of a provider's webhook (POST /v1/providers/{id}/webhooks), checked "
        "before it is read (413 beyond): the receiver needs no key and the events are small.",
    )
    job_retention_s: int = Field(
        DEFAULT_JOB_RETENTION_S,
        gt=0,
        description="How long a finished (succeeded, failed or cancelled) job's record and events are "
        "kept; queued and running jobs never expire. A job keeps the retention set when it was created.",
    )
    retry_rate_limit: int = Field(
        10, gt=0, description="Webhook delivery retries a tenant may ask for per window (429 beyond)."
    )
    retry_rate_window_s: int = Field(60, gt=0, description="The window of `retry_rate_limit`.")

    build_time_limit_s: int = Field(3600, gt=0, description="Hard time limit of one build task.")
    visibility_timeout_s: int = Field(
        7200, gt=0, description="Broker visibility timeout; must exceed the longest task's time limit."
    )
    # -- leases: a step whose worker died is sent again within seconds (workers/leases.py) ------
    lease_ttl_s: float = Field(
        10.0,
        gt=0,
        description="A running job step's lease lasts this long without a renewal; then any worker's "
        "reaper sends the step again (the broker's visibility timeout stays as the backstop).",
    )
    lease_heartbeat_s: float = Field(
        3.0, gt=0, description="How often a worker renews its leases; keep it well below lease_ttl_s."
    )
    lease_reaper_interval_s: float = Field(
        2.0, gt=0, description="How often each worker's reaper looks for expired leases."
    )
    lease_max_redeliveries: int = Field(
        5,
        ge=0,
        description="Steps of one job sent again after losing their worker, at most; one more fails the "
        "job with `worker_lost` (a step that kills every worker it runs on must not loop).",
    )
    orphan_sweep_interval_s: float = Field(
        15.0,
        gt=0,
        description="How often one worker (whichever takes the turn) looks for live jobs with no step "
        "in flight: a message the broker lost (Redis crashed between a worker's pop and its record) is "
        "sent again.",
    )
    orphan_after_s: float = Field(
        30.0,
        gt=0,
        description="A live job is looked at by the orphan sweep once it has been this long without "
        "being seen in flight (leased, waiting in a queue or held unacknowledged).",
    )
    idempotency_ttl_s: int = Field(86400, gt=0, description="How long an Idempotency-Key's response is kept.")
    cpu_queue: str = Field("tuneset.cpu", description="Celery queue for validation and build work.")
    io_queue: str = Field("tuneset.io", description="Celery queue for uploads and webhooks.")

    secret_key: SecretStr | None = Field(
        None,
        description="Fernet key (`tuneset keys secret` makes one) that encrypts provider API keys and "
        "webhook signing secrets at rest; needed before providers or webhooks can be registered.",
    )
    webhook_allow_hosts: list[str] = Field(
        default_factory=list,
        description='Callback hosts exempt from the SSRF guard (JSON list, e.g. ["127.0.0.1"]).',
    )
    webhook_allow_networks: list[str] = Field(
        default_factory=list,
        description="Callback networks (CIDR) exempt from the SSRF guard (JSON list).",
    )
    webhook_retry_schedule_s: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        description="Delays between webhook delivery attempts (each gets up to 20 % jitter); the default "
        "retries for about 27.5 hours after the first attempt.",
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Time limit of one webhook delivery attempt.")
    webhook_disable_after: int = Field(
        100, gt=0, description="Consecutive failed attempts after which a subscription is disabled."
    )
    provider_single_file_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        description="Files up to this size go through the provider's Files API, larger ones through its "
        "Uploads API in parts.",
    )
    provider_part_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Part size of the Uploads API.")
    provider_processing_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="How long an uploaded file may take to be processed by the provider (keep it below "
        "the task time limit).",
    )
    provider_poll_interval_s: float = Field(
        30.0, gt=0, description="Longest pause between polls of a provider's fine-tuning job."
    )

    # -- Server-Sent Events and readiness (GET /v1/jobs/{id}/events, /readyz) -------------------
    sse_max_streams: int = Field(
        1000, gt=0, description="Open event streams one API process serves at most (503 beyond)."
    )
    sse_max_streams_per_tenant: int = Field(
        100, gt=0, description="Open event streams of one tenant in one API process (429 beyond)."
    )
    sse_keepalive_s: float = Field(
        15.0, gt=0, description="Seconds without an event after which a stream sends a keep-alive comment."
    )
    shutdown_grace_s: int = Field(
        10,
        gt=0,
        description="On SIGTERM `tuneset api` waits this long for running requests, then cancels those "
        "left (open event streams never end by themselves; their clients resume with Last-Event-ID).",
    )
    ready_timeout_s: float = Field(
        1.0,
        gt=0,
        description="/readyz answers 503 when Redis, or a worker thread for a synchronous request, "
        "takes longer than this.",
    )

    # -- operations: logs, worker metrics, worker liveness and shutdown (deploy/k8s) -------------
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`json`: one JSON object a line carrying request_id, job_id and tenant, secrets masked.",
    )
    worker_metrics_port: int | None = Field(
        None,
        description="Port a worker serves its Prometheus metrics on, summed over its processes "
        "(needs PROMETHEUS_MULTIPROC_DIR); off when unset.",
    )
    worker_metrics_host: str = Field("127.0.0.1", description="Address the worker metrics port binds.")
    worker_heartbeat_file: Path | None = Field(
        None,
        description="File a worker's event loop touches every few seconds; `python -m workers.probe` "
        "checks its age (liveness). Off when unset.",
    )
    worker_soft_shutdown_s: float = Field(
        0.0,
        ge=0,
        description="On a cold shutdown (SIGQUIT, or SIGTERM with REMAP_SIGTERM=SIGQUIT) running steps get "
        "this long to finish, then they are handed back to the queue.",
    )

    @property
    def blob_root(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"


def get_settings() -> Settings:
    return Settings()
