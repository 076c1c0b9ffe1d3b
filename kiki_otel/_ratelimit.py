"""A log call that speaks at most once per interval per event, counting what it held back.

Bad input from clients (hostile headers, say) must be visible in logs without letting one
client flood them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from structlog.typing import FilteringBoundLogger

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """``warning(event, **fields)`` logs the first call per ``interval`` seconds per event."""

    def __init__(self, logger: FilteringBoundLogger, *, interval: float) -> None:
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
