"""The OTel resource: who is emitting (service, deployment, this process, this host).

Built by hand rather than with the SDK's process detector, which records the whole command
line: that often carries secrets (``--password=...``) and should not be shipped by default.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import uuid

from opentelemetry.sdk.resources import Resource

from ._settings import Settings

__all__ = ["build_resource", "service_name_of"]

_DEFAULT_SERVICE_NAME = "unknown_service"


def _process_attributes() -> dict[str, str | int]:
    return {
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "process.executable.name": os.path.basename(sys.executable or "python"),
        "host.name": socket.gethostname(),
        "host.arch": platform.machine().lower(),
        "os.type": sys.platform,
    }


def build_resource(settings: Settings) -> Resource:
    """Merge, lowest precedence first: detected process/host, OTEL_RESOURCE_ATTRIBUTES, settings.

    ``service.instance.id`` is a fresh UUID per call unless one is set, so each process is a
    distinct instance, as the semconv asks; a child forked after ``configure()`` (gunicorn
    ``--preload``) gets a new id and pid from :mod:`kiki_otel._fork`.
    """
    attributes: dict[str, str | int] = _process_attributes()
    attributes["telemetry.sdk.language"] = "python"
    attributes["telemetry.distro.name"] = "kiki-otel"
    attributes.update(settings.resource_attributes)
    if settings.service_name.strip() not in ("", _DEFAULT_SERVICE_NAME):
        attributes["service.name"] = settings.service_name.strip()
    if not str(attributes.get("service.name", "")).strip():  # unset, or set blank
        attributes["service.name"] = _DEFAULT_SERVICE_NAME  # (the SDK would say "...:python")
    optional = {
        "service.version": settings.service_version,
        "service.namespace": settings.service_namespace,
        "deployment.environment.name": settings.environment,
    }
    attributes.update({key: value for key, value in optional.items() if value})
    # An explicit one (OTEL_RESOURCE_ATTRIBUTES, a pod name, say) wins; forked workers still
    # get their own (kiki_otel._fork): each is a distinct instance.
    attributes.setdefault("service.instance.id", str(uuid.uuid4()))
    return Resource.create(attributes)


def service_name_of(resource: Resource) -> str:
    """The resolved ``service.name`` (settings, else OTEL_RESOURCE_ATTRIBUTES, else default)."""
    return str(resource.attributes.get("service.name", _DEFAULT_SERVICE_NAME))
