"""After a fork without exec (gunicorn ``--preload``): a new identity, no shared connections.

With ``--preload`` gunicorn imports the app, so ``configure()`` runs in the master, and
then forks the workers. Measured with SDK 1.45 (tests/integration/test_prefork.py):

- the SDK restarts its batch and metric-reader threads in the child, clears the inherited
  queues, and refreshes ``service.instance.id``; a gRPC channel keeps working;
- but ``process.pid`` stays the master's, and the OTLP/HTTP exporters hold the master's
  keep-alive connection to the collector, so the master and every worker write to one
  TCP stream.

So in the child we merge a fresh ``service.instance.id`` and ``process.pid`` into each
provider's resource (the SDK's own after-fork path, ``_update_resource``, which also
updates tracers and loggers already handed out) and close the child's copy of every
collector connection found under our providers (``requests`` pools of the official
exporters, ``http.client`` connections of ours); the parent's stay open. Nothing here
takes a lock another thread of the parent could have held at the fork, and nothing logs.
"""

from __future__ import annotations

import http.client
import os
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.sdk.resources import Resource

from ._resource import instance_id

__all__ = ["after_fork_in_child", "drop_inherited_connections", "new_identity", "reachable"]

_WALK_LIMIT = 20_000
"""Objects visited at most when looking for HTTP sessions under a provider."""


def after_fork_in_child(method: Callable[[], object]) -> None:
    """Call the bound ``method`` in every forked child, for as long as its object lives."""
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        return
    ref = weakref.WeakMethod(method)

    def in_child() -> None:
        bound = ref()
        if bound is not None:
            bound()

    os.register_at_fork(after_in_child=in_child)


def new_identity(providers: Iterable[Any], explicit: str | None = None) -> Resource:
    """Merge this child's ``service.instance.id`` and ``process.pid`` into each provider.

    The id is ``<explicit>-<pid>`` when one was set (``_resource.instance_id``), else a new UUID.
    """
    identity = Resource(
        {"service.instance.id": instance_id(explicit, True), "process.pid": os.getpid()}
    )
    for provider in providers:
        update = getattr(provider, "_update_resource", None)
        if update is not None:
            update(identity)
    return identity


def reachable(roots: Iterable[Any], kinds: tuple[type, ...]) -> list[Any]:
    """Instances of ``kinds`` reachable through OpenTelemetry and kiki-otel objects."""
    found: list[Any] = []
    seen: set[int] = set()
    queue = list(roots)
    while queue and len(seen) < _WALK_LIMIT:  # breadth first: exporters sit a few levels down
        obj = queue.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, kinds):
            found.append(obj)
        elif isinstance(obj, list | tuple | set | frozenset):
            queue.extend(obj)
        elif isinstance(obj, dict):
            queue.extend(obj.values())
        elif type(obj).__module__.startswith(("opentelemetry", "kiki_otel")):
            queue.extend(getattr(obj, "__dict__", {}).values())
    return found


def _close_sockets(poolmanager: Any) -> None:
    """Close this process's copy of each pooled socket (the parent's stays open).

    Read without the pools' locks, which an export thread of the parent may have held at
    the moment of the fork; nobody else in the child can be using these objects yet.
    """
    pools = getattr(getattr(poolmanager, "pools", None), "_container", {})
    for pool in list(pools.values()):
        for connection in list(getattr(getattr(pool, "pool", None), "queue", None) or ()):
            sock = getattr(connection, "sock", None)
            if sock is not None:
                sock.close()


def drop_inherited_connections(providers: Iterable[Any]) -> int:
    """Close this process's copy of every collector connection under ``providers``.

    Covers the connections of ``requests`` sessions (the official OTLP/HTTP exporters; their
    adapters get a fresh pool) and ``http.client`` connections (kiki-otel's own exporter;
    they reconnect on the next request). Returns how many holders were reset.
    """
    kinds: tuple[type, ...] = (http.client.HTTPConnection,)
    try:
        from requests import Session
        from requests.adapters import HTTPAdapter
    except ImportError:  # pragma: no cover - only the gRPC exporters installed
        Session = HTTPAdapter = None  # type: ignore[assignment,misc]
    else:
        kinds += (Session,)
    holders = reachable(providers, kinds)
    for holder in holders:
        if isinstance(holder, http.client.HTTPConnection):
            holder.close()  # no locks: closes the socket and forgets it
            continue
        for adapter in holder.adapters.values():
            if isinstance(adapter, HTTPAdapter):
                _close_sockets(adapter.poolmanager)
                adapter.init_poolmanager(
                    adapter._pool_connections,
                    adapter._pool_maxsize,
                    block=adapter._pool_block,
                )
                adapter.proxy_manager = {}
    return len(holders)
