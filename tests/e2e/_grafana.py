"""What Grafana does to a dashboard query before Prometheus sees it, so the tests can do the same.

Grafana is not run here (AGPL): the tests evaluate the dashboards' PromQL against the real
Prometheus (or promtool) after putting in what Grafana would put for its built-in variables. Those
depend on the Prometheus datasource's `timeInterval` (its "scrape interval"), so they are derived
from the provisioning file, never hard-coded: a change there changes what the tests check."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import yaml

from ._stack import REPO

DATASOURCES = REPO / "dashboards" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_DIR = REPO / "dashboards" / "json"
# Grafana's scrape interval when a Prometheus datasource sets no timeInterval.
GRAFANA_DEFAULT_SCRAPE_INTERVAL_S = 15
# The OpenTelemetry SDKs' (and kiki-otel's) default OTEL_METRIC_EXPORT_INTERVAL: a pushed series
# gets one sample this often.
OTEL_DEFAULT_EXPORT_INTERVAL_S = 60
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: str) -> float:
    """A Grafana/Prometheus duration ("60s", "1m", "1m30s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    assert parts and "".join(n + u for n, u in parts) == text.strip(), f"bad duration {text!r}"
    return sum(float(n) * _UNITS[u] for n, u in parts)


def prometheus_datasource() -> dict[str, Any]:
    [datasource] = [
        ds
        for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]
        if ds["uid"] == "prometheus"
    ]
    return dict(datasource)


def scrape_interval_s() -> float:
    """The Prometheus datasource's timeInterval, which Grafana takes as the scrape interval."""
    value = prometheus_datasource().get("jsonData", {}).get("timeInterval")
    return duration_s(value) if value else GRAFANA_DEFAULT_SCRAPE_INTERVAL_S


def builtins(range_s: int = 300) -> dict[str, str]:
    """Grafana's built-in variables for a dashboard range of ``range_s`` on a normal-width panel.

    $__interval is range / max data points, never below the scrape interval (for short ranges: the
    scrape interval); $__rate_interval is max($__interval + scrape interval, 4 x scrape interval).
    """
    scrape = scrape_interval_s()
    interval = max(scrape, range_s / 1000)
    rate = max(interval + scrape, 4 * scrape)
    return {
        "$__rate_interval": f"{rate:g}s",
        "$__range": f"{range_s}s",
        "$__interval": f"{interval:g}s",
        "$__auto": "1m",  # Loki only
    }


def _literal(value: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: value


def substitute(expr: str, variables: dict[str, str], *, range_s: int = 300) -> str:
    """``expr`` with Grafana's built-ins and the dashboard variables put in."""
    for builtin, value in builtins(range_s).items():
        expr = expr.replace(builtin, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name])
        expr = re.sub(r"\$" + re.escape(name) + r"\b", _literal(variables[name]), expr)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def dashboard(stem: str) -> dict[str, Any]:
    return dict(json.loads((DASHBOARD_DIR / f"{stem}.json").read_text()))


def panel(board: dict[str, Any], panel_id: int) -> dict[str, Any]:
    [found] = [p for p in board["panels"] if p["id"] == panel_id]
    return dict(found)


def state_values(state_panel: dict[str, Any]) -> dict[str, float]:
    """A state-timeline panel's value mappings as {text: value} (healthy -> 2, ...)."""
    mapped: dict[str, float] = {}
    for mapping in state_panel["fieldConfig"]["defaults"]["mappings"]:
        assert mapping["type"] == "value", mapping
        for value, option in mapping["options"].items():
            mapped[option["text"]] = float(value)
    return mapped


def rate_queries() -> list[tuple[str, str, str]]:
    """(dashboard file stem, panel title, expr) of every Prometheus query that uses
    $__rate_interval."""
    return [
        (path.stem, p["title"], t["expr"])
        for path in sorted(DASHBOARD_DIR.glob("*.json"))
        for p in json.loads(path.read_text())["panels"]
        for t in p["targets"]
        if t["datasource"]["uid"] == "prometheus" and "$__rate_interval" in t["expr"]
    ]
