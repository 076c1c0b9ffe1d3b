"""``same_code``: an SDK function is the code a fast path runs inline, or it is not."""

from __future__ import annotations

from typing import Any

from kiki_otel._probe import same_code


def _enabled(self: Any) -> bool:
    return self._meter_config is None or self._meter_config.is_enabled  # type: ignore[no-any-return]


def _enabled_again(self: Any) -> bool:
    return self._meter_config is None or self._meter_config.is_enabled  # type: ignore[no-any-return]


def _reads_another_name(self: Any) -> bool:
    return self._meter_cfg is None or self._meter_cfg.is_enabled  # type: ignore[no-any-return]


def _another_constant(self: Any) -> bool:
    return self._meter_config is False or self._meter_config.is_enabled  # type: ignore[no-any-return]


def _negated(self: Any) -> bool:
    return not (self._meter_config is None or self._meter_config.is_enabled)


def _with_docstring(self: Any) -> bool:
    """A docstring is a constant."""
    return self._meter_config is None or self._meter_config.is_enabled  # type: ignore[no-any-return]


async def _a_coroutine(self: Any) -> bool:
    return self._meter_config is None or self._meter_config.is_enabled  # type: ignore[no-any-return]


def test_the_same_code_elsewhere_is_the_same() -> None:
    assert same_code(_enabled, _enabled_again)
    assert same_code(_enabled, _enabled)


def test_any_difference_in_what_it_runs_is_not() -> None:
    for other in (_reads_another_name, _another_constant, _negated, _with_docstring):
        assert not same_code(_enabled, other), other.__name__
    assert not same_code(_enabled, _a_coroutine)  # a coroutine of the same body


def test_what_has_no_code_is_not() -> None:
    assert not same_code(len, _enabled)
    assert not same_code(None, _enabled)
    assert not same_code(_enabled, object.__new__)


def test_a_module_s_future_imports_do_not_count() -> None:
    """This module has ``from __future__ import annotations``; the same source without it
    compiles with other flags but the same code."""
    namespace: dict[str, Any] = {"Any": Any}
    source = (
        "def _enabled(self):\n"
        "    return self._meter_config is None or self._meter_config.is_enabled\n"
    )
    exec(compile(source, "<no future>", "exec", dont_inherit=True), namespace)
    assert namespace["_enabled"].__code__.co_flags != _enabled.__code__.co_flags
    assert same_code(namespace["_enabled"], _enabled)
