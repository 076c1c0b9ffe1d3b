"""Types of the C encoder (``_speedups.c``); see that file for what each function writes."""

from collections.abc import Callable, Set
from typing import Any

def encode_fields(tag: bytes, mapping: Any, skip: Set[str], /) -> bytes | None: ...
def encode_span(
    trace_id: int,
    span_id: int,
    parent_span_id: int | None,
    parent_remote: bool,
    name: str,
    kind: int,
    start: int | None,
    end: int | None,
    attributes: Any,
    status_code: int,
    status_description: str | None,
    /,
) -> bytes | None: ...
def sdk_span(
    context: Any,
    parent: Any,
    name: Any,
    kind: Any,
    start: Any,
    end: Any,
    attributes: Any,
    events: Any,
    links: Any,
    status: Any,
    resource: Any,
    scope: Any,
    types: tuple[Any, ...],
    /,
) -> Any: ...
def encode_log_event(
    timestamp: int,
    head: bytes,
    event: Any,
    skip: Set[str],
    trace_id: int,
    span_id: int,
    trace_flags: int,
    /,
) -> bytes | None: ...
def json_line(mapping: Any, /) -> bytes | None: ...
def merge_contextvars(logger: Any, method_name: str, event_dict: Any, /) -> Any: ...
def histogram_aggregate(
    aggregation: Any,
    value: float,
    reservoir: Any,
    names: tuple[str, ...] | None,
    values: tuple[Any, ...] | None,
    /,
) -> bool: ...
def new_instance(cls: type, template: dict[str, Any], /, **fields: Any) -> Any: ...
def new_tuple(cls: type, /, *items: Any) -> Any: ...
def scan_headers(
    headers: Any, id_header: bytes, wanted: dict[bytes, str] | None, /
) -> tuple[dict[str, str], int, list[bytes] | None] | None: ...
def iso_timestamp(time_ns: int, fallback: Callable[[int], str], /) -> str: ...
def frame_items(items: Any, tag: bytes, encoded: type, /) -> bytes | None: ...
