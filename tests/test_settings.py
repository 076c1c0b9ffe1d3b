"""Settings: standard OTEL_* variables, KIKI_OTEL_* groups, precedence, errors, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from kiki_otel import ConfigurationError, ServiceSettings, Settings
from kiki_otel._settings import load_settings


def test_standard_otel_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SERVICE_NAME, endpoint, protocol, sampler and resource attributes keep their meaning."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "syncbrain")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=growth,region=eu%2Dwest")
    settings = load_settings(Settings, {})
    assert settings.service_name == "syncbrain"
    assert settings.otlp_endpoint() == "http://collector:4317"
    assert settings.exporter_otlp_protocol == "grpc"
    assert settings.traces_sampler == "parentbased_traceidratio"
    assert settings.traces_sampler_arg == 0.25
    assert settings.resource_attributes == {"team": "growth", "region": "eu-west"}


def test_default_endpoint_follows_protocol() -> None:
    """With no endpoint set, the spec's default port for the protocol is used."""
    assert Settings().otlp_endpoint() == "http://localhost:4318"
    assert Settings(exporter_otlp_protocol="grpc").otlp_endpoint() == "http://localhost:4317"


def test_nested_groups_use_double_underscore(monkeypatch: pytest.MonkeyPatch) -> None:
    """KIKI_OTEL_HEALTH__TIMEOUT sets health.timeout; comma lists split."""
    monkeypatch.setenv("KIKI_OTEL_HEALTH__TIMEOUT", "0.3")
    monkeypatch.setenv("KIKI_OTEL_HTTP__EXCLUDED_PATHS", "/metrics, /internal")
    settings = Settings()
    assert settings.health.timeout == 0.3
    assert settings.http.excluded_paths == ("/metrics", "/internal")
    assert {"/metrics", "/internal", "/health", "/health/live", "/health/ready"} <= (
        settings.excluded_paths()
    )


def test_keyword_overrides_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure(service_name=...) beats OTEL_SERVICE_NAME."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert load_settings(Settings, {"service_name": "from-code"}).service_name == "from-code"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    """A .env in the working directory is read (tests run in a temp cwd)."""
    (tmp_path / ".env").write_text("OTEL_SERVICE_NAME=dotenv-svc\nKIKI_OTEL_LOG_LEVEL=debug\n")
    settings = Settings()
    assert settings.service_name == "dotenv-svc"
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "OTEL_TRACES_SAMPLER_ARG"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("KIKI_OTEL_LOG_LEVEL", "LOUD", "KIKI_OTEL_LOG_LEVEL"),
        ("KIKI_OTEL_HEALTH__TIMEOUT", "-1", "KIKI_OTEL_HEALTH__TIMEOUT"),
        ("OTEL_RESOURCE_ATTRIBUTES", "novalue", "OTEL_RESOURCE_ATTRIBUTES"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    """A bad value fails at startup with a message naming the variable and what is accepted."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings(Settings, {})
    assert expected in str(info.value)


def test_error_lists_accepted_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message for an enum-like setting lists the accepted values."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigurationError, match="'grpc' or 'http/protobuf'"):
        load_settings(Settings, {})


def test_headers_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTLP headers (auth tokens) never show in repr, str or error messages."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cr3t")
    settings = Settings()
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings)
    assert settings.otlp_headers() == {"authorization": "Bearer s3cr3t"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "broken-s3cr3t")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_HEADERS") as info:
        Settings().otlp_headers()
    assert "s3cr3t" not in str(info.value)


def test_service_settings_subclass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service's own config class reads env, hides secrets and names bad variables."""

    class SyncBrainConfig(ServiceSettings):
        database_url: SecretStr
        db_pool_size: int = 20

    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw-123@db/x")
    config = SyncBrainConfig.load()
    assert config.database_url.get_secret_value().endswith("@db/x")
    assert "pw-123" not in repr(config)
    monkeypatch.setenv("DB_POOL_SIZE", "many")
    with pytest.raises(ConfigurationError, match="DB_POOL_SIZE"):
        SyncBrainConfig.load()
