"""Settings: standard OTEL_* variables, KIKI_OTEL_* groups, precedence, errors, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        # urllib would raise a bare ValueError for these only when the exporter is built
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:43l8", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:99999", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:0", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://:4318", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        # a timeout this large makes every export raise OverflowError
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "99999999999999999999", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "3600001", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        # past threading's limit the metric reader's thread dies with OverflowError
        ("OTEL_METRIC_EXPORT_INTERVAL", "10000000000000", "OTEL_METRIC_EXPORT_INTERVAL"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "86400001", "OTEL_METRIC_EXPORT_INTERVAL"),
        ("KIKI_OTEL_HEALTH__MAX_STALENESS", "inf", "KIKI_OTEL_HEALTH__MAX_STALENESS"),
        ("KIKI_OTEL_HEALTH__MAX_STALENESS", "172801", "KIKI_OTEL_HEALTH__MAX_STALENESS"),
        ("KIKI_OTEL_HEALTH__PATH", "health", "KIKI_OTEL_HEALTH__PATH"),  # a probe's 404
        ("KIKI_OTEL_HEALTH__LIVE_PATH", "health/live", "must start with '/'"),
        ("KIKI_OTEL_HEALTH__READY_PATH", "/health", "must differ"),  # /health's own
        ("KIKI_OTEL_HTTP__EXCLUDED_PATHS", "/favicon.ico,metrics", "KIKI_OTEL_HTTP__EXCLUDED"),
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
        Settings()  # validated when the settings are built, not when the exporter reads them
    assert "s3cr3t" not in str(info.value)


def test_the_endpoints_password_is_not_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in the OTLP endpoint's URL (a collector behind basic auth) stay out of
    the settings' and the handle's reprs, as the headers do; the value itself is kept."""
    import kiki_otel

    endpoint = "http://collector-user:pw-s3cr3t@127.0.0.1:4318"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    settings = Settings()
    assert settings.exporter_otlp_endpoint == endpoint
    for shown in (repr(settings), str(settings)):
        assert "pw-s3cr3t" not in shown and "collector-user:***@127.0.0.1:4318" in shown
    telemetry = kiki_otel.configure(metrics_exporter="none")
    assert "pw-s3cr3t" not in repr(telemetry)


def test_valid_endpoints_are_kept() -> None:
    """Stricter endpoint checks still accept every usable URL: IPv6, default port, a path."""
    for endpoint, expected in [
        ("http://[::1]:4318", "http://[::1]:4318"),
        ("https://otlp.example.com", "https://otlp.example.com"),
        ("https://otlp.example.com:443/otlp/", "https://otlp.example.com:443/otlp"),
        ("https://tenant:pw@otlp.example.com", "https://tenant:pw@otlp.example.com"),
    ]:
        settings = load_settings(Settings, {"exporter_otlp_endpoint": endpoint})
        assert settings.otlp_endpoint() == expected


def test_otlp_timeout_upper_bound_is_inclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    """One hour (in the spec's milliseconds) is still accepted; only beyond it is an error."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3600000")
    assert load_settings(Settings, {}).exporter_otlp_timeout == 3_600_000


def test_interval_upper_bounds_are_inclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A day between metric exports (in the spec's milliseconds) or background health
    refreshes is still accepted, as is a two-day max_staleness; only beyond is an error."""
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "86400000")
    monkeypatch.setenv("KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL", "86400")
    monkeypatch.setenv("KIKI_OTEL_HEALTH__MAX_STALENESS", "172800")
    settings = load_settings(Settings, {})
    assert settings.metric_export_interval == 86_400_000
    assert settings.health.background_interval == 86_400
    assert settings.health.max_staleness == 172_800
    monkeypatch.setenv("KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL", "86401")
    with pytest.raises(ConfigurationError, match="KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL"):
        load_settings(Settings, {})


@pytest.mark.parametrize(
    ("raw", "header"),
    [
        ("api-key", None),  # no '=': used to fail only while building the providers
        ("authorization=Bearer s3cret-token\nx", "authorization"),
        ("authorization=Bearer%20s3cret-token%0D%0Ax-evil=1", "authorization"),  # decoded CRLF
        ("x-api-key=s3cret\x00", "x-api-key"),
        ("x-team=s3cret-\u20ac", "x-team"),  # not latin-1: unencodable on the wire
        ("bad key=s3cret", None),  # not a token; the name itself is not echoed either
        ("x-\u20ac=s3cret", None),
    ],
)
def test_bad_otlp_headers_fail_at_load_without_the_value(raw: str, header: str | None) -> None:
    """Headers every export batch would reject fail at configure() time instead, naming the
    variable and the header, but never echoing the value: it is usually a credential."""
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_HEADERS") as info:
        load_settings(Settings, {"exporter_otlp_headers": raw})
    message = str(info.value)
    assert "s3cret" not in message
    if header is not None:
        assert repr(header) in message


def test_otlp_headers_edge_cases_stay_valid() -> None:
    """Empty items, spaces around pairs, '=' inside a value, an empty value and latin-1
    characters were accepted before and stay accepted."""
    raw = "a=1, b = x=y ,,c=,d=caf%C3%A9,e=Basic%20dTpw"
    settings = load_settings(Settings, {"exporter_otlp_headers": raw})
    assert settings.otlp_headers() == {
        "a": "1",
        "b": "x=y",
        "c": "",
        "d": "caf\u00e9",
        "e": "Basic dTpw",
    }


@pytest.mark.parametrize(
    "name",
    ["X-\u0417\u0430\u043f\u0440\u043e\u0441", "X Request", "X-Request-ID:", "X-Req\r\nX-Evil"],
)
def test_request_id_header_must_be_a_token(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A name that is not an RFC 9110 token makes every response fail (UnicodeEncodeError, or
    h11 refusing it), so it is rejected at configure() time, naming the variable. (A blank
    variable is unset, the default; a blank keyword is refused.)"""
    monkeypatch.setenv("KIKI_OTEL_HTTP__REQUEST_ID_HEADER", name)
    with pytest.raises(ConfigurationError, match="KIKI_OTEL_HTTP__REQUEST_ID_HEADER"):
        load_settings(Settings, {})
    with pytest.raises(ConfigurationError, match="KIKI_OTEL_HTTP__REQUEST_ID_HEADER"):
        load_settings(Settings, {"http": {"request_id_header": ""}})


def test_custom_request_id_header_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any token is a valid header name, including the punctuation RFC 9110 allows."""
    monkeypatch.setenv("KIKI_OTEL_HTTP__REQUEST_ID_HEADER", "X-Correlation_ID.v2")
    assert load_settings(Settings, {}).http.request_id_header == "X-Correlation_ID.v2"


def test_background_interval_must_leave_room_under_max_staleness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A snapshot is refreshed only every interval (plus the check's run time), so with
    max_staleness below that /health/ready flaps to 503 "stale" between refreshes: refuse
    it and name both variables."""
    monkeypatch.setenv("KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL", "60")
    with pytest.raises(ConfigurationError) as info:
        load_settings(Settings, {})
    message = str(info.value)
    assert "KIKI_OTEL_HEALTH__MAX_STALENESS" in message
    assert "KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL" in message
    monkeypatch.setenv("KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL", "29.8")  # + 0.5 s timeout > 30
    with pytest.raises(ConfigurationError, match="KIKI_OTEL_HEALTH__MAX_STALENESS"):
        load_settings(Settings, {})


def test_background_health_settings_that_fit_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The defaults (background off) and an interval well under max_staleness stay valid,
    whether given by env or as a keyword."""
    assert load_settings(Settings, {}).health.background_interval is None
    monkeypatch.setenv("KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL", "10")
    assert load_settings(Settings, {}).health.background_interval == 10
    monkeypatch.setenv("KIKI_OTEL_HEALTH__MAX_STALENESS", "120")
    monkeypatch.setenv("KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL", "60")
    assert load_settings(Settings, {}).health.max_staleness == 120
    keyword = {"health": {"background_interval": 0.05}}
    assert load_settings(Settings, keyword).health.background_interval == 0.05


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


def test_a_bad_endpoint_error_never_shows_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in an endpoint that carries credentials: the error names the variable and
    shows the URL with its userinfo hidden, a raw '/' or '@' in the password included."""
    for url in ("http://user:S3cret99@collector:99999", "http://user:S3cr/et@99@collector:0"):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        with pytest.raises(ConfigurationError) as caught:
            load_settings(Settings, {})
        message = str(caught.value)
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in message
        assert "S3cr" not in message and "***@" in message


def test_a_misspelt_keyword_to_service_settings_fails() -> None:
    """``ServiceSettings.load(databse_url=...)`` names the key and the closest field, as
    ``configure()`` does, instead of silently keeping the default."""

    class OrdersConfig(ServiceSettings):
        database_url: str = "postgresql+asyncpg://localhost/orders"

    assert OrdersConfig.load(database_url="postgresql+asyncpg://db/orders").database_url.endswith(
        "db/orders"
    )
    with pytest.raises(ConfigurationError, match=r"databse_url.*did you mean 'database_url'"):
        OrdersConfig.load(databse_url="postgresql+asyncpg://db/orders")


def test_load_errors_never_show_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing field's error shows no input (pydantic's is every other value), a secret
    field's bad value is hidden, a plain field's bad value is still shown."""
    from pydantic import Field, SecretBytes

    class BrainConfig(ServiceSettings):
        database_url: SecretStr
        jwt_secret: SecretStr
        signing_key: SecretBytes | None = None
        api_token: SecretStr = Field(min_length=20)
        pool_size: int = 20
        openai_api_key: SecretStr

    monkeypatch.setenv("DATABASE_URL", "postgresql://u:db-pass-1@db:5432/brain")
    monkeypatch.setenv("JWT_SECRET", "prod-jwt-signing-key-123")
    monkeypatch.setenv("API_TOKEN", "short-token-7")
    monkeypatch.setenv("POOL_SIZE", "twenty")
    with pytest.raises(ConfigurationError) as caught:
        BrainConfig.load()
    message = str(caught.value)
    assert "OPENAI_API_KEY (keyword 'openai_api_key'): Field required\n" in message + "\n"
    assert "API_TOKEN (keyword 'api_token')" in message and "(got <hidden>)" in message
    assert "POOL_SIZE (keyword 'pool_size')" in message and "(got 'twenty')" in message
    for secret in ("db-pass-1", "prod-jwt-signing-key-123", "short-token-7"):
        assert secret not in message


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "abc"}, "OTEL_BSP_MAX_QUEUE_SIZE: must be a positive integer"),
        ({"OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "-5"}, "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE: must be"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "-1"}, "OTEL_BSP_SCHEDULE_DELAY: must be a number > 0"),
        ({"OTEL_BLRP_EXPORT_TIMEOUT": "nan"}, "OTEL_BLRP_EXPORT_TIMEOUT: must be a number > 0"),
        ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
        ({"OTEL_METRIC_EXPORT_TIMEOUT": "0"}, "OTEL_METRIC_EXPORT_TIMEOUT: must be a number > 0"),
        (
            {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "5000"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE (5000) must not exceed OTEL_BSP_MAX_QUEUE_SIZE (2048)",
        ),
        (
            {"OTEL_BLRP_MAX_QUEUE_SIZE": "32"},  # the SDK's default batch (512) would exceed it
            "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE (512) must not exceed OTEL_BLRP_MAX_QUEUE_SIZE (32)",
        ),
    ],
)
def test_sdk_read_variables_fail_at_configure_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], named: str
) -> None:
    """The variables the SDK reads itself: the SDK raised a bare ValueError for some bad
    values and quietly used its default for others; configure() names each one."""
    import kiki_otel

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match="invalid OpenTelemetry SDK variables") as caught:
        kiki_otel.configure(service_name="svc", exporter_otlp_endpoint="http://127.0.0.1:9")
    assert named in str(caught.value)


def test_good_sdk_read_variables_pass() -> None:
    from kiki_otel._settings import check_sdk_environment

    check_sdk_environment(
        {
            "OTEL_BSP_MAX_QUEUE_SIZE": "4096",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1024",
            "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "64",
            "OTEL_BSP_SCHEDULE_DELAY": "250",
            "OTEL_BLRP_EXPORT_TIMEOUT": "30000",
            "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": "2.5",
            "OTEL_METRIC_EXPORT_TIMEOUT": " 10000 ",
            "OTEL_BSP_EXPORT_TIMEOUT": "",
        }
    )


@pytest.mark.parametrize("raw", ["0", "65", "eight", "-1"])
def test_finish_batch_out_of_range_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    """``KIKI_OTEL_HTTP__FINISH_BATCH`` is 1 (each request at once) to 64: a batch longer
    than that would hold the event loop for milliseconds; outside it, an error naming it."""
    monkeypatch.setenv("KIKI_OTEL_HTTP__FINISH_BATCH", raw)
    with pytest.raises(ConfigurationError, match="KIKI_OTEL_HTTP__FINISH_BATCH"):
        load_settings(Settings, {})
    for good in ("1", "64"):
        monkeypatch.setenv("KIKI_OTEL_HTTP__FINISH_BATCH", good)
        assert load_settings(Settings, {}).http.finish_batch == int(good)


@pytest.mark.parametrize("value", ["bogus", "tracecontext,b3"])
def test_an_unknown_propagator_fails_the_import_naming_the_variable(value: str) -> None:
    """The SDK reads OTEL_PROPAGATORS as it is imported and raised a bare ValueError from
    deep inside ``import kiki_otel``; now it is a ConfigurationError naming the variable."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OTEL_PROPAGATORS": value}
    code = "import kiki_otel"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1
    assert last.startswith("kiki_otel._errors.ConfigurationError: invalid OTEL_PROPAGATORS:")
    assert "not found" in last
    env["OTEL_PROPAGATORS"] = "tracecontext,none"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


_DEFAULTS = Settings()


@pytest.mark.parametrize(
    ("variable", "read"),
    [
        ("OTEL_TRACES_SAMPLER_ARG", lambda s: s.traces_sampler_arg),
        ("OTEL_TRACES_SAMPLER", lambda s: s.traces_sampler),
        ("OTEL_LOGS_EXPORTER", lambda s: s.logs_exporter),
        ("OTEL_SDK_DISABLED", lambda s: s.sdk_disabled),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", lambda s: s.exporter_otlp_protocol),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", lambda s: s.exporter_otlp_timeout),
        ("OTEL_RESOURCE_ATTRIBUTES", lambda s: s.resource_attributes),
        ("KIKI_OTEL_LOG_FORMAT", lambda s: s.log_format),
        ("KIKI_OTEL_HTTP__ACCESS_LOG", lambda s: s.http.access_log),
        ("KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL", lambda s: s.health.background_interval),
    ],
)
@pytest.mark.parametrize("blank", ["", "  ", "\t"])
def test_a_blank_variable_is_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, read: Any, blank: str
) -> None:
    """The spec: an empty value MUST be treated as unset. ``X: ${X:-}`` in a Helm or compose
    template gives one, and it used to stop the service ("Input should be a valid number
    (got '')"). In the environment or in ``.env``; a blank variable also lets ``.env`` apply."""
    monkeypatch.setenv(variable, blank)
    assert read(load_settings(Settings, {})) == read(_DEFAULTS)
    monkeypatch.delenv(variable)
    (tmp_path / ".env").write_text(f"{variable}={blank!r}\n".replace("'", '"'))
    assert read(load_settings(Settings, {})) == read(_DEFAULTS)


def test_a_blank_variable_lets_dotenv_apply(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Blank in the environment means unset, so the ``.env`` value is used (nested too)."""
    (tmp_path / ".env").write_text(
        "OTEL_TRACES_SAMPLER_ARG=0.5\nKIKI_OTEL_HEALTH__BACKGROUND_INTERVAL=7\n"
    )
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "")
    monkeypatch.setenv("KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL", " ")
    settings = load_settings(Settings, {})
    assert settings.traces_sampler_arg == 0.5 and settings.health.background_interval == 7


def test_a_blank_keyword_is_still_refused() -> None:
    """Keywords are code, not the environment: an explicit empty one stays an error."""
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_SAMPLER_ARG"):
        load_settings(Settings, {"traces_sampler_arg": ""})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), (" True ", True), ("false", False), ("FALSE", False)],
)
def test_otel_sdk_disabled_takes_the_spec_booleans(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", raw)
    assert load_settings(Settings, {}).sdk_disabled is expected


@pytest.mark.parametrize("raw", ["yes", "on", "1", "0", "no", "off", "disabled"])
def test_otel_sdk_disabled_refuses_other_values(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """The spec lets only ``true`` (any case) mean true; pydantic took yes/on/1 and turned
    the SDK off where the SDK itself and other languages would not. Anything but true or
    false is refused, naming the variable, as kiki refuses other bad values."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", raw)
    with pytest.raises(ConfigurationError, match=r"OTEL_SDK_DISABLED.*'true' or 'false'"):
        load_settings(Settings, {})


def test_log_format_accepts_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like every other choice (OTEL_* exporters, KIKI_OTEL_EXPORTER, the log level)."""
    monkeypatch.setenv("KIKI_OTEL_LOG_FORMAT", " JSON ")
    assert load_settings(Settings, {}).log_format == "json"
    monkeypatch.setenv("KIKI_OTEL_LOG_FORMAT", "Console")
    assert load_settings(Settings, {}).log_format == "console"


def test_unprefixed_deployment_environment_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """An undocumented alias read any ``DEPLOYMENT_ENVIRONMENT`` (a deploy tool's own, say)
    into ``deployment.environment.name``; only ``KIKI_OTEL_ENVIRONMENT`` is."""
    monkeypatch.setenv("DEPLOYMENT_ENVIRONMENT", "prod")
    assert load_settings(Settings, {}).environment is None
    monkeypatch.setenv("KIKI_OTEL_ENVIRONMENT", "staging")
    assert load_settings(Settings, {}).environment == "staging"


@pytest.mark.parametrize("raw", ["a=%ZZ", "b=%E2%82", "a=1,b=50%", "%zz=1", "a=%2"])
def test_bad_percent_encoding_in_resource_attributes_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    """The spec: on a decoding failure the whole value is discarded and reported. It used to
    be kept as typed (``%ZZ``) or mangled (a U+FFFD in place of a cut UTF-8 sequence)."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", raw)
    with pytest.raises(ConfigurationError, match=r"OTEL_RESOURCE_ATTRIBUTES.*percent-encoding"):
        load_settings(Settings, {})
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "a=50%25,b=%E2%82%AC,c%3Dd=%2C")
    assert load_settings(Settings, {}).resource_attributes == {"a": "50%", "b": "€", "c=d": ","}
