"""The demo's own typed configuration.

This is the pattern that replaces the seed's per-service classes (SyncBrainConfig,
SyncValueConfig, ...). kiki-otel's own settings (OTEL_*, KIKI_OTEL_*) are separate; a
service declares only what is its own.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

import kiki_otel


class DemoSettings(kiki_otel.ServiceSettings):
    """Read from the environment (and ``.env``) with the ``DEMO_`` prefix."""

    model_config = kiki_otel.ServiceSettings.model_config | {"env_prefix": "DEMO_"}

    downstream_url: str | None = None
    """Base URL of the service this one calls (the compose stack chains two demos)."""
    redis_url: str | None = None
    database_url: SecretStr | None = None
    """A DSN with a password: a secret, so it never shows in reprs or logs."""
    api_key: SecretStr = SecretStr("dev-only-key")
    request_timeout: float = Field(default=5.0, gt=0)
