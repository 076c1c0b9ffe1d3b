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

from ._errors import quiet_resource_warnings
from ._settings import Settings

__all__ = [
    "build_resource",
    "explicit_instance_id",
    "instance_id",
    "service_name_of",
    "worker",
]

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
    attributes["service.instance.id"] = instance_id(explicit_instance_id(settings), worker())
    # The SDK parses OTEL_RESOURCE_ATTRIBUTES again here and warns of what kiki's stricter
    # parse already took (a trailing comma); a value kiki refuses never gets this far.
    with quiet_resource_warnings():
        return Resource.create(attributes)


def explicit_instance_id(settings: Settings) -> str | None:
    """The ``service.instance.id`` set in OTEL_RESOURCE_ATTRIBUTES (a pod's name, say)."""
    explicit = settings.resource_attributes.get("service.instance.id")
    return str(explicit) if explicit is not None and str(explicit).strip() else None


def instance_id(explicit: str | None, in_worker: bool) -> str:
    """Return the process's ``service.instance.id``.

    The explicit one, made this process's own in a server's worker; else a fresh UUID. The
    semconv asks one id per instance, and each worker of a prefork server is one: its
    metrics are cumulative sums of its own. Workers sharing a pod's name interleave their
    sums in one series (Prometheus takes each drop for a counter reset: rates several times
    too high, silently). So a worker's id is ``<explicit>-<pid>``: the pod's name still
    leads, and each worker's series stay apart.
    """
    if explicit is None:
        return str(uuid.uuid4())
    return f"{explicit}-{os.getpid()}" if in_worker else explicit


def worker() -> bool:
    """Whether this process is one of a server's workers (or another process's child).

    gunicorn's workers are forked from its arbiter (loaded before the fork, so its module
    is here); ``uvicorn --workers`` and multiprocessing pools start theirs through
    ``multiprocessing``. A child forked after ``configure()`` is told by
    :mod:`kiki_otel._fork` instead.
    """
    process = sys.modules.get("multiprocessing.process")  # (a multiprocessing child has it)
    in_child = process is not None and process.parent_process() is not None
    return "gunicorn.arbiter" in sys.modules or in_child


def service_name_of(resource: Resource) -> str:
    """The resolved ``service.name`` (settings, else OTEL_RESOURCE_ATTRIBUTES, else default)."""
    return str(resource.attributes.get("service.name", _DEFAULT_SERVICE_NAME))
