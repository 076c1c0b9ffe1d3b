"""Health as an OTel signal: state-set gauges, a check-duration histogram, a failure counter.

Names (see docs/health.md): ``kiki.health.dependency.status{dependency,critical,state}``,
``kiki.health.status{state}``, ``kiki.health.check.duration`` (s),
``kiki.health.check.failures{dependency,reason}`` and ``process.uptime`` (s).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from ._health_model import CheckResult, HealthStatus

if TYPE_CHECKING:
    from ._health import HealthRegistry

__all__ = ["HealthMetrics"]


class HealthMetrics:
    """The health instruments of one meter provider, reading whichever registry is current.

    The SDK keeps the *first* registration of an instrument name on a meter (a second one,
    with new callbacks, is dropped with a warning). So instruments are made once per provider
    and the callbacks follow a weak reference to the current registry: a second
    ``configure()`` swaps the registry instead of duplicating or freezing the series.
    """

    _by_provider: ClassVar[weakref.WeakKeyDictionary[MeterProvider, HealthMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, provider: MeterProvider) -> None:
        meter = provider.get_meter("kiki_otel.health")
        self._registry: Callable[[], HealthRegistry | None] = lambda: None
        meter.create_observable_gauge(
            "kiki.health.dependency.status",
            [self._dependency_states],
            description="1 for the dependency's current state (healthy|degraded|unhealthy), else 0",
        )
        meter.create_observable_gauge(
            "kiki.health.status",
            [self._service_states],
            description="1 for the service's overall health state, else 0",
        )
        meter.create_observable_gauge(
            "process.uptime", [self._uptime], unit="s", description="Seconds since configure()"
        )
        self._duration = meter.create_histogram(
            "kiki.health.check.duration", unit="s", description="Duration of one check run"
        )
        self._failures = meter.create_counter(
            "kiki.health.check.failures", description="Check runs that were not healthy"
        )

    @classmethod
    def install(cls, provider: MeterProvider, registry: HealthRegistry) -> HealthMetrics:
        """Return the provider's instruments, now reporting ``registry``."""
        metrics = cls._by_provider.get(provider)
        if metrics is None:
            metrics = cls._by_provider[provider] = cls(provider)
        metrics._registry = weakref.ref(registry)
        return metrics

    def detach(self, registry: HealthRegistry) -> None:
        """Stop observing ``registry`` (closed), unless another one replaced it already."""
        if self._registry() is registry:
            self._registry = lambda: None

    def record(self, result: CheckResult) -> None:
        """Per run: its duration, and a failure with its reason if it was not healthy."""
        self._duration.record(result.duration, {"dependency": result.name})
        if result.status is not HealthStatus.HEALTHY:
            attrs = {"dependency": result.name, "reason": result.reason or "unknown"}
            self._failures.add(1, attrs)

    def _dependency_states(self, _options: CallbackOptions) -> Iterable[Observation]:
        registry = self._registry()
        deps = () if registry is None else registry.snapshot().dependencies
        return [
            Observation(int(dep.status is state), {**_dep_attrs(dep), "state": state.value})
            for dep in deps
            for state in HealthStatus
        ]

    def _service_states(self, _options: CallbackOptions) -> Iterable[Observation]:
        registry = self._registry()
        if registry is None or not registry.observed():
            return []
        status = registry.snapshot().status
        return [Observation(int(status is s), {"state": s.value}) for s in HealthStatus]

    def _uptime(self, _options: CallbackOptions) -> Iterable[Observation]:
        registry = self._registry()
        return [] if registry is None else [Observation(registry.uptime())]


def _dep_attrs(dep: CheckResult) -> dict[str, str]:
    return {"dependency": dep.name, "critical": "true" if dep.critical else "false"}
