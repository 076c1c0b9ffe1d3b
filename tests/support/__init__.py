"""Test support code shared by the kiki-otel test suites.

``OTLPReceiver`` is a real OTLP/HTTP + OTLP/gRPC receiver that stands in for a collector,
so tests can prove that telemetry actually went over the wire (see ``otlp_receiver``).
"""

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
