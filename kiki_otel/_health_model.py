"""The health status model: plain data shared by the registry, the endpoints and the metrics."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CheckResult", "HealthReport", "HealthStatus", "overall_status"]


class HealthStatus(enum.StrEnum):
    """A dependency's or the service's health. Ordered: healthy < degraded < unhealthy."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


_RANK = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One run of one check. ``reason`` is safe to show: a fixed word or an exception class."""

    name: str
    status: HealthStatus
    critical: bool
    component_type: str
    duration: float
    """Seconds the run took."""
    checked_at: float
    """Wall-clock epoch seconds, for display."""
    finished: float
    """``time.monotonic()`` at the end of the run, for TTL and staleness."""
    reason: str | None = None


def overall_status(results: Iterable[CheckResult]) -> HealthStatus:
    """Critical down -> unhealthy; anything else not healthy -> degraded."""
    worst = HealthStatus.HEALTHY
    for result in results:
        if result.status is HealthStatus.HEALTHY:
            continue
        is_down = result.critical and result.status is HealthStatus.UNHEALTHY
        status = HealthStatus.UNHEALTHY if is_down else HealthStatus.DEGRADED
        worst = max(worst, status, key=_RANK.__getitem__)
    return worst


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What a probe sees: the service, its lifecycle state and each dependency's last result."""

    service: str
    version: str | None
    status: HealthStatus
    lifecycle: str
    uptime_seconds: float
    timestamp: float
    dependencies: tuple[CheckResult, ...]

    @property
    def ready(self) -> bool:
        """Serving (not starting, not shutting down) and no critical dependency down."""
        return self.lifecycle == "ready" and not any(
            d.critical and d.status is HealthStatus.UNHEALTHY for d in self.dependencies
        )
