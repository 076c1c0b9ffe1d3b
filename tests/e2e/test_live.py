"""The real stack, end to end: two demo services (A calls B) export over OTLP to the collector,
which feeds Jaeger, Prometheus and a stand-in for Loki. Everything is queried back from the real
backends: traces by request id, Jaeger's Monitor tab, every dashboard query, every alert rule, logs.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.support.otlp_receiver import OTLPReceiver

from . import _grafana, _leaks
from ._grafana import substitute
from ._stack import REPO, Stack, wait_until
from .conftest import SECRET_BEARER, Demo, LeakApp, Mixed, Traffic

DASHBOARDS = sorted((REPO / "dashboards" / "json").glob("*.json"))
RULE_FILES = sorted((REPO / "prometheus" / "rules").glob("*.yml"))
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


# ----------------------------------------------------------------------------- redaction

# Attribute keys the collector must mask (True) or keep (False), whatever their value.
REDACTION_KEYS = {
    "http.request.header.authorization": True,
    "http.request.header.cookie": True,
    "user.password": True,
    "db.password": True,
    "payment.card_number": True,
    "client_secret": True,
    "api_key": True,
    "apikey": True,
    "http.request.header.x-api-key": True,
    "token": True,
    "access_token": True,
    "x-auth-token": True,
    "github_token": True,
    "accessToken": True,
    "session_id": True,
    "input_tokens": False,
    "output_tokens": False,
    "max_tokens": False,
    "tokenizer": False,
    "gen_ai.token.type": False,
    "inputTokens": False,
    "dsn": False,  # its value is checked: only the password goes
    "url.full": False,
    "cache.key": False,
}
# Values (attribute values and log bodies) and what must arrive.
REDACTION_VALUES = [
    (
        "https://api.example.com/v1/plans?api_key=K3y-e2e&access_token=e2eTok3n&page=2",
        "https://api.example.com/v1/plans?****&****&page=2",
    ),
    (
        'HTTP Request: GET http://127.0.0.1:8000/plans/1?token=t0k&apikey=abc "HTTP/1.1 200 OK"',
        'HTTP Request: GET http://127.0.0.1:8000/plans/1?****&**** "HTTP/1.1 200 OK"',
    ),
    (
        "https://maps.example.com/api?q=berlin&key=AIzaE2e&sig=e2esig%3D#map",
        "https://maps.example.com/api?q=berlin&****&****#map",
    ),
    (
        "https://s3.example.com/b/k?X-Amz-Credential=AKIAE2E&X-Amz-Signature=e2e0sig&x=1",
        "https://s3.example.com/b/k?****&****&x=1",
    ),
    (
        "https://h.example.com/cb?password=pw&secret=s&client_secret=cs&github_token=gh",
        "https://h.example.com/cb?****&****&****&****",
    ),
    ("postgresql://app:e2ePgPw@db:5432/x", "postgresql://app****db:5432/x"),
    ("redis://:e2eRedisPw@cache:6379/0", "redis://****cache:6379/0"),
    ("Server=db;User Id=app;Password=e2eSqlPw;Database=x", "Server=db;User Id=app;****;Database=x"),
    ("login failed: password=e2e-hunter2 user=bob", "login failed: **** user=bob"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.e2e", "Authorization: ****"),
    ("header was Basic ZTJlOmUyZXBhc3N3b3Jk", "header was ****"),
    ("card 4111 1111 1111 1111 charged", "card **** charged"),
    # prose and ordinary values: unchanged
    ("falling back to basic authentication for the legacy API", None),
    ("Falling back to Basic Authentication", None),
    ("bearer tokens are accepted", None),
    ("basic read-only access", None),
    ("llm.call input_tokens=812 output_tokens=64 tokenizer=cl100k max_tokens=1000", None),
    ("http://127.0.0.1:8000/plans/3?page=2&sort_key=name", None),
    ("https://host:8443/a?email=a@example.com", None),
    ("error: user alice@example.com not found", None),
    ("GET /plans/{plan_id}", None),
]
REDACTION_SERVICE = "e2e-redaction-cases"


def _otlp_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    return {"stringValue": str(value)}


def _otlp_attributes(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _otlp_value(value)} for key, value in attributes.items()]


def test_redaction_masks_credentials_and_keeps_look_alikes(
    stack: Stack, loki_standin: OTLPReceiver
) -> None:
    """The collector's redaction (the real RE2 patterns of collector-config/config.yaml): credential
    keys and credentials inside values (URL query parameters, userinfo passwords, bearer/basic
    tokens) are masked, the rest of the URL stays readable; token counts, a tokenizer and prose stay
    as they are."""
    now = str(time.time_ns())
    plain = "plain value"
    records = [
        {
            "timeUnixNano": now,
            "body": {"stringValue": "keys"},
            "attributes": _otlp_attributes(
                {**dict.fromkeys(REDACTION_KEYS, plain), "gen_ai.usage.input_tokens": 812}
            ),
        }
    ] + [
        {
            "timeUnixNano": now,
            "body": {"stringValue": value},
            "attributes": _otlp_attributes({"case": n, "note": value}),
        }
        for n, (value, _) in enumerate(REDACTION_VALUES)
    ]
    payload = {
        "resourceLogs": [
            {
                "resource": {"attributes": _otlp_attributes({"service.name": REDACTION_SERVICE})},
                "scopeLogs": [{"scope": {"name": "e2e"}, "logRecords": records}],
            }
        ]
    }
    response = httpx.post(f"{stack.collector_otlp_http}/v1/logs", json=payload, timeout=10)
    assert response.status_code == 200, response.text

    def arrived() -> list[Any]:
        logs = [
            log
            for log in loki_standin.logs()
            if log.resource.get("service.name") == REDACTION_SERVICE
        ]
        return logs if len(logs) == len(records) else []

    logs = loki_standin.wait_for(
        arrived, timeout=30, message="the redaction cases at the Loki endpoint"
    )
    [keys] = [log for log in logs if log.body == "keys"]
    assert {key: keys.attributes.get(key) for key in REDACTION_KEYS} == {
        key: "****" if masked else plain for key, masked in REDACTION_KEYS.items()
    }
    assert keys.attributes["gen_ai.usage.input_tokens"] == 812  # still an int
    by_case = {log.attributes["case"]: log for log in logs if "case" in log.attributes}
    got = [(by_case[n].body, by_case[n].attributes["note"]) for n in range(len(REDACTION_VALUES))]
    want = [(want or value, want or value) for value, want in REDACTION_VALUES]
    assert got == want


def _wait_for_spans(stack: Stack, trace_id: str, count: int) -> dict[str, Any]:
    def complete() -> dict[str, Any] | None:
        trace = jaeger_trace(stack, trace_id)
        return trace if trace and len(trace["spans"]) >= count else None

    trace: dict[str, Any] = wait_until(
        f"trace {trace_id} with {count} spans in Jaeger", complete, timeout=60
    )
    return trace


def _span(trace: dict[str, Any], kind: str, **tags: Any) -> dict[str, Any]:
    [span] = [
        tags_of(span)
        for span in trace["spans"]
        if tags_of(span).get("span.kind") == kind
        and all(tags_of(span).get(k) == v for k, v in tags.items())
    ]
    return span


def test_leak_app_credentials_arrive_masked(
    stack: Stack, leak_app: LeakApp, loki_standin: OTLPReceiver
) -> None:
    """A kiki-otel service calls an API with credentials in the query string and records a DSN with
    a
    password and a Basic credential: Jaeger and the logs backend get them masked, the URLs otherwise
    intact (host, path, ordinary parameters)."""
    trace_id = leak_app.request("/leak")
    # server /leak, client GET .../echo, server /echo
    trace = _wait_for_spans(stack, trace_id, 3)
    client = _span(trace, "client")
    assert client["url.full"] == f"{leak_app.url}/echo?{_leaks.QUERY_MASKED}"
    assert _span(trace, "server", **{"http.route": "/echo"})["url.query"] == _leaks.QUERY_MASKED
    leak = _span(trace, "server", **{"http.route": "/leak"})
    assert leak["db.connection_string"] == _leaks.DSN_MASKED
    assert leak["enduser.credential"] == "****"

    def logged() -> list[Any]:
        logs = loki_standin.logs(trace_id=trace_id)
        bodies = [log.body for log in logs]
        return logs if "login" in bodies and any("HTTP Request" in str(b) for b in bodies) else []

    logs = loki_standin.wait_for(logged, timeout=30, message="the leak app's logs")
    [login] = [log for log in logs if log.body == "login"]
    assert (login.attributes["password"], login.attributes["api_token"]) == ("****", "****")
    assert login.attributes["dsn"] == _leaks.DSN_MASKED
    bodies = {str(log.body) for log in logs}
    assert (
        f'HTTP Request: GET {leak_app.url}/echo?{_leaks.QUERY_MASKED} "HTTP/1.1 200 OK"' in bodies
    )
    assert "auth header was ****" in bodies

    everything = json.dumps(trace) + repr(logs)
    everything += httpx.get(
        f"{stack.jaeger_url}/api/traces",
        params={"service": leak_app.name, "limit": 100, "lookback": "1h"},
        timeout=15,
    ).text
    assert [secret for secret in _leaks.SECRETS if secret in everything] == []


def test_leak_app_look_alikes_arrive_unchanged(
    stack: Stack, leak_app: LeakApp, loki_standin: OTLPReceiver
) -> None:
    """Token counts (ints), a tokenizer, gen_ai.token.type and "basic authentication" prose are not
    secrets: they arrive exactly as recorded, and nothing on the span was masked."""
    trace_id = leak_app.request("/overmatch")
    trace = _wait_for_spans(stack, trace_id, 1)
    span = _span(trace, "server", **{"http.route": "/overmatch"})
    assert span["gen_ai.usage.input_tokens"] == _leaks.INPUT_TOKENS
    assert span["gen_ai.usage.output_tokens"] == _leaks.OUTPUT_TOKENS
    assert span["gen_ai.token.type"] == "input"
    assert "redaction.masked.count" not in span

    def logged() -> list[Any]:
        logs = loki_standin.logs(trace_id=trace_id)
        return logs if {"llm.call", _leaks.PROSE} <= {log.body for log in logs} else []

    logs = loki_standin.wait_for(logged, timeout=30, message="the leak app's /overmatch logs")
    [call] = [log for log in logs if log.body == "llm.call"]
    assert {k: call.attributes[k] for k in ("input_tokens", "output_tokens", "tokenizer")} == {
        "input_tokens": _leaks.INPUT_TOKENS,
        "output_tokens": _leaks.OUTPUT_TOKENS,
        "tokenizer": _leaks.TOKENIZER,
    }
    assert not any(k.startswith("redaction.") for log in logs for k in log.attributes)


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


def _only(result: list[dict[str, Any]]) -> tuple[dict[str, str], float]:
    assert len(result) == 1, result
    return result[0]["metric"], float(result[0]["value"][1])


def test_health_dashboard_shows_the_worst_instance(stack: Stack, mixed: Mixed) -> None:
    """A service with one healthy and one degraded instance (whose `downstream` is unhealthy): the
    status panels show degraded and unhealthy, values their mappings know; the failures panel has
    one series per failure reason of `downstream` and no 0 line beside them."""
    board = _grafana.dashboard("health")
    variables = {"service": promql_regex_literal(mixed.name)}
    status, dependency, failures = (
        substitute(_grafana.panel(board, n)["targets"][0]["expr"], variables) for n in (1, 2, 4)
    )
    mapped = _grafana.state_values(_grafana.panel(board, 1))
    assert mapped == _grafana.state_values(_grafana.panel(board, 2))

    def instance_states() -> list[str] | None:
        series = stack.prom_query(f'kiki_health_status{{job="{mixed.name}"}} == 1')
        states = sorted(s["metric"]["state"] for s in series)
        # the failure counter needs two samples in the window before rate() has a value
        failing = stack.prom_query(
            f'rate(kiki_health_check_failures_total{{job="{mixed.name}"}}[{window}])'
        )
        return states if states == ["degraded", "healthy"] and failing else None

    window = _grafana.builtins()["$__rate_interval"]
    wait_until("one healthy and one degraded instance, with failures", instance_states, timeout=90)
    assert _only(stack.prom_query(status)) == ({"job": mixed.name}, mapped["degraded"])
    assert _only(stack.prom_query(dependency)) == (
        {"job": mixed.name, "dependency": "downstream"},
        mapped["unhealthy"],
    )
    series = [s["metric"] for s in stack.prom_query(failures)]
    assert series
    assert all(s["dependency"] == "downstream" and s.get("reason") for s in series), series


# A service that exports metrics at the default interval (60 s) and has a service.namespace: three
# exports, 60 s apart, pushed through the collector with timestamps in the past.
SPARSE = {"service.name": "e2e-sparse-api", "service.namespace": "e2e-shop"}
SPARSE_JOB = "e2e-shop/e2e-sparse-api"  # what Prometheus makes of namespace + name


def _sparse_metrics(time_ns: int, start_ns: int, n: int) -> dict[str, Any]:
    def point(attributes: dict[str, Any]) -> dict[str, Any]:
        return {
            "attributes": _otlp_attributes(attributes),
            "startTimeUnixNano": str(start_ns),
            "timeUnixNano": str(time_ns),
        }

    def histogram(name: str, attributes: dict[str, Any], count: int) -> dict[str, Any]:
        buckets = [count // 2, count // 4, count - count // 2 - count // 4, 0]
        return {
            "name": name,
            "unit": "s",
            "histogram": {
                "aggregationTemporality": 2,
                "dataPoints": [
                    {
                        **point(attributes),
                        "count": str(count),
                        "sum": count * 0.05,
                        "bucketCounts": [str(b) for b in buckets],
                        "explicitBounds": [0.05, 0.1, 0.2],
                    }
                ],
            },
        }

    route = {
        "http.request.method": "GET",
        "http.route": "/sparse/{id}",
        "http.response.status_code": 200,
        "url.scheme": "http",
    }
    failures = {
        "name": "kiki.health.check.failures",
        "sum": {
            "aggregationTemporality": 2,
            "isMonotonic": True,
            "dataPoints": [
                {**point({"dependency": "db", "reason": "timeout"}), "asInt": str(3 * n)}
            ],
        },
    }
    return {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": _otlp_attributes({**SPARSE, "service.instance.id": "sparse-1"})
                },
                "scopeMetrics": [
                    {
                        "scope": {"name": "e2e"},
                        "metrics": [
                            histogram("http.server.request.duration", route, 60 * n),
                            histogram("kiki.health.check.duration", {"dependency": "db"}, 6 * n),
                            failures,
                        ],
                    }
                ],
            }
        ]
    }


@pytest.fixture(scope="module")
def sparse(stack: Stack) -> str:
    """Push the sparse service's three exports (now - 150 s, - 90 s, - 30 s); return its job."""
    now = time.time_ns()
    start = now - 200 * 10**9
    for n, age_s in enumerate((150, 90, 30), start=1):
        payload = _sparse_metrics(now - age_s * 10**9, start, n)
        response = httpx.post(f"{stack.collector_otlp_http}/v1/metrics", json=payload, timeout=10)
        assert response.status_code == 200, response.text
        time.sleep(1.5)  # one collector batch (1 s) each, in order
    wait_until(
        "the sparse service's metrics in Prometheus",
        lambda: stack.prom_query(
            f'http_server_request_duration_seconds_count{{job="{SPARSE_JOB}"}}'
        ),
        timeout=30,
    )
    return SPARSE_JOB


def test_rate_panels_have_data_at_the_default_export_interval(stack: Stack, sparse: str) -> None:
    """Every dashboard query with $__rate_interval, as Grafana expands it with the datasource's
    timeInterval, returns data for a service that exports only every 60 s (the library default)."""
    variables = {"service": promql_regex_literal(sparse), "route": ".*"}
    # the data really is sparse: a 1m window (Grafana's at a 15 s scrape interval) holds one sample
    assert (
        stack.prom_query(
            f'sum(rate(http_server_request_duration_seconds_count{{job="{sparse}"}}[1m]))'
        )
        == []
    )
    queries = _grafana.rate_queries()
    assert len(queries) >= 10
    empty = [
        f"{board} / {title}: {expr}"
        for board, title, raw in queries
        if not stack.prom_query(expr := substitute(raw, variables))
    ]
    assert empty == []


def test_traces_to_metrics_link_finds_the_service(
    stack: Stack, demo: Demo, traffic: Traffic, sparse: str
) -> None:
    """The Jaeger datasource's trace -> metrics queries, with $__tags built from a span's resource
    as Grafana does, return data: for demo A (no namespace) and for a service with a namespace,
    whose job is "<namespace>/<name>" (so a filter on job would find nothing)."""
    jaeger = next(
        ds
        for ds in yaml.safe_load(_grafana.DATASOURCES.read_text())["datasources"]
        if ds["uid"] == "jaeger"
    )
    link = jaeger["jsonData"]["tracesToMetrics"]
    [sparse_series] = stack.prom_query(
        f'http_server_request_duration_seconds_count{{job="{sparse}"}}'
    )
    assert {k: sparse_series["metric"].get(k) for k in ("service_name", "service_namespace")} == {
        "service_name": SPARSE["service.name"],
        "service_namespace": SPARSE["service.namespace"],
    }

    def empty_links() -> list[str]:
        problems = []
        for resource in ({"service.name": demo.a_name}, SPARSE):
            tags = ", ".join(
                f'{tag["value"]}="{resource[tag["key"]]}"'
                for tag in link["tags"]
                if tag["key"] in resource
            )
            for query in link["queries"]:
                expr = query["query"].replace("$$", "$").replace("$__tags", tags)
                if not stack.prom_query(expr):
                    problems.append(f"{resource}: {query['name']}: {expr}")
        return problems

    deadline = time.monotonic() + DATA_TIMEOUT
    while (problems := empty_links()) and time.monotonic() < deadline:
        time.sleep(3)
    assert problems == []


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
