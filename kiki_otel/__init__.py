"""kiki-otel: one call gives a FastAPI/ASGI service traces, metrics and logs over OTLP.

``configure(app)`` sets up OpenTelemetry with the request id equal to the trace id, JSON logs
correlated with it, health endpoints exported as metrics, and a graceful shutdown that flushes
every exporter within a deadline.
"""
# OTEL_PROPAGATORS is checked before any module that imports OpenTelemetry's is imported.

from ._errors import ConfigurationError, check_propagators, quiet_resource_warnings

check_propagators()  # the SDK reads it at import and would raise a bare ValueError

with quiet_resource_warnings():  # a bad OTEL_RESOURCE_ATTRIBUTES: configure() says it once
    from ._configure import configure
    from ._context import get_request_id
    from ._health import CheckFailed, HealthRegistry, HealthStatus
    from ._logging import get_logger
    from ._settings import ServiceSettings, Settings
    from ._shutdown import ShutdownReport
    from ._telemetry import Telemetry

__all__ = [
    "CheckFailed",
    "ConfigurationError",
    "HealthRegistry",
    "HealthStatus",
    "ServiceSettings",
    "Settings",
    "ShutdownReport",
    "Telemetry",
    "configure",
    "get_logger",
    "get_request_id",
]

__version__ = "0.1.0"
