"""``configure()``: the pipeline that builds everything, in order.

settings -> resource -> providers -> logging -> HTTP client -> health -> lifecycle, then the
app. Each step is a small function of its own module; this one only calls them in order.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import _logs, metrics, trace
from pydantic import BaseModel

from ._errors import reload_propagators
from ._exporters import check_signal_endpoints
from ._health import HealthRegistry
from ._health_checks import scrub
from ._http_client import instrument_httpx, quiet_httpx_logs
from ._lifecycle import Lifecycle
from ._logging import OwnLogger, configure_logging
from ._providers import Providers, build_providers
from ._resource import build_resource, explicit_instance_id, service_name_of
from ._settings import (
    Settings,
    check_override_keys,
    check_sdk_environment,
    dotenv_sdk_variables,
    load_settings,
)
from ._shutdown import ShutdownCoordinator
from ._telemetry import Telemetry

__all__ = ["configure", "current"]

log = OwnLogger("kiki_otel")
_lock = threading.RLock()
_telemetry: Telemetry | None = None


def _resolve(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    """Merge keyword ``overrides`` into ``settings`` (or env/``.env``); unknown keys fail."""
    check_override_keys(Settings, overrides)
    if settings is None:
        return load_settings(Settings, overrides)
    if overrides:
        merged = settings.model_dump()
        for key, value in overrides.items():
            current = merged.get(key)
            # A group keyword (http={...}) changes those fields of the group, not the group.
            if isinstance(current, dict) and isinstance(value, Mapping):
                value = {**current, **value}
            merged[key] = value
        return load_settings(Settings, merged)
    return settings


def _noop_providers() -> Providers:
    # OTEL_SDK_DISABLED: the API's no-op providers; logging and request ids still work.
    return Providers(
        trace.NoOpTracerProvider(), metrics.NoOpMeterProvider(), _logs.NoOpLoggerProvider()
    )


def _apply_dotenv_sdk_variables() -> None:
    """Copy ``.env``'s ``OTEL_*`` that only the SDK reads into the environment, never over it.

    Without this, ``.env`` applied kiki's settings but silently not the per-signal endpoints,
    ``OTEL_BSP_*``, ``OTEL_PROPAGATORS``... that the SDK and its exporters read from
    ``os.environ``. Done before anything checks or reads them, so they are validated too.
    """
    found = dotenv_sdk_variables()
    os.environ.update(found)
    if "OTEL_PROPAGATORS" in found:  # read at import, before .env was: apply it now
        reload_propagators()


def _build(settings: Settings) -> Telemetry:
    _apply_dotenv_sdk_variables()
    if not settings.sdk_disabled:
        check_signal_endpoints(settings)  # before any provider is installed globally
        check_sdk_environment(os.environ)
    resource = build_resource(settings)
    providers = _noop_providers() if settings.sdk_disabled else build_providers(settings, resource)
    configure_logging(settings, service_name_of(resource), providers.logger_provider)
    if providers.joined:
        log.info("kiki_otel.joined_existing_providers", signals=providers.joined)
    if not settings.sdk_disabled:
        instrument_httpx(settings)
    quiet_httpx_logs()  # its log lines: URLs redacted, none for health checks' calls
    lifecycle = Lifecycle()
    health = HealthRegistry(
        settings=settings.health,
        service_name=service_name_of(resource),
        service_version=settings.service_version,
        meter_provider=providers.meter_provider,
        lifecycle=lifecycle,
    )
    owned = dict(
        zip(
            ("traces", "metrics", "logs"),
            (providers.tracer_provider, providers.meter_provider, providers.logger_provider),
            strict=True,
        )
    )
    shutdown = ShutdownCoordinator(
        settings.shutdown,
        lifecycle,
        {name: provider for name, provider in owned.items() if provider in providers.owned},
        explicit_instance_id(settings),
    )
    shutdown.on_shutdown(health.aclose)  # registered first, so it runs after user cleanups
    return Telemetry(settings, resource, providers, lifecycle, health, shutdown)


def _differing(wanted: Settings, current: Settings) -> list[str]:
    """Name the settings a later ``configure()`` asked to change, nested as ``health.ttl``.

    Names only, never values: headers and endpoints may carry secrets.
    """
    names: list[str] = []
    for name in type(current).model_fields:
        new, old = getattr(wanted, name), getattr(current, name)
        if new == old:
            continue
        if isinstance(old, BaseModel) and type(new) is type(old):
            names += [f"{name}.{inner}" for inner in _differing_fields(new, old)]
        else:
            names.append(name)
    return names


def _differing_fields(wanted: BaseModel, current: BaseModel) -> list[str]:
    return [n for n in type(current).model_fields if getattr(wanted, n) != getattr(current, n)]


def configure(app: Any = None, *, settings: Settings | None = None, **overrides: Any) -> Telemetry:
    """Set up traces, metrics and logs over OTLP, JSON logging, health and graceful shutdown.

    Settings come from ``settings`` or the environment/``.env``; keyword ``overrides`` win.
    Calling it again returns the same :class:`Telemetry` (OpenTelemetry providers can be
    set once per process), installing into a new ``app`` if one is given; changed settings
    in a later call are reported in a log line, not applied. Without ``app`` (workers,
    scripts) everything but the HTTP parts is set up and ready at once.
    """
    global _telemetry
    with _lock:
        if _telemetry is None:
            _telemetry = _build(_resolve(settings, overrides))
            log.info(
                "kiki_otel.configured",
                # the exporting resource's (a joined provider's may differ from the line's)
                service_name=service_name_of(_telemetry.resource),
                endpoint=scrub(_telemetry.settings.otlp_endpoint()),  # no user:pass@ in logs
                protocol=_telemetry.settings.exporter_otlp_protocol,
                sdk_disabled=_telemetry.settings.sdk_disabled,
            )
            atexit.register(_telemetry.shutdown)  # scripts; ASGI servers flush in lifespan
        elif settings is not None or overrides:
            wanted = _resolve(settings, overrides)
            if wanted != _telemetry.settings:
                log.warning(
                    "kiki_otel.reconfigure_ignored",
                    settings=_differing(wanted, _telemetry.settings),  # names only: secrets
                    hint="providers are set once per process; restart to apply",
                )
        telemetry = _telemetry
    if app is not None:
        telemetry.instrument_app(app)
    else:
        telemetry.lifecycle.mark_ready()
    return telemetry


def current() -> Telemetry | None:
    """The configured telemetry, if ``configure()`` ran (used by tests and integrations)."""
    return _telemetry


def _forget() -> None:
    """Drop the handle (tests only; see :mod:`kiki_otel.testing`) and its atexit hook.

    The hook would otherwise keep every configured ``Telemetry`` of a test suite alive.
    """
    global _telemetry
    with _lock:
        if _telemetry is not None:
            atexit.unregister(_telemetry.shutdown)
        _telemetry = None
