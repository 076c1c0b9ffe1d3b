"""The handle ``configure()`` returns: what was built, and the few things a service does with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import Resource

from ._asgi import ASGIApp, direct_call
from ._http_server import ServerTelemetry
from ._lifecycle import Lifecycle
from ._lifespan import LifespanHooks
from ._logging import OwnLogger
from ._providers import Providers
from ._settings import Settings
from ._shutdown import CleanupT, ShutdownCoordinator, ShutdownReport

if TYPE_CHECKING:
    from ._health import HealthRegistry

__all__ = ["Telemetry"]

_INSTALLED = "_kiki_otel_installed"
log = OwnLogger("kiki_otel")


@dataclass(eq=False)
class Telemetry:
    """Everything ``configure()`` set up. One per process; ``configure()`` returns the same one."""

    settings: Settings
    _resource: Resource = field(repr=False)
    providers: Providers
    lifecycle: Lifecycle
    health: HealthRegistry
    _shutdown: ShutdownCoordinator = field(repr=False)

    @property
    def resource(self) -> Resource:
        """The resource telemetry is exported with (a prefork child's own, after a fork)."""
        current = getattr(self.providers.tracer_provider, "resource", None)
        return current if isinstance(current, Resource) else self._resource

    def tracer(self, name: str, version: str | None = None) -> trace.Tracer:
        """A tracer from this telemetry's provider (the global one, or the one we joined)."""
        return self.providers.tracer_provider.get_tracer(name, version)

    def meter(self, name: str, version: str | None = None) -> metrics.Meter:
        """A meter from this telemetry's provider."""
        return self.providers.meter_provider.get_meter(name, version)

    def on_shutdown(self, fn: CleanupT) -> CleanupT:
        """Run ``fn`` (sync or async) on graceful shutdown, before exporters flush.

        Cleanups run in reverse registration order, each bounded by
        ``shutdown.cleanup_timeout``; one that fails or hangs never blocks the rest.
        Usable as a decorator.
        """
        return self._shutdown.on_shutdown(fn)

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Shut down now (for workers, scripts, CLIs); idempotent. ASGI apps need not call it."""
        return self._shutdown.run_sync(timeout)

    async def ashutdown(self, timeout: float | None = None) -> ShutdownReport:
        """``shutdown()`` on the running event loop, so async cleanups use their own loop."""
        return await self._shutdown.run(timeout)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """Wrap any ASGI app: lifespan hooks, server telemetry and health endpoints."""
        inner = app
        if self.settings.health.enabled:
            from ._health_asgi import HealthEndpoints

            inner = HealthEndpoints(inner, registry=self.health, settings=self.settings.health)
        inner = server = ServerTelemetry(
            inner,
            settings=self.settings,
            tracer_provider=self.providers.tracer_provider,
            meter_provider=self.providers.meter_provider,
        )
        self._shutdown.before_flush(server.finish_pending)
        return LifespanHooks(
            inner, lifecycle=self.lifecycle, shutdown=self._shutdown, on_started=self.health.start
        )

    def instrument_app(self, app: Any) -> None:
        """Install into a Starlette/FastAPI app in place, outside its error middleware.

        Idempotent per app.
        """
        if getattr(app, _INSTALLED, False):
            return
        if not hasattr(app, "build_middleware_stack"):
            raise TypeError(
                f"configure(app) needs a Starlette or FastAPI app, got {type(app).__name__}; "
                "for another ASGI app use `app = kiki_otel.configure().wrap(app)`"
            )
        _disable_other_server_instrumentation(app)  # first: contrib patches the builder
        build = app.build_middleware_stack

        def build_middleware_stack() -> ASGIApp:
            # the outermost layer's _dispatch: the app awaits what it returns (no coroutine
            # of the layer's own, nor the generic call of an instance; _asgi.direct_call)
            return direct_call(self.wrap(build()))

        app.build_middleware_stack = build_middleware_stack
        app.middleware_stack = None  # rebuilt on first call, with us outermost
        setattr(app, _INSTALLED, True)


def _disable_other_server_instrumentation(app: Any) -> None:
    """One server span per request: switch off FastAPI's native telemetry and contrib's."""
    native = getattr(app, "_telemetry", None)
    if isinstance(native, dict) and "tracing" in native:
        # FastAPI >= 0.16x: its config dict is read per request; we own spans, metrics and
        # exception logs, so its three switches go off (and it must not add exporters).
        native.update(tracing=False, metrics=False, logs=False, auto_configure=False)
        log.debug("kiki_otel.fastapi_native_telemetry_disabled")
    if getattr(app, "_is_instrumented_by_opentelemetry", False):
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.uninstrument_app(app)
        log.warning(
            "kiki_otel.contrib_instrumentation_replaced",
            hint="kiki-otel makes the server span; do not also call FastAPIInstrumentor",
        )
