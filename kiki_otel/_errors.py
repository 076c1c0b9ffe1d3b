"""The error a bad setting raises, in a module that imports nothing of OpenTelemetry's.

``opentelemetry.propagate`` reads ``OTEL_PROPAGATORS`` as it is imported and raises a bare
``ValueError`` for a name it cannot load; kiki's package turns that into this error, naming
the variable, before anything else is imported (see ``kiki_otel/__init__.py``).
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "check_propagators"]


class ConfigurationError(ValueError):
    """A setting has a value we cannot use; the message names the variable to fix."""


def check_propagators() -> None:
    """Import ``opentelemetry.propagate``: a ConfigurationError for a bad OTEL_PROPAGATORS."""
    try:
        import opentelemetry.propagate  # noqa: F401 - reads OTEL_PROPAGATORS when imported
    except ValueError as error:  # an unknown or uninstalled propagator: the SDK's ValueError
        raise ConfigurationError(
            f"invalid OTEL_PROPAGATORS: {error} (known: tracecontext, baggage, and those "
            "installed as opentelemetry_propagator entry points; 'none' for none)"
        ) from None
