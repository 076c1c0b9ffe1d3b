"""What the fast OTLP clients share: send one export request, retrying until the timeout.

The transports (:class:`~._otlp_http.OTLPHttpClient`, :class:`~._otlp_grpc.OTLPGrpcClient`)
only make one attempt each; the retry policy is the OTLP spec's and the official
exporters': exponential backoff with jitter on transient failures, or the delay the
collector asked for (HTTP ``Retry-After``, gRPC ``RetryInfo``), until the export timeout;
then the batch is dropped and that is logged once per failure streak (and its end once).
``close()`` interrupts a backoff, and aborts an attempt in flight, at once.

Credentials in the endpoint URL (``http://user:pass@host``) become a Basic ``Authorization``
(:func:`basic_auth`); only :func:`redact`-ed URLs are ever logged.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from ._fork import after_fork_in_child
from ._settings import redact

__all__ = ["Attempt", "RetryingClient", "basic_auth", "export_logger", "redact"]

export_logger = logging.getLogger("kiki_otel._export")
"""Named so the OTel emitter never exports it (``_NO_EXPORT_PREFIXES`` in _logging)."""

Attempt = tuple[bool, bool, str, float | None]
"""One attempt's outcome: (delivered, worth retrying, reason when not delivered, the delay
in seconds the collector asked for before a retry, if it did)."""

MIN_RETRY_DELAY = 0.1
"""The shortest wait before a retry, even when the collector asks for 0: an overloaded
collector answering ``Retry-After: 0`` would otherwise get all 64 attempts in milliseconds."""

_CLOSE_WAIT = 1.0
"""How long ``close()`` waits for an aborted attempt to let go of the connection."""


def basic_auth(url: str, headers: Mapping[str, str]) -> str | None:
    """The Basic ``Authorization`` for credentials in ``url``, unless ``headers`` has one.

    The official HTTP exporter (through requests) authenticates this way; the credentials
    are percent-decoded, as there.
    """
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return None
    if any(name.lower() == "authorization" for name in headers):
        return None
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(credentials.encode()).decode("ascii")


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

    def _interrupt(self) -> None:
        """Abort an attempt in flight (called from ``close()``, without the lock)."""

    def post(self, body: bytes) -> bool:
        """Send one request, retrying transient failures until the timeout; True when delivered."""
        if self._closed.is_set():
            return False
        deadline = time.monotonic() + self._timeout
        reason = "export timeout"
        with self._lock:
            try:
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
                        backoff = max(asked, MIN_RETRY_DELAY)
                    else:
                        backoff = (2**attempt) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter
                    if not retry or time.monotonic() + backoff > deadline:
                        break
                    if self._closed.wait(backoff):
                        break
                else:  # pragma: no cover - only a collector asking for ~0 s, over > 6.4 s
                    reason = "too many attempts"
            finally:
                if self._closed.is_set():  # close() gave up waiting for us: release here
                    self._release()
        if not self._failing:
            export_logger.warning("OTLP export to %s failed, batch dropped (%s)", self.url, reason)
        self._failing = True
        return False

    def close(self) -> None:
        """Stop retrying, abort an attempt in flight and release the connection.

        A stuck attempt (a hung or trickling collector) may hold the lock up to the export
        timeout: shutdown must not wait that long, so the attempt is aborted, and if it
        still holds the lock after a moment, ``post()`` releases the connection itself.
        """
        self._closed.set()
        self._interrupt()
        if self._lock.acquire(timeout=_CLOSE_WAIT):
            try:
                self._release()
            finally:
                self._lock.release()
