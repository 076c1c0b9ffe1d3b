"""A lean OTLP/gRPC transport for the fast span and log exporters.

The official gRPC exporters build protobuf message objects per attribute and serialize them
(~50 us a span, holding the GIL). Here the request bytes come from kiki's encoder (the same
bytes ``SerializeToString`` gives, proven in tests/test_otlp_encode.py) and go to the
collector's ``Export`` method as they are: the channel's serializer is the identity.

Behaviour follows the official exporter: plaintext for an ``http://`` endpoint and TLS with
the system roots for ``https://`` (other setups - certificates, ``OTEL_EXPORTER_OTLP_INSECURE``
- keep the official exporter, see ``_exporters``), the headers as call metadata, optional gzip,
and retries on the codes it retries (CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS) with the shared backoff, or after the
``RetryInfo`` delay the collector sent, until the timeout. Credentials in the endpoint
(``http://user:pass@host:4317``) go as Basic ``authorization`` metadata, as with OTLP/HTTP.
The channel is made on first use, and a forked worker makes its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped, unused-ignore]  # grpcio ships no type information

from ._otlp_client import Attempt, RetryingClient, basic_auth, redact

__all__ = ["LOGS_METHOD", "TRACES_METHOD", "OTLPGrpcClient"]

TRACES_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"

_RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _retry_delay(error: Any) -> float | None:
    """The delay a ``google.rpc.RetryInfo`` in the trailers asks for, in seconds."""
    try:
        trailers = dict(error.trailing_metadata() or ())
        raw = trailers.get("google.rpc.retryinfo-bin")
        if raw is None:
            return None
        from google.rpc.error_details_pb2 import (  # type: ignore[import-untyped]
            RetryInfo,
        )

        info = RetryInfo.FromString(raw)
    except Exception:  # a malformed trailer: our own backoff then
        return None
    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)


class OTLPGrpcClient(RetryingClient):
    """Sends encoded export requests to one OTLP/gRPC service method over one channel."""

    def __init__(
        self,
        endpoint: str,
        method: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        compression: str = "none",
    ) -> None:
        super().__init__(timeout)
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OTLP/gRPC endpoint must be an http(s) URL, got {redact(endpoint)!r}")
        self.url = f"{redact(endpoint).rstrip('/')}{method}"
        self._target = parts.netloc.rpartition("@")[2]  # a channel target has no userinfo
        self._secure = parts.scheme == "https"
        self._method = method
        # gRPC metadata keys are lowercase; the official exporter lowercases them too.
        self._metadata = tuple((key.lower(), value) for key, value in (headers or {}).items())
        authorization = basic_auth(endpoint, headers or {})
        if authorization is not None:
            self._metadata += (("authorization", authorization),)
        self._compression = grpc.Compression.Gzip if compression == "gzip" else None
        self._channel: Any = None
        self._call: Any = None

    def _forget_inherited(self) -> None:
        self._channel = self._call = None

    def _attempt(self, body: bytes, timeout: float) -> Attempt:
        if self._call is None:
            if self._secure:
                credentials = grpc.ssl_channel_credentials()
                self._channel = grpc.secure_channel(self._target, credentials)
            else:
                self._channel = grpc.insecure_channel(self._target)
            # No (de)serializers: the request is already the wire bytes, the reply unused.
            self._call = self._channel.unary_unary(self._method)
        try:
            self._call(
                body,
                timeout=timeout,
                metadata=self._metadata or None,
                compression=self._compression,
            )
        except grpc.RpcError as error:
            code = error.code()
            reason = f"gRPC {code.name}: {error.details()}"
            return False, code in _RETRYABLE, reason, _retry_delay(error)
        return True, False, "", None

    def _interrupt(self) -> None:
        """Close the channel: a call in flight ends at once (CANCELLED)."""
        channel = self._channel
        if channel is not None:
            channel.close()

    def _release(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._call = None
