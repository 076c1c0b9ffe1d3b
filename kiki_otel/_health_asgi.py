"""The health endpoints as a pure ASGI middleware, and the two body formats.

``/health`` is the full report, ``/health/live`` the process only (it never touches a
dependency, so a slow database cannot get the pod restarted), ``/health/ready`` the critical
dependencies plus the lifecycle: 503 while starting and from the moment shutdown begins.

The default body is the seed's JSON; ``Accept: application/health+json`` gets the IETF draft
format (draft-inadarei-api-health-check). Every answer carries ``Cache-Control: no-store``.
Pure ASGI rather than ``BaseHTTPMiddleware``: no extra task per request, context flows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from ._asgi import ASGIApp, Receive, Scope, Send, direct_call, native_dispatch
from ._health import CheckResult, HealthRegistry, HealthReport, HealthStatus
from ._logging import OwnLogger
from ._settings import HealthSettings

__all__ = ["HealthEndpoints", "ietf_body", "seed_body"]

Body = dict[str, Any]

log = OwnLogger("kiki_otel.health")

_HEALTH_JSON = "application/health+json"
_IETF_STATUS = {
    HealthStatus.HEALTHY: "pass",
    HealthStatus.DEGRADED: "warn",
    HealthStatus.UNHEALTHY: "fail",
}


def _iso(epoch: float) -> str:
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _dependency(result: CheckResult) -> Body:
    return {
        "name": result.name,
        "status": result.status.value,
        "critical": result.critical,
        "response_time_ms": round(result.duration * 1000, 2),
        "last_check": _iso(result.checked_at),
        "reason": result.reason,
    }


def seed_body(report: HealthReport) -> Body:
    """Render the seed's ``/health`` JSON, plus ``critical``, ``reason``, lifecycle, ready."""
    counts = {s.value: 0 for s in HealthStatus}
    for dep in report.dependencies:
        counts[dep.status.value] += 1
    return {
        "service": report.service,
        "status": report.status.value,
        "version": report.version,
        "uptime_seconds": round(report.uptime_seconds, 3),
        "timestamp": _iso(report.timestamp),
        "lifecycle": report.lifecycle,
        "ready": report.ready,
        "dependencies": [_dependency(d) for d in report.dependencies],
        "metrics": {"dependencies_total": len(report.dependencies), **counts},
    }


def _ietf_check(result: CheckResult) -> Body:
    check: Body = {
        "componentType": result.component_type,
        "observedValue": round(result.duration * 1000, 2),
        "observedUnit": "ms",
        "status": _IETF_STATUS[result.status],
        "affectsReadiness": result.critical,
        "time": _iso(result.checked_at),
    }
    if result.reason:
        check["output"] = result.reason
    return check


def ietf_body(report: HealthReport, status: HealthStatus, output: str | None = None) -> Body:
    """Render ``application/health+json``: checks keyed ``name:responseTime``, plus uptime."""
    checks: dict[str, list[Body]] = {
        f"{d.name}:responseTime": [_ietf_check(d)] for d in report.dependencies
    }
    checks["uptime"] = [
        {
            "componentType": "system",
            "observedValue": round(report.uptime_seconds, 3),
            "observedUnit": "s",
            "status": "pass",
            "time": _iso(report.timestamp),
        }
    ]
    body: Body = {"status": _IETF_STATUS[status], "serviceId": report.service}
    if report.version:
        body["version"] = body["releaseId"] = report.version
    if output:
        body["output"] = output
    body["checks"] = checks
    return body


class HealthEndpoints:
    """Answer GET/HEAD on the three health paths; pass everything else (lifespan too) to ``app``."""

    def __init__(self, app: ASGIApp, *, registry: HealthRegistry, settings: HealthSettings) -> None:
        self.app = app
        self._app = direct_call(app)
        self._registry = registry
        self._routes: dict[str, Callable[[bool], Awaitable[tuple[int, Body]]]] = {
            settings.path: self._full,
            settings.live_path: self._live,
            settings.ready_path: self._ready,
        }
        # _dispatch in C when built: what the layer outside calls (_asgi.direct_call)
        self._native_dispatch = native_dispatch(self, "path", self._routes, blank="root_path")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one ASGI event."""
        await self._dispatch(scope, receive, send)

    def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The event's coroutine: the app's, or :meth:`_route`'s for a health path.

        What the layer outside calls (``_asgi.direct_call``): every request passes here,
        and most are not health probes; in C when built (``_native_dispatch``: a path not
        the layer's, with no root path, passed on; all else here).
        """
        if scope.get("path") not in self._routes and not scope.get("root_path"):
            return self._app(scope, receive, send)
        return self._route(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._match(scope)
        if handler is None:
            await self._app(scope, receive, send)
            return
        ietf = _wants_ietf(scope)
        try:
            status, body = await handler(ietf)
        except Exception:  # a bug here must still answer the probe, not 500 through the app
            log.exception("health.endpoint_failed")
            status, body = 503, {"status": "fail" if ietf else "unhealthy"}
        await _respond(send, status, body, ietf=ietf, head=scope["method"] == "HEAD")

    def _match(self, scope: Scope) -> Callable[[bool], Awaitable[tuple[int, Body]]] | None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            return None
        path: str = scope.get("path", "")
        handler = self._routes.get(path)
        root = scope.get("root_path", "")
        if handler is None and root and path.startswith(root):
            handler = self._routes.get(path[len(root) :])  # servers that keep root_path in path
        return handler

    async def _full(self, ietf: bool) -> tuple[int, Body]:
        report = await self._registry.report()
        code = 503 if report.status is HealthStatus.UNHEALTHY else 200
        return code, ietf_body(report, report.status) if ietf else seed_body(report)

    async def _live(self, ietf: bool) -> tuple[int, Body]:
        report = self._registry.snapshot(critical_only=True)
        if ietf:
            return 200, ietf_body(_without_checks(report), HealthStatus.HEALTHY)
        return 200, {
            "service": report.service,
            "status": HealthStatus.HEALTHY.value,
            "version": report.version,
            "uptime_seconds": round(report.uptime_seconds, 3),
            "timestamp": _iso(report.timestamp),
            "lifecycle": report.lifecycle,
        }

    async def _ready(self, ietf: bool) -> tuple[int, Body]:
        lifecycle = self._registry.lifecycle
        if lifecycle.ready:
            report = await self._registry.report(critical_only=True)
        else:  # starting or shutting down: answer at once, touch no dependency
            report = self._registry.snapshot(critical_only=True)
        ready = report.ready
        reason = None if ready else _not_ready_reason(report)
        status = report.status if ready else HealthStatus.UNHEALTHY
        if ietf:
            return (200 if ready else 503), ietf_body(report, status, reason)
        body = seed_body(report)
        body.update(status=status.value, reason=reason)
        del body["metrics"]
        return (200 if ready else 503), body


def _without_checks(report: HealthReport) -> HealthReport:
    return HealthReport(
        report.service,
        report.version,
        HealthStatus.HEALTHY,
        report.lifecycle,
        report.uptime_seconds,
        report.timestamp,
        (),
    )


def _not_ready_reason(report: HealthReport) -> str:
    if report.lifecycle == "starting":
        return "starting"
    if report.lifecycle != "ready":
        return "shutting_down"
    return "critical_dependency_unhealthy"


def _wants_ietf(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"accept" and _HEALTH_JSON.encode() in value.lower():
            return True
    return False


async def _respond(send: Send, status: int, body: Body, *, ietf: bool, head: bool) -> None:
    payload = orjson.dumps(body)
    content_type = _HEALTH_JSON if ietf else "application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else payload})
