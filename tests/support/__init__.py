"""Test support code shared by the kiki-otel test suites.

``OTLPReceiver`` is a real OTLP/HTTP + OTLP/gRPC receiver that stands in for a collector,
so tests can prove that telemetry actually went over the wire (see ``otlp_receiver``).

The names are imported lazily (PEP 562) for two reasons: other support modules in this
package should not pay for importing grpcio and the protobuf modules, and
``python -m tests.support.otlp_receiver`` must not find its own module already imported
by the package (runpy warns about that and would run a second copy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .otlp_receiver import (
        AttrValue,
        Mode,
        OTLPReceiver,
        Protocol,
        RawRequest,
        ReceivedEvent,
        ReceivedExemplar,
        ReceivedLink,
        ReceivedLog,
        ReceivedMetric,
        ReceivedSpan,
        Record,
        Signal,
        decode_any_value,
        decode_attributes,
        decode_request,
    )

__all__ = [
    "AttrValue",
    "Mode",
    "OTLPReceiver",
    "Protocol",
    "RawRequest",
    "ReceivedEvent",
    "ReceivedExemplar",
    "ReceivedLink",
    "ReceivedLog",
    "ReceivedMetric",
    "ReceivedSpan",
    "Record",
    "Signal",
    "decode_any_value",
    "decode_attributes",
    "decode_request",
]


def __getattr__(name: str) -> Any:
    """Resolve the re-exported receiver names on first use."""
    if name in __all__:
        return getattr(importlib.import_module(".otlp_receiver", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
