"""The real stack, end to end: two demo services (A calls B) export over OTLP to the collector,
which feeds Jaeger, Prometheus and a stand-in for Loki. Everything is queried back from the real
backends: traces by request id, Jaeger's Monitor tab, every dashboard query, every alert rule, logs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import yaml

from tests.support.otlp_receiver import OTLPReceiver

from ._stack import REPO, Stack, wait_until
from .conftest import SECRET_BEARER, Demo, Traffic

DASHBOARDS = sorted((REPO / "dashboards" / "json").glob("*.json"))
RULE_FILES = sorted((REPO / "prometheus" / "rules").glob("*.yml"))
# What Grafana would put for its built-in variables at a 15 s scrape interval and a short range.
GRAFANA_BUILTINS = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$__interval": "15s",
    "$__auto": "1m",
}
# What the demo sends that the collector must never let through (POST /checkout, headers).
SECRETS = ("hunter2", "4111 1111 1111 1111", "4111111111111111", SECRET_BEARER.split()[1])
DATA_TIMEOUT = 150.0

# Metric name -> labels it must carry, as Prometheus' OTLP translation stores the library's.
EXPECTED_SERIES = {
    "http_server_request_duration_seconds_bucket": {
        "job",
        "service_name",
        "http_request_method",
        "http_route",
        "http_response_status_code",
        "le",
    },
    "http_server_request_duration_seconds_count": {
        "job",
        "http_route",
        "http_response_status_code",
    },
    "http_server_active_requests": {"job", "http_request_method"},
    "kiki_health_status": {"job", "state"},
    "kiki_health_dependency_status": {"job", "dependency", "critical", "state"},
    "kiki_health_check_duration_seconds_bucket": {"job", "dependency", "le"},
    "process_uptime_seconds": {"job"},
    "traces_span_metrics_calls_total": {"service_name", "span_name", "span_kind", "status_code"},
    "traces_span_metrics_duration_milliseconds_bucket": {
        "service_name",
        "span_name",
        "span_kind",
        "le",
    },
}


# ----------------------------------------------------------------------------- Jaeger


def jaeger_trace(stack: Stack, trace_id: str) -> dict[str, Any] | None:
    response = httpx.get(f"{stack.jaeger_url}/api/traces/{trace_id}", timeout=5)
    if response.status_code != 200:
        return None
    data = response.json().get("data") or []
    return data[0] if data and data[0].get("spans") else None


def services_of(trace: dict[str, Any]) -> set[str]:
    return {process["serviceName"] for process in trace["processes"].values()}


def tags_of(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span.get("tags", [])}


def wait_for_trace(stack: Stack, trace_id: str, services: set[str]) -> dict[str, Any]:
    def complete() -> dict[str, Any] | None:
        trace = jaeger_trace(stack, trace_id)
        return trace if trace and services <= services_of(trace) else None

    trace: dict[str, Any] = wait_until(
        f"trace {trace_id} with spans of {sorted(services)} in Jaeger", complete, timeout=60
    )
    return trace


def test_request_id_finds_one_trace_across_both_services(
    stack: Stack, demo: Demo, traffic: Traffic
) -> None:
    """X-Request-ID is the trace id; Jaeger has that trace with server spans of A and B."""
    trace_id = traffic.plan_ids[0]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id), trace_id
    trace = wait_for_trace(stack, trace_id, {demo.a_name, demo.b_name})
    assert {span["traceID"] for span in trace["spans"]} == {trace_id}
    server_spans = {
        trace["processes"][span["processID"]]["serviceName"]: tags_of(span)
        for span in trace["spans"]
        if tags_of(span).get("span.kind") == "server"
    }
    assert server_spans[demo.a_name]["http.route"] == "/plans/{plan_id}"
    assert server_spans[demo.b_name]["http.route"] == "/plans/{plan_id}/value"
    parents = {ref["spanID"] for span in trace["spans"] for ref in span.get("references", [])}
    assert parents, "B's spans must hang below A's (W3C traceparent propagated by the httpx client)"


def test_sensitive_attributes_are_masked_before_jaeger(
    stack: Stack, demo: Demo, traffic: Traffic
) -> None:
    """/checkout records a card number and a password on its span: Jaeger only sees ****."""
    trace = wait_for_trace(stack, traffic.checkout_ids[0], {demo.a_name})
    tags = {key: value for span in trace["spans"] for key, value in tags_of(span).items()}
    assert tags["payment.card_number"] == "****"
    assert tags["user.password"] == "****"
    everything = httpx.get(
        f"{stack.jaeger_url}/api/traces",
        params={"service": demo.a_name, "limit": 500, "lookback": "1h"},
        timeout=15,
    ).text
    everything += json.dumps(trace)
    assert [secret for secret in SECRETS if secret in everything] == []


@pytest.mark.parametrize("endpoint", ["calls", "latencies", "errors"])
def test_jaeger_monitor_tab_has_span_metrics(
    stack: Stack, demo: Demo, traffic: Traffic, endpoint: str
) -> None:
    """Jaeger's SPM API (the Monitor tab) answers from the span metrics in Prometheus."""

    def fetch() -> list[dict[str, Any]] | None:
        params: dict[str, Any] = {
            "service": demo.a_name,
            "spanKind": "server",
            "endTs": int(time.time() * 1000),
            "lookback": 600_000,
            "step": 15_000,
            "ratePer": 60_000,
        }
        if endpoint == "latencies":
            params["quantile"] = 0.95
        response = httpx.get(
            f"{stack.jaeger_url}/api/metrics/{endpoint}", params=params, timeout=10
        )
        assert response.status_code == 200, response.text
        metrics = response.json()["metrics"]
        return metrics if any(m["metricPoints"] for m in metrics) else None

    metrics = wait_until(f"Jaeger /api/metrics/{endpoint} data", fetch, timeout=DATA_TIMEOUT)
    labels = {label["value"] for metric in metrics for label in metric["labels"]}
    assert demo.a_name in labels


# ----------------------------------------------------------------------------- Prometheus


def test_metrics_arrive_under_the_names_dashboards_use(
    stack: Stack, demo: Demo, traffic: Traffic
) -> None:
    """Every metric the dashboards and rules rely on exists for service A, with its labels."""

    def missing() -> dict[str, str]:
        problems = {}
        for name, labels in EXPECTED_SERIES.items():
            series = stack.prom_query(f'{{__name__="{name}", job="{demo.a_name}"}}')
            if not series:
                problems[name] = "no series"
            elif not labels <= set(series[0]["metric"]):
                problems[name] = f"labels {sorted(series[0]['metric'])}, want {sorted(labels)}"
        return problems

    deadline = time.monotonic() + DATA_TIMEOUT
    while (problems := missing()) and time.monotonic() < deadline:
        time.sleep(3)
    assert problems == {}, _prometheus_names(stack)


def _prometheus_names(stack: Stack) -> str:
    names = httpx.get(f"{stack.prometheus_url}/api/v1/label/__name__/values", timeout=5).json()[
        "data"
    ]
    return "metric names in Prometheus: " + ", ".join(names)


def _literal(value: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: value


def substitute(expr: str, variables: dict[str, str]) -> str:
    for builtin, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(builtin, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name])
        expr = re.sub(r"\$" + re.escape(name) + r"\b", _literal(variables[name]), expr)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def label_values(stack: Stack, definition: str) -> list[str]:
    """Grafana's label_values(selector, label) / label_values(label) against Prometheus."""
    match = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", definition.strip())
    assert match, f"unsupported variable query {definition!r}"
    params = {"match[]": match.group(1)} if match.group(1) else {}
    body = httpx.get(
        f"{stack.prometheus_url}/api/v1/label/{match.group(2)}/values", params=params, timeout=5
    ).json()
    return sorted(body["data"])


def promql_regex_literal(value: str) -> str:
    """A value as an exact-match regex inside a double-quoted PromQL string (Grafana's escaping)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", value)


def variable_sets(stack: Stack, dashboard: dict[str, Any], prefer: str) -> list[dict[str, str]]:
    """Two ways to look at a dashboard: every variable at All, and every one at a real value."""
    variables = [
        v
        for v in dashboard["templating"]["list"]
        if v["type"] == "query" and v["datasource"]["uid"] == "prometheus"
    ]
    chosen: dict[str, str] = {}
    for var in variables:
        values = label_values(stack, substitute(var["definition"], chosen))
        assert values, (
            f"{dashboard['uid']}: variable {var['name']} ({var['definition']}) has no values"
        )
        chosen[var["name"]] = promql_regex_literal(prefer if prefer in values else values[0])
    return [{v["name"]: v["allValue"] for v in variables}, chosen]


def dashboard_query_results(stack: Stack, dashboard: dict[str, Any], prefer: str) -> dict[str, str]:
    """Run every Prometheus panel query with each variable set; map empty or failing ones to why."""
    problems = {}
    for variables in variable_sets(stack, dashboard, prefer):
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["uid"] != "prometheus":
                    continue
                expr = substitute(target["expr"], variables)
                key = f"{dashboard['uid']} / {panel['title']} / {target['refId']} {variables}"
                try:
                    result = stack.prom_query(expr, instant=target.get("instant", False))
                except AssertionError as exc:
                    problems[key] = str(exc)
                    continue
                if not any(series.get("values") or series.get("value") for series in result):
                    problems[key] = f"empty: {expr}"
    return problems


def test_every_dashboard_query_returns_data(stack: Stack, demo: Demo, traffic: Traffic) -> None:
    """Each Prometheus query of each dashboard, as Grafana sends it, returns series of real data."""
    dashboards = [json.loads(path.read_text()) for path in DASHBOARDS]
    deadline = time.monotonic() + DATA_TIMEOUT
    while True:
        try:
            problems = {
                k: v
                for d in dashboards
                for k, v in dashboard_query_results(stack, d, demo.a_name).items()
            }
        except AssertionError as exc:  # a variable without values yet
            problems = {"variables": str(exc)}
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert problems == {}
    queried = sum(
        t["datasource"]["uid"] == "prometheus"
        for d in dashboards
        for p in d["panels"]
        for t in p["targets"]
    )
    assert queried >= 30


def test_every_rule_evaluates_without_error(stack: Stack, demo: Demo, traffic: Traffic) -> None:
    """Prometheus loaded every rule of prometheus/rules, evaluates each without error, and every
    recording rule yields a series for service A."""
    rules = [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]

    def loaded() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{stack.prometheus_url}/api/v1/rules", timeout=5).json()["data"][
            "groups"
        ]
        live = [rule for group in groups for rule in group["rules"]]
        evaluated = live and all(not rule["lastEvaluation"].startswith("0001") for rule in live)
        return live if evaluated else None

    live = wait_until("every rule evaluated once", loaded, timeout=60)
    assert sorted(r["name"] for r in live) == sorted(r.get("record") or r["alert"] for r in rules)
    assert [(r["name"], r.get("lastError")) for r in live if r["health"] != "ok"] == []
    for rule in rules:
        stack.prom_query(rule["expr"])  # raises on a PromQL error

    def empty_recordings() -> list[str]:
        return [
            r["record"]
            for r in rules
            if "record" in r and not stack.prom_query(f'{r["record"]}{{job="{demo.a_name}"}}')
        ]

    deadline = time.monotonic() + DATA_TIMEOUT
    while (empty := empty_recordings()) and time.monotonic() < deadline:
        time.sleep(5)
    assert empty == []


# ----------------------------------------------------------------------------- logs


def test_logs_reach_loki_with_trace_ids(
    loki_standin: OTLPReceiver, demo: Demo, traffic: Traffic
) -> None:
    """Log records of both services arrive at the Loki endpoint, correlated by the trace id,
    with the fields the logs dashboard queries (service.name -> service_name, severity_text)."""
    request_ids = set(traffic.plan_ids)

    def correlated() -> list[Any]:
        logs = [log for log in loki_standin.logs() if log.trace_id in request_ids]
        services = {log.resource.get("service.name") for log in logs}
        return logs if {demo.a_name, demo.b_name} <= services else []

    logs = loki_standin.wait_for(
        correlated, timeout=60, message="logs of A and B with a request's trace id"
    )
    assert all(re.fullmatch(r"[0-9a-f]{16}", log.span_id) for log in logs)
    assert all(log.severity_text for log in logs)
    everything = repr(loki_standin.logs())
    assert [secret for secret in SECRETS if secret in everything] == []


def test_stack_processes_stayed_up(stack: Stack, demo: Demo, traffic: Traffic) -> None:
    """No component crashed while serving the traffic, and the traffic mostly succeeded."""
    stack.assert_alive()
    for proc in demo.procs:
        assert proc.alive(), proc.tail()
    assert traffic.statuses.get(200, 0) > 10 * traffic.statuses.get(-1, 0), traffic.statuses
