"""Threads started ahead for the shutdown (``_spare_threads``): used only when Python refuses
to start one, as it does at interpreter exit since 3.12. The exit itself is proven by the
integration tests (a script's atexit flush, a prefork master's) run on 3.12 and 3.13 by
``scripts/test-pythons.sh``; here the refusal is simulated."""

from __future__ import annotations

import threading

import pytest

from kiki_otel import _spare_threads


@pytest.fixture
def spares(monkeypatch: pytest.MonkeyPatch) -> _spare_threads._Spares:
    """A pool of this test's own in place of the process's."""
    pool = _spare_threads._Spares()
    monkeypatch.setattr(_spare_threads, "_spares", pool)
    return pool


def _refuse_new_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)


def _ran_on(ended: threading.Event, names: list[str]) -> str:
    assert ended.wait(5)
    return names[-1]


def test_work_gets_a_thread_of_its_own_while_python_starts_them(
    spares: _spare_threads._Spares,
) -> None:
    spares.ensure(2)
    names: list[str] = []
    ended = _spare_threads.start(lambda: names.append(threading.current_thread().name), "job")
    assert _ran_on(ended, names) == "job"


def test_work_goes_to_a_spare_when_python_refuses_a_thread(
    spares: _spare_threads._Spares, monkeypatch: pytest.MonkeyPatch
) -> None:
    spares.ensure(2)
    _refuse_new_threads(monkeypatch)
    names: list[str] = []
    ended = _spare_threads.start(lambda: names.append(threading.current_thread().name), "job")
    assert _ran_on(ended, names).startswith("kiki-otel-spare-")
    spares.ensure(5)  # refused too: what there is stays, nothing raises
    assert spares._started == 2


def test_a_spare_serves_on_after_a_job_that_raised(
    spares: _spare_threads._Spares,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spares.ensure(1)
    _refuse_new_threads(monkeypatch)

    def fails() -> None:
        raise ValueError("cleanup broke")

    assert _spare_threads.start(fails, "bad").wait(5)  # ended: raised, and so set
    names: list[str] = []
    ended = _spare_threads.start(lambda: names.append(threading.current_thread().name), "next")
    assert _ran_on(ended, names) == "kiki-otel-spare-0"
    assert "ValueError: cleanup broke" in capsys.readouterr().err


def test_a_hung_job_keeps_its_spare_and_the_next_takes_another(
    spares: _spare_threads._Spares, monkeypatch: pytest.MonkeyPatch
) -> None:
    spares.ensure(2)
    _refuse_new_threads(monkeypatch)
    release = threading.Event()
    hung = _spare_threads.start(lambda: release.wait(10), "hangs")
    names: list[str] = []
    ended = _spare_threads.start(lambda: names.append(threading.current_thread().name), "next")
    assert ended.wait(5) and not hung.is_set()
    release.set()
    assert hung.wait(5)


def test_without_spares_a_refusal_is_raised(
    spares: _spare_threads._Spares, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_new_threads(monkeypatch)
    with pytest.raises(RuntimeError, match="interpreter shutdown"):
        _spare_threads.start(lambda: None, "job")


def test_a_forked_child_does_not_count_its_parents_spares(
    spares: _spare_threads._Spares, monkeypatch: pytest.MonkeyPatch
) -> None:
    spares.ensure(2)
    parent = _spare_threads.os.getpid()
    monkeypatch.setattr(_spare_threads.os, "getpid", lambda: parent + 1)
    assert not spares.submit(lambda: None)  # the parent's threads are not in the child
    spares.ensure(1)  # the child starts its own
    assert spares._started == 1
    ended = threading.Event()
    assert spares.submit(ended.set) and ended.wait(5)


def test_kept_only_where_python_needs_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """``keep`` starts spares on 3.12+ only; the shutdown asks for one per cleanup more."""
    from kiki_otel._shutdown import _SEQUENCE_THREADS

    pool = _spare_threads._Spares()
    monkeypatch.setattr(_spare_threads, "_spares", pool)
    _spare_threads.keep(3)
    assert pool._started == (3 if _spare_threads.NEEDED else 0)
    assert _SEQUENCE_THREADS >= 8
