"""What the fast OTLP clients share: send one export request, retrying until the timeout.

The transports (:class:`~._otlp_http.OTLPHttpClient`, :class:`~._otlp_grpc.OTLPGrpcClient`)
only make one attempt each; the retry policy is the OTLP spec's and the official
exporters': exponential backoff with jitter on transient failures, or the delay the
collector asked for (HTTP ``Retry-After``, gRPC ``RetryInfo``), until the export timeout;
then the batch is dropped and that is logged once per failure streak (and its end once).
``close()`` interrupts a backoff at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from ._fork import after_fork_in_child

__all__ = ["Attempt", "RetryingClient", "export_logger"]

export_logger = logging.getLogger("kiki_otel._export")
"""Named so the OTel emitter never exports it (``_NO_EXPORT_PREFIXES`` in _logging)."""

Attempt = tuple[bool, bool, str, float | None]
"""One attempt's outcome: (delivered, worth retrying, reason when not delivered, the delay
in seconds the collector asked for before a retry, if it did)."""


class RetryingClient:
    """Sends export requests to one collector endpoint; subclasses make single attempts."""

    url: str

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._failing = False
        after_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """In a forked worker: a fresh lock and none of the parent's connections.

        The parent's exporter thread may have held the lock at the fork; the next export
        opens its own connection.
        """
        self._lock = threading.Lock()
        self._forget_inherited()

    def _forget_inherited(self) -> None:
        """Drop the parent's connection or channel without disturbing the parent's."""

    def _attempt(self, body: bytes, timeout: float) -> Attempt:
        raise NotImplementedError

    def _release(self) -> None:
        """Drop the connection or channel (called under the lock)."""

    def post(self, body: bytes) -> bool:
        """Send one request, retrying transient failures until the timeout; True when delivered."""
        if self._closed.is_set():
            return False
        deadline = time.monotonic() + self._timeout
        reason = "export timeout"
        with self._lock:
            for attempt in range(64):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed.is_set():
                    break
                delivered, retry, reason, asked = self._attempt(body, remaining)
                if delivered:
                    if self._failing:
                        export_logger.info("OTLP export to %s recovered", self.url)
                    self._failing = False
                    return True
                if asked is not None and asked >= 0:
                    backoff = asked
                else:
                    backoff = (2**attempt) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter
                if not retry or time.monotonic() + backoff > deadline:
                    break
                if self._closed.wait(backoff):
                    break
            else:  # pragma: no cover - 64 attempts cannot fit in any sane timeout
                reason = "too many attempts"
        if not self._failing:
            export_logger.warning("OTLP export to %s failed, batch dropped (%s)", self.url, reason)
        self._failing = True
        return False

    def close(self) -> None:
        """Stop retrying and release the connection (waits for an export in flight)."""
        self._closed.set()
        with self._lock:
            self._release()
