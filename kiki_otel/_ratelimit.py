"""A log call that speaks at most once per interval per event, counting what it held back.

Bad input from clients (hostile headers, say) must be visible in logs without letting one
client flood them.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

__all__ = ["RateLimitedLog", "Throttle"]


class _Warns(Protocol):
    def warning(self, event: str, **fields: Any) -> object: ...


class RateLimitedLog:
    """``warning(event, **fields)`` logs the first call per ``interval`` seconds per event."""

    def __init__(self, logger: _Warns, *, interval: float) -> None:
        self._logger = logger
        self._interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, event: str, **fields: Any) -> bool:
        """Log now if this event's interval has passed; return whether it was logged."""
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(event, 0.0):
                self._suppressed[event] = self._suppressed.get(event, 0) + 1
                return False
            self._next[event] = now + self._interval
            suppressed = self._suppressed.pop(event, 0)
        self._logger.warning(event, suppressed=suppressed, **fields)
        return True


class Throttle:
    """Per key, lets one report through every ``interval`` seconds and counts the rest.

    For hot paths that must not log per item (a dropped attribute, a dropped queue item):
    no lock, as a lost count under a race only makes a report's number slightly low. At
    most ``max_keys`` keys are remembered; beyond them every report goes through.
    """

    def __init__(self, interval: float, max_keys: int = 1024) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self.state: dict[Any, list[float]] = {}
        """Key -> [time of its next report, items held back since the last one]."""

    def due(self, key: Any) -> int | None:
        """The count held back since the last report if one is due now, else None."""
        now = time.monotonic()
        state = self.state.get(key)
        if state is not None and now < state[0]:
            state[1] += 1
            return None
        if state is not None or len(self.state) < self._max_keys:
            self.state[key] = [now + self._interval, 0]
        return int(state[1]) if state is not None else 0
