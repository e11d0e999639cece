"""Service settings, from environment variables (prefix `TUNESET_`; `REDIS_URL` is read too).

Defaults work on one machine with no set-up: Redis on localhost, blobs under `./.tuneset`.
Secrets are `SecretStr`, so they never appear in logs or reprs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNESET_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("TUNESET_REDIS_URL", "REDIS_URL"),
        description="Redis for job state, events, idempotency records and API keys; also the Celery broker.",
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
    build_time_limit_s: int = Field(3600, gt=0, description="Hard time limit of one build task.")
    visibility_timeout_s: int = Field(
        7200, gt=0, description="Broker visibility timeout; must exceed the longest task's time limit."
    )
    idempotency_ttl_s: int = Field(86400, gt=0, description="How long an Idempotency-Key's response is kept.")
    cpu_queue: str = Field("tuneset.cpu", description="Celery queue for validation and build work.")
    io_queue: str = Field("tuneset.io", description="Celery queue for uploads and webhooks.")

    @property
    def blob_root(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"


def get_settings() -> Settings:
    return Settings()
