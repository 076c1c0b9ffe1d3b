"""Typed settings: every value is resolved once, here (keyword > env > ``.env`` > default).

The standard ``OTEL_*`` variables keep their specified meaning and units (the OTLP timeout
and metric interval are milliseconds there); our own knobs live under ``KIKI_OTEL_*`` with
``__`` between nested groups (``KIKI_OTEL_HEALTH__TIMEOUT=0.3``). Defaults live only here.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, Self, TypeVar, get_args
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ._errors import ConfigurationError

__all__ = [
    "ConfigurationError",
    "HealthSettings",
    "HttpSettings",
    "ServiceSettings",
    "Settings",
    "ShutdownSettings",
    "check_override_keys",
    "dotenv_sdk_variables",
    "load_settings",
]

Protocol = Literal["grpc", "http/protobuf"]
SignalExporter = Literal["otlp", "console", "none"]
SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An RFC 9110 token: the only characters a header name may contain."""
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u0100-\U0010ffff]")
"""What a header value may not contain: control characters but HTAB (RFC 9110) and anything
outside Latin-1, which HTTP clients cannot encode."""


_DAY_S = 86_400
"""Upper bound, in seconds, for intervals: beyond it a value is a typo, and a huge one
overflows the timeouts of the threads and waits it feeds."""


def _env(*names: str) -> AliasChoices:
    """Accept a field from any of these variables (first found wins) or by its field name."""
    return AliasChoices(*names)


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
"""A ``%`` not followed by two hex digits: no valid percent-encoding."""


def _strict_unquote(text: str, *, variable: str) -> str:
    """Percent-decode ``text``, refusing what :func:`unquote` would silently keep or mangle."""
    if not _BAD_PERCENT.search(text):
        try:
            return unquote(text, errors="strict")
        except UnicodeDecodeError:  # %XX escapes that are no UTF-8
            pass
    raise ValueError(
        f"{variable}: invalid percent-encoding (a '%' must start %XX escapes of UTF-8 "
        "bytes; write a literal '%' as %25)"
    )


def parse_key_values(raw: str, *, variable: str, strict: bool = False) -> dict[str, str]:
    """Parse the W3C-baggage-like ``k1=v1,k2=v2`` list used by OTEL_RESOURCE_ATTRIBUTES/HEADERS.

    Values are percent-decoded as the spec says. A malformed entry is an error rather than
    being skipped, because a silently missing auth header or resource attribute is worse.
    ``strict`` also refuses bad percent-encoding (``%ZZ``, non-UTF-8 bytes), which the spec
    says discards the whole OTEL_RESOURCE_ATTRIBUTES value; headers stay lenient, as the
    SDK's are, so a token with a literal ``%`` that works today keeps working.
    """
    result: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{variable}: expected key=value pairs separated by commas")
        if strict:
            result[_strict_unquote(key, variable=variable)] = _strict_unquote(
                value.strip(), variable=variable
            )
        else:
            result[unquote(key)] = unquote(value.strip())
    return result


def check_headers(headers: Mapping[str, str], *, variable: str) -> None:
    """Refuse headers no client can send, so the mistake fails at startup, not every export.

    Values are never echoed: they are usually credentials. An invalid name is not echoed
    either, as it may be a value pasted in the wrong place.
    """
    for position, (name, value) in enumerate(headers.items(), start=1):
        if not _TOKEN.fullmatch(name):
            raise ValueError(
                f"{variable}: header #{position} has an invalid name "
                "(letters, digits and !#$%&'*+-.^_`|~ only)"
            )
        if _BAD_VALUE_CHAR.search(value):
            raise ValueError(
                f"{variable}: the value of header {name!r} contains a control character "
                "(CR, LF, NUL...) or a character outside Latin-1 (value not shown)"
            )


def check_endpoint(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL with a host and a usable port.

    Shared by every OTLP endpoint and HTTP health check, so a typo fails at startup with a
    clear message; otherwise urllib raises a bare ValueError while the exporter is built, or
    every export or probe fails. The message never echoes the URL (it may hold credentials).
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError("must be an absolute http:// or https:// URL")
    try:
        parts = urlsplit(url)
        usable = bool(parts.hostname) and parts.port != 0
    except ValueError:  # unclosed IPv6 bracket, non-numeric or out-of-range port
        usable = False
    if not usable:
        raise ValueError("must be a URL with a host and, if any, a port from 1 to 65535")


class HttpSettings(BaseModel):
    """HTTP server and client instrumentation (``KIKI_OTEL_HTTP__*``)."""

    request_id_header: str = "X-Request-ID"
    """Response header carrying the request id (= the 32-hex trace id)."""
    traceresponse: bool = True
    """Also answer the W3C ``traceresponse`` header, so clients can find the trace."""
    server_timing: bool = False
    """Also answer ``Server-Timing: traceparent;desc=...`` (readable by browser JS)."""
    accept_client_request_id: bool = True
    """Record a client's own X-Request-ID (allowlisted) as ``client_request_id``."""
    client_request_id_max_length: int = Field(default=128, ge=1, le=1024)
    propagate_request_id: bool = False
    """Add X-Request-ID to outgoing httpx calls, for legacy services that read it."""
    access_log: bool = True
    """One JSON access-log line per request, written inside the server span."""
    finish_batch: int = Field(default=8, ge=1, le=64)
    """Ended requests whose span end, metric and access line wait to be finished together
    while the event loop is busy, at most (1: each at once). Run back to back they find
    the CPU caches warm: ~10-25 us less CPU a request through uvicorn. A request waits at
    most until this many wait or a turn of the loop ends no request."""
    excluded_paths: Annotated[tuple[str, ...], NoDecode] = ("/metrics", "/metrics/", "/favicon.ico")
    """Paths (exact) that produce no span, metric or access-log line; health paths are added.
    ``/metrics/`` too: prometheus-client's ASGI app mounted at ``/metrics`` answers there
    (Starlette redirects ``/metrics`` to it)."""
    instrument_httpx: bool = True

    @field_validator("request_id_header")
    @classmethod
    def _check_header_name(cls, value: str) -> str:
        """A non-token name breaks every response (encoding error or h11 refusing it)."""
        if not _TOKEN.fullmatch(value):
            raise ValueError(
                "must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~ only"
            )
        return value

    @field_validator("excluded_paths", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("excluded_paths")
    @classmethod
    def _check_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            _check_path(path)
        return value


def _check_path(path: str) -> str:
    """A request path starts with "/".

    Without it, it matches no request: a health endpoint answering 404 to its probes, an
    exclusion excluding nothing.
    """
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is no request path: it must start with '/'")
    return path


class HealthSettings(BaseModel):
    """Health endpoints and checks (``KIKI_OTEL_HEALTH__*``)."""

    enabled: bool = True
    path: str = "/health"
    live_path: str = "/health/live"
    ready_path: str = "/health/ready"
    timeout: float = Field(default=0.5, gt=0, le=60)
    """Per-check timeout in seconds: well under a typical 1 s probe timeout."""
    cache_ttl: float = Field(default=2.0, ge=0, le=3600)
    """Seconds a check result is reused, so probes never hammer a dependency."""
    background_interval: float | None = Field(default=None, gt=0, le=_DAY_S)
    """If set, checks run on this interval in the background and probes read the snapshot.
    At most a day: a longer one is a mistake (infinity included), not a refresh."""
    max_staleness: float = Field(default=30.0, gt=0, le=2 * _DAY_S)
    """Background mode: a snapshot older than this reports the check as unhealthy (stale).
    Must exceed ``background_interval + timeout`` (checked by :class:`Settings`), hence up
    to twice the longest interval."""
    sync_workers: int = Field(default=4, ge=1, le=64)
    """Synchronous checks run at once, at most (each on a daemon thread). A call past its
    timeout stops counting: hung checks cannot starve the others."""

    @field_validator("path", "live_path", "ready_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        return _check_path(value)

    @model_validator(mode="after")
    def _distinct(self) -> HealthSettings:
        """Two endpoints on one path: one of them would never be reached."""
        if len({self.path, self.live_path, self.ready_path}) < 3:
            raise ValueError(
                "path, live_path and ready_path must differ "
                f"(got {self.path!r}, {self.live_path!r}, {self.ready_path!r})"
            )
        return self


class ShutdownSettings(BaseModel):
    """Graceful shutdown (``KIKI_OTEL_SHUTDOWN__*``)."""

    timeout: float = Field(default=5.0, gt=0, le=300)
    """Overall deadline in seconds for cleanups plus flushing every exporter."""
    drain_delay: float = Field(default=0.0, ge=0, le=300)
    """Seconds to keep serving after readiness turns 503, before cleanups start."""
    cleanup_timeout: float = Field(default=2.0, gt=0, le=300)
    """Bound for each ``on_shutdown`` callback (also bounded by the overall deadline)."""


def redact(url: str) -> str:
    """``url`` with its password (or a lone user, maybe a token) as ``***``, for logs."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


class Settings(BaseSettings):
    """kiki-otel's settings.

    Every field can be given as a keyword to :func:`kiki_otel.configure`, as an environment
    variable, or in ``.env``. Standard OpenTelemetry variables are honoured under their
    standard names; the rest use the ``KIKI_OTEL_`` prefix.
    """

    model_config = SettingsConfigDict(
        env_prefix="KIKI_OTEL_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
        validate_default=True,
        # Keep raw inputs (OTLP header secrets) out of pydantic's own message when Settings
        # is built directly; load_settings still shows the non-secret ones.
        hide_input_in_errors=True,
    )

    service_name: str = Field(
        default="unknown_service",
        validation_alias=_env("OTEL_SERVICE_NAME", "KIKI_OTEL_SERVICE_NAME"),
    )
    service_version: str | None = None
    service_namespace: str | None = None
    environment: str | None = None
    resource_attributes: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, validation_alias=_env("OTEL_RESOURCE_ATTRIBUTES")
    )

    sdk_disabled: bool = Field(default=False, validation_alias=_env("OTEL_SDK_DISABLED"))
    """Only ``true``/``false`` (any case): the spec's booleans, not pydantic's yes/on/1."""
    exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias=_env("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    """Base URL; per-signal paths (``/v1/traces``...) are appended for http/protobuf."""
    exporter_otlp_protocol: Protocol = Field(
        default="http/protobuf", validation_alias=_env("OTEL_EXPORTER_OTLP_PROTOCOL")
    )
    exporter_otlp_headers: SecretStr | None = Field(
        default=None, validation_alias=_env("OTEL_EXPORTER_OTLP_HEADERS")
    )
    """``k=v,k2=v2``; a secret, so it never shows in reprs or logs."""
    exporter_otlp_timeout: int = Field(
        default=10_000, ge=1, le=3_600_000, validation_alias=_env("OTEL_EXPORTER_OTLP_TIMEOUT")
    )
    """Milliseconds, as the OpenTelemetry spec defines it; at most an hour, since a huge
    value makes every export raise OverflowError."""
    exporter_otlp_compression: Literal["gzip", "none"] = Field(
        default="none", validation_alias=_env("OTEL_EXPORTER_OTLP_COMPRESSION")
    )
    traces_exporter: SignalExporter = Field(
        default="otlp", validation_alias=_env("OTEL_TRACES_EXPORTER")
    )
    metrics_exporter: SignalExporter = Field(
        default="otlp", validation_alias=_env("OTEL_METRICS_EXPORTER")
    )
    logs_exporter: SignalExporter = Field(
        default="otlp", validation_alias=_env("OTEL_LOGS_EXPORTER")
    )
    traces_sampler: SamplerName = Field(
        default="parentbased_always_on", validation_alias=_env("OTEL_TRACES_SAMPLER")
    )
    traces_sampler_arg: float | None = Field(
        default=None, ge=0.0, le=1.0, validation_alias=_env("OTEL_TRACES_SAMPLER_ARG")
    )
    exporter: Literal["fast", "official"] = "fast"
    """``KIKI_OTEL_EXPORTER``: ``fast`` sends spans and logs (OTLP/HTTP or gRPC) with kiki's
    direct wire encoder; ``official`` uses opentelemetry-exporter-otlp's. Client certificates,
    custom CAs, ``*_INSECURE`` for gRPC and per-signal header/timeout/compression variables
    always use the official ones, and metrics always do."""
    metric_export_interval: int = Field(
        default=60_000,
        ge=100,
        le=_DAY_S * 1000,
        validation_alias=_env("OTEL_METRIC_EXPORT_INTERVAL"),
    )
    """Milliseconds between metric exports, as the OpenTelemetry spec defines it; at most a
    day, since past threading's limit the SDK's export thread dies with OverflowError and
    no metric is ever exported."""
    semconv_stability_opt_in: str = Field(
        default="http", validation_alias=_env("OTEL_SEMCONV_STABILITY_OPT_IN")
    )
    """We always emit the stable HTTP conventions; this is handed to contrib instrumentations."""

    log_level: LogLevel = "INFO"
    log_format: Literal["json", "console"] = "json"
    log_to_otel: bool = True
    """Also send every log line as an OTel log record (when the logs exporter is on)."""
    log_trace_based: bool = False
    """Send OTel log records only for sampled traces (and for lines outside any trace), as
    the OpenTelemetry spec's ``trace_based`` logger option: with 10% sampling, most of a
    request's logging cost and log volume goes with its trace. Lines on stdout are kept."""

    http: HttpSettings = Field(default_factory=HttpSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Treat a blank variable, in the environment or ``.env``, as unset.

        The OpenTelemetry spec says an empty value MUST count as unset, and Helm/compose
        templates (``X: ${X:-}``) produce them: refused, they kept a pod from starting.
        pydantic-settings' ``env_ignore_empty`` skips ``""`` only, not whitespace. Dropping
        them from the sources' variables covers every alias and nested ``__`` name, and
        lets ``.env`` fill in; keyword arguments are left as given.
        """
        for source in (env_settings, dotenv_settings):
            if isinstance(source, EnvSettingsSource):
                source.env_vars = {
                    name: value
                    for name, value in source.env_vars.items()
                    if value is None or value.strip()
                }
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator("resource_attributes", mode="before")
    @classmethod
    def _parse_resource_attributes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_key_values(value, variable="OTEL_RESOURCE_ATTRIBUTES", strict=True)
        return value

    @field_validator("sdk_disabled", mode="before")
    @classmethod
    def _spec_boolean(cls, value: Any) -> Any:
        """``true`` or ``false``, any case: the spec lets nothing else mean true.

        pydantic would also take ``yes``/``on``/``1``, which the SDK's own check and other
        languages' SDKs read as false; any such value is refused rather than guessed.
        """
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in ("true", "false"):
                raise ValueError("must be 'true' or 'false' (case-insensitive)")
            return value == "true"
        return value

    @field_validator("exporter_otlp_headers")
    @classmethod
    def _check_otlp_headers(cls, value: SecretStr | None) -> SecretStr | None:
        """Parse now, so a malformed header fails at startup rather than at the first export."""
        if value is not None:
            variable = "OTEL_EXPORTER_OTLP_HEADERS"
            check_headers(
                parse_key_values(value.get_secret_value(), variable=variable), variable=variable
            )
        return value

    @field_validator("health")
    @classmethod
    def _check_staleness(cls, health: HealthSettings) -> HealthSettings:
        """Refuse a ``max_staleness`` that background refreshing cannot keep up with.

        A snapshot is renewed every ``background_interval`` plus the check's run (bounded by
        ``timeout``); with a lower ``max_staleness`` readiness flaps to 503 "stale". Checked
        here rather than on :class:`HealthSettings` so tests can still build a registry that
        goes stale on purpose.
        """
        interval = health.background_interval
        if interval is not None and health.max_staleness <= interval + health.timeout:
            raise ValueError(
                f"KIKI_OTEL_HEALTH__MAX_STALENESS ({health.max_staleness:g} s) must be greater "
                f"than KIKI_OTEL_HEALTH__BACKGROUND_INTERVAL ({interval:g} s) plus "
                f"KIKI_OTEL_HEALTH__TIMEOUT ({health.timeout:g} s), or /health/ready turns "
                "503 'stale' between refreshes: raise MAX_STALENESS (e.g. to twice the "
                "interval) or lower BACKGROUND_INTERVAL"
            )
        return health

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper()
            return "WARNING" if value == "WARN" else value
        return value

    @field_validator(
        "exporter_otlp_protocol",
        "traces_exporter",
        "metrics_exporter",
        "logs_exporter",
        "traces_sampler",
        "exporter_otlp_compression",
        "exporter",
        "log_format",
        mode="before",
    )
    @classmethod
    def _lower(cls, value: Any) -> Any:
        """Choices in any case (``JSON``, ``GRPC``), as the spec says of enum values."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("exporter_otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        check_endpoint(value)
        return value.rstrip("/")

    def otlp_headers(self) -> dict[str, str]:
        """The parsed OTLP headers (kept secret everywhere else)."""
        if self.exporter_otlp_headers is None:
            return {}
        return parse_key_values(
            self.exporter_otlp_headers.get_secret_value(), variable="OTEL_EXPORTER_OTLP_HEADERS"
        )

    def otlp_endpoint(self) -> str:
        """The OTLP base endpoint, defaulting per protocol as the spec says."""
        if self.exporter_otlp_endpoint:
            return self.exporter_otlp_endpoint
        return (
            "http://localhost:4317"
            if self.exporter_otlp_protocol == "grpc"
            else "http://localhost:4318"
        )

    def excluded_paths(self) -> frozenset[str]:
        """Paths that produce no telemetry: configured ones plus the health endpoints."""
        paths = set(self.http.excluded_paths)
        if self.health.enabled:
            paths.update((self.health.path, self.health.live_path, self.health.ready_path))
        return frozenset(paths)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The fields as pydantic shows them, the endpoint's password hidden (as headers are)."""
        for name, value in super().__repr_args__():
            if name == "exporter_otlp_endpoint" and isinstance(value, str):
                value = redact(value)
            yield name, value


class ServiceSettings(BaseSettings):
    """Base class for a service's own typed configuration.

    Subclass it and declare fields; they are read from the environment and ``.env``
    (no prefix unless you set ``model_config["env_prefix"]``). Use ``SecretStr`` for
    secrets: they never show in reprs or logs. Errors name the variable, as for
    :class:`Settings`; call :meth:`load` to get that message instead of pydantic's.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Build the settings, turning validation errors into a :class:`ConfigurationError`.

        A keyword that names no field is one too (``databse_url=``), with the closest name.
        """
        check_override_keys(cls, overrides)
        return load_settings(cls, overrides)


def _annotation(model: type[BaseModel], loc: tuple[int | str, ...]) -> Any:
    """The annotation of the field at ``loc`` (through nested groups), or None."""
    annotation: Any = None
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        field = fields.get(part) if isinstance(fields, dict) and isinstance(part, str) else None
        if field is None:
            return annotation
        annotation = current = field.annotation
    return annotation


def _is_secret(annotation: Any) -> bool:
    """True for ``SecretStr``/``SecretBytes``, also inside ``X | None``, ``Optional``..."""
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_is_secret(arg) for arg in get_args(annotation))


def _env_names(model: type[BaseSettings], loc: tuple[int | str, ...]) -> tuple[str, str]:
    """The environment variable(s) and keyword path a validation error location comes from."""
    config = model.model_config
    prefix = str(config.get("env_prefix") or "")
    delimiter = str(config.get("env_nested_delimiter") or "__")
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        choices = [str(c) for c in alias.choices] if isinstance(alias, AliasChoices) else []
        if loc and (loc[0] == name or str(loc[0]) in choices):
            keyword = ".".join([name, *(str(part) for part in loc[1:])])
            if choices and len(loc) == 1:
                return " or ".join(choices), keyword
            return (prefix + delimiter.join(keyword.split("."))).upper(), keyword
    joined = ".".join(str(part) for part in loc)
    return (prefix + joined.replace(".", delimiter)).upper(), joined


def check_override_keys(
    model: type[BaseModel], overrides: Mapping[str, Any], where: str = ""
) -> None:
    """Refuse a keyword that names no setting, in ``model`` or in its nested groups.

    ``extra="ignore"`` must stay (unrelated environment variables are not errors), but it
    also dropped a misspelt keyword without a word. Keys are matched as pydantic-settings
    matches them: field names and their variable aliases, ignoring case where the model does.
    """
    fold = model.model_config.get("case_sensitive") is False  # BaseSettings; groups are exact
    known: dict[str, tuple[str, Any]] = {}
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        aliases = [str(c) for c in alias.choices] if isinstance(alias, AliasChoices) else []
        for key in (name, *aliases):
            known[key.lower() if fold else key] = (name, field.annotation)
    for key, value in overrides.items():
        match = known.get(key.lower() if fold else key)
        if match is None:
            close = difflib.get_close_matches(key, list(model.model_fields), n=1)
            hint = f"; did you mean {where + close[0]!r}?" if close else ""
            raise ConfigurationError(f"unknown setting {where + key!r}{hint}")
        name, group = match
        if isinstance(value, Mapping) and isinstance(group, type) and issubclass(group, BaseModel):
            check_override_keys(group, value, f"{where}{name}.")


_SDK_QUEUE, _SDK_BATCH = 2048, 512
"""The SDK's batch processor sizes when their variables are unset."""


def check_sdk_environment(environ: Mapping[str, str]) -> None:
    """Check the ``OTEL_*`` variables the SDK reads itself, at startup, naming each bad one.

    Batch processor sizes, delays and timeouts, the metric export timeout and the
    per-signal OTLP timeouts are read by the SDK and its exporters, not by :class:`Settings`.
    The SDK raised a bare ``ValueError`` naming its parameter for some bad values (a negative
    size, a batch above the queue) and quietly used its default for others (``abc``, ``nan``).
    """
    problems: list[str] = []

    def number(name: str, integer: bool) -> float | None:
        raw = environ.get(name, "").strip()
        if not raw:
            return None
        try:
            value: float = int(raw) if integer else float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            kind = "a positive integer" if integer else "a number > 0"
            problems.append(f"  {name}: must be {kind}, got {raw[:40]!r}")
            return None
        return value

    for prefix in ("OTEL_BSP_", "OTEL_BLRP_"):
        queue = number(prefix + "MAX_QUEUE_SIZE", integer=True)
        batch = number(prefix + "MAX_EXPORT_BATCH_SIZE", integer=True)
        number(prefix + "SCHEDULE_DELAY", integer=False)
        number(prefix + "EXPORT_TIMEOUT", integer=False)
        if (queue or batch) and (batch or _SDK_BATCH) > (queue or _SDK_QUEUE):
            problems.append(
                f"  {prefix}MAX_EXPORT_BATCH_SIZE ({batch or _SDK_BATCH:g}) must not exceed "
                f"{prefix}MAX_QUEUE_SIZE ({queue or _SDK_QUEUE:g})"
            )
    for signal in ("TRACES", "METRICS", "LOGS"):
        number(f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT", integer=False)
    number("OTEL_METRIC_EXPORT_TIMEOUT", integer=False)
    if problems:
        raise ConfigurationError(
            f"invalid OpenTelemetry SDK variables ({len(problems)} error(s)):\n"
            + "\n".join(problems)
        )


def dotenv_sdk_variables() -> dict[str, str]:
    """The ``OTEL_*`` lines of ``.env`` that the SDK reads itself, unless the environment sets them.

    :class:`Settings` reads its own variables from ``.env``; the SDK and its exporters read
    the others (per-signal endpoints, ``OTEL_BSP_*``, ``OTEL_PROPAGATORS``...) from the
    process environment only, so in ``.env`` they were silently ignored. ``configure()``
    copies these into the environment. Blank values count as unset, on either side.
    """
    from dotenv import dotenv_values  # pydantic-settings' own .env reader

    env_file = Settings.model_config.get("env_file")
    if not isinstance(env_file, str) or not os.path.isfile(env_file):
        return {}
    own = {
        str(name)
        for field in Settings.model_fields.values()
        if isinstance(field.validation_alias, AliasChoices)
        for name in field.validation_alias.choices
    }
    return {
        name: value
        for name, value in dotenv_values(env_file).items()
        if name.startswith("OTEL_")
        and name not in own
        and value
        and value.strip()
        and not os.environ.get(name, "").strip()
    }


S = TypeVar("S", bound=BaseSettings)


def load_settings(model: type[S], overrides: Mapping[str, Any]) -> S:
    """Build ``model`` from keyword overrides, env and ``.env``.

    Fails with a :class:`ConfigurationError` whose message names each bad variable.
    """
    from ._health_checks import scrub  # here: _health_checks is no settings dependency

    try:
        return model(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = tuple(part for part in error["loc"] if part != "__root__")
            names, keyword = _env_names(model, loc)
            line = f"  {names} (keyword {keyword!r}): {error['msg']}"
            if error["type"] != "missing":  # a missing field's input is every other value
                value = error.get("input")
                hidden = (
                    "headers" in names.lower()
                    or "secret" in names.lower()
                    or _is_secret(_annotation(model, loc))
                    or isinstance(value, Mapping)  # a whole group's values
                )
                # an endpoint's user:password@ is never shown either
                line += f" (got {'<hidden>' if hidden else scrub(repr(value))})"
            lines.append(line)
        raise ConfigurationError(
            f"invalid {model.__name__} ({len(lines)} error(s)):\n" + "\n".join(lines)
        ) from None
