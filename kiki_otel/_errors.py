"""The error a bad setting raises, in a module that imports nothing of OpenTelemetry's.

``opentelemetry.propagate`` reads ``OTEL_PROPAGATORS`` as it is imported and raises a bare
``ValueError`` for a name it cannot load; kiki's package turns that into this error, naming
the variable, before anything else is imported (see ``kiki_otel/__init__.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "ConfigurationError",
    "check_propagators",
    "quiet_resource_warnings",
    "reload_propagators",
]


class ConfigurationError(ValueError):
    """A setting has a value we cannot use; the message names the variable to fix."""


_imported: object = None
"""The global propagator as ``OTEL_PROPAGATORS`` made it at import, to tell whether the
app has installed its own since."""


def _propagators_error(error: ValueError) -> ConfigurationError:
    return ConfigurationError(
        f"invalid OTEL_PROPAGATORS: {error} (known: tracecontext, baggage, and those "
        "installed as opentelemetry_propagator entry points; 'none' for none)"
    )


def check_propagators() -> None:
    """Import ``opentelemetry.propagate``: a ConfigurationError for a bad OTEL_PROPAGATORS."""
    global _imported
    try:
        from opentelemetry import propagate  # reads OTEL_PROPAGATORS when imported
    except ValueError as error:  # an unknown or uninstalled propagator: the SDK's ValueError
        raise _propagators_error(error) from None
    _imported = propagate.get_global_textmap()


def reload_propagators() -> None:
    """Apply an ``OTEL_PROPAGATORS`` set after import (``configure()`` copies it from ``.env``).

    As with the environment, a propagator the app installed itself wins: it is left alone.
    """
    global _imported
    from opentelemetry import propagate

    if propagate.get_global_textmap() is not _imported:
        return
    try:
        # the SDK's own reading of the variable (as at import), so both behave the same
        textmap = propagate._load_propagators()
    except ValueError as error:
        raise _propagators_error(error) from None
    propagate.set_global_textmap(textmap)
    _imported = textmap


class _DropResourceWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Invalid key value resource attribute pair")


@contextmanager
def quiet_resource_warnings() -> Iterator[None]:
    """Mute the SDK's "Invalid key value resource attribute pair" while kiki is imported.

    Importing the SDK and kiki's modules builds three throwaway default resources, each
    parsing OTEL_RESOURCE_ATTRIBUTES and logging the same warning; ``configure()`` then
    refuses the value with a ConfigurationError naming the variable. Later warnings (an
    app's own resources) are kept.
    """
    logger = logging.getLogger("opentelemetry.sdk.resources")
    muted = _DropResourceWarnings()
    logger.addFilter(muted)
    try:
        yield
    finally:
        logger.removeFilter(muted)
