"""Where the process is in its life; readiness reads it, shutdown moves it forward.

Only forward moves: starting -> ready -> stopping -> stopped. Readiness turns 503 the moment
shutdown begins, before any draining or cleanup, so load balancers stop sending new work.
"""

from __future__ import annotations

import threading
from typing import Literal

from ._fork import after_fork_in_child

__all__ = ["Lifecycle", "State"]

State = Literal["starting", "ready", "stopping", "stopped"]
_ORDER: dict[State, int] = {"starting": 0, "ready": 1, "stopping": 2, "stopped": 3}


class Lifecycle:
    """A tiny thread-safe state machine shared by health (readiness) and shutdown."""

    def __init__(self, state: State = "starting") -> None:
        self._state: State = state
        self._lock = threading.Lock()
        after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    def _advance(self, target: State) -> bool:
        with self._lock:
            if _ORDER[target] <= _ORDER[self._state]:
                return False
            self._state = target
            return True

    def mark_ready(self) -> bool:
        """Startup finished (ASGI lifespan startup completed, or no app to wait for)."""
        return self._advance("ready")

    def begin_shutdown(self) -> bool:
        """Shutdown started: readiness fails from now on. False if it had already started."""
        return self._advance("stopping")

    def mark_stopped(self) -> bool:
        """Everything flushed (or abandoned at the deadline)."""
        return self._advance("stopped")

    @property
    def ready(self) -> bool:
        """True only between startup and the start of shutdown."""
        return self._state == "ready"

    @property
    def shutting_down(self) -> bool:
        """True from the moment shutdown begins."""
        return _ORDER[self._state] >= _ORDER["stopping"]
