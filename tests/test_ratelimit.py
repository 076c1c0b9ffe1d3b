"""Rate limits for what may happen per request or per item: report the first, count the rest."""

from __future__ import annotations

import pytest

from kiki_otel._ratelimit import Throttle


def test_throttle_reports_once_per_interval_with_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first item of a key is due (nothing held); the next ones within the interval are
    counted; the first after it is due with that count. Keys are independent, and past
    ``max_keys`` new keys are always due (nothing remembered, nothing silenced)."""
    clock = [100.0]
    monkeypatch.setattr("kiki_otel._ratelimit.time.monotonic", lambda: clock[0])
    throttle = Throttle(30.0, max_keys=2)
    assert throttle.due("spans") == 0
    assert [throttle.due("spans") for _ in range(3)] == [None, None, None]
    assert throttle.due("logs") == 0
    clock[0] += 30.0
    assert throttle.due("spans") == 3
    assert throttle.due("third") == 0 and throttle.due("third") == 0  # not remembered
    assert set(throttle.state) == {"spans", "logs"}
