"""Threads started ahead for the shutdown, for when Python will not start one any more.

The shutdown keeps its deadline by running each piece that may hang (a cleanup, a provider's
flush against a dead collector, the sequence itself) on a daemon thread of its own and
abandoning it when late. Since Python 3.12 no thread can be started once the interpreter is
finalizing, which is when the ``atexit`` flush of a script, a worker or a prefork master runs
("can't create new thread at interpreter shutdown", python/cpython#104690): it failed there,
and everything still queued was lost. So on 3.12+ a few daemon threads are started ahead and
wait idle (blocked on a queue: no CPU, no GIL); a piece that cannot get a thread of its own
runs on one of them. Enough are kept for the sequence's pieces and one per cleanup (a hung
one keeps its thread). A forked child starts its own (the parent's are not in it).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import traceback
from collections.abc import Callable

NEEDED = sys.version_info >= (3, 12)


class _Spares:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._started = 0
        self._pid = os.getpid()

    def ensure(self, count: int) -> None:
        """At least ``count`` spare threads in this process, while Python can start them."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: none of the parent's is here
                self._work, self._started, self._pid = queue.SimpleQueue(), 0, os.getpid()
            while self._started < count:
                name = f"kiki-otel-spare-{self._started}"
                thread = threading.Thread(target=_serve, args=(self._work,), name=name, daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # shutting down already: what there is will do
                    return
                self._started += 1

    def submit(self, job: Callable[[], None]) -> bool:
        """Hand ``job`` to a spare thread; False if this process has none."""
        with self._lock:
            if self._started == 0 or self._pid != os.getpid():
                return False
            self._work.put(job)
        return True


def _serve(work: queue.SimpleQueue[Callable[[], None]]) -> None:
    while True:
        job = work.get()
        try:
            job()
        except BaseException:  # as a thread of its own would print it, and serve on
            traceback.print_exc()


_spares = _Spares()


def keep(count: int) -> None:
    """Keep ``count`` spare threads ready where Python needs them (3.12+)."""
    if NEEDED:
        _spares.ensure(count)


def start(target: Callable[[], None], name: str) -> threading.Event:
    """Run ``target`` on a new daemon thread, or a spare one if Python will not start one.

    The event is set when ``target`` has returned or raised.
    """
    done = threading.Event()

    def run() -> None:
        try:
            target()
        finally:
            done.set()

    try:
        threading.Thread(target=run, name=name, daemon=True).start()
    except RuntimeError:
        if not _spares.submit(run):
            raise
    return done
