"""Static checks of the stack's files: configs validate with the real binaries, the compose file is
valid and consistent with .env and the repo, dashboards and datasources reference each other.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from . import _grafana
from ._stack import REPO

COLLECTOR_CONFIG = REPO / "collector-config" / "config.yaml"
COLLECTOR_DEBUG = REPO / "collector-config" / "debug.yaml"
MANIFEST = REPO / "collector-config" / "builder-config.yaml"
COMPOSE = REPO / "docker-compose.yml"
DASHBOARDS = sorted((REPO / "dashboards" / "json").glob("*.json"))
DATASOURCES = REPO / "dashboards" / "provisioning" / "datasources" / "datasources.yaml"
PROVIDER = REPO / "dashboards" / "provisioning" / "dashboards" / "kiki-otel.yaml"
RULE_FILES = sorted((REPO / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((REPO / "prometheus" / "rules" / "tests").glob("*.yml"))
MODERN_PANELS = {
    "timeseries",
    "stat",
    "gauge",
    "state-timeline",
    "table",
    "logs",
    "bargauge",
    "text",
    "row",
}
PUBLISHED_PORTS = {"3000", "4317", "4318", "8000", "9090", "16686"}  # UIs, OTLP and the demo API


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dot_env() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (REPO / ".env").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


# ----------------------------------------------------------------------------- versions


def test_env_has_no_keys_the_python_library_would_read() -> None:
    """.env is read by pydantic-settings too: it must not define OTEL_* or KIKI_OTEL_* keys."""
    offending = [key for key in dot_env() if key.startswith(("OTEL_", "KIKI_OTEL_"))]
    assert offending == []


def test_compose_images_are_pinned_through_env() -> None:
    """Every image tag is a ${VAR} that .env defines, never `latest` or a literal tag."""
    env = dot_env()
    for name, service in load_yaml(COMPOSE)["services"].items():
        if "image" not in service:
            assert "build" in service, name
            continue
        repo_tag = re.fullmatch(r"[\w./-]+:\$\{(\w+)\}", service["image"])
        assert repo_tag, f"{name}: image {service['image']!r} is not pinned via .env"
        assert repo_tag.group(1) in env, f"{name}: {repo_tag.group(1)} missing from .env"
    assert env["OTELCOL_VERSION"] and env["PROMETHEUS_VERSION"].startswith("v3.")


def test_manifest_modules_are_at_the_pinned_collector_release() -> None:
    """builder-config.yaml names only modules of the collector release pinned in .env."""
    env = dot_env()
    manifest = load_yaml(MANIFEST)
    allowed = {f"v{env['OTELCOL_VERSION']}", env["OTELCOL_STABLE_GO_VERSION"]}
    modules = [
        m["gomod"]
        for kind in (
            "receivers",
            "processors",
            "exporters",
            "connectors",
            "extensions",
            "providers",
        )
        for m in manifest.get(kind, [])
    ]
    assert modules
    assert {gomod.split()[1] for gomod in modules} <= allowed
    assert manifest["dist"]["version"] == env["OTELCOL_VERSION"]


def test_prometheus_go_version_matches_image_tag() -> None:
    """Prometheus v3.X.Y is Go module v0.3XX.Y: the two pins must name the same release."""
    env = dot_env()
    major, minor, patch = env["PROMETHEUS_VERSION"].removeprefix("v").split(".")
    assert env["PROMETHEUS_GO_VERSION"] == f"v0.{int(major) * 100 + int(minor)}.{patch}"


# ----------------------------------------------------------------------------- collector


def used_components(*configs: Path) -> set[tuple[str, str]]:
    """(kind, type) of every component configured in the given collector config files."""
    used: set[tuple[str, str]] = set()
    for path in configs:
        config = load_yaml(path)
        for kind in ("receivers", "processors", "exporters", "connectors", "extensions"):
            used |= {(kind, name.split("/")[0]) for name in config.get(kind) or {}}
    return used


def test_collector_config_validates(stack_bin: Path) -> None:
    """otelcol-kiki accepts config.yaml alone and with the debug overlay."""
    for extra in ([], [f"--config={COLLECTOR_DEBUG}"]):
        result = run(
            [str(stack_bin / "otelcol-kiki"), "validate", f"--config={COLLECTOR_CONFIG}", *extra]
        )
        assert result.returncode == 0, result.stderr


def test_collector_build_has_exactly_the_components_the_configs_use(stack_bin: Path) -> None:
    """The manifest is the single list of components: nothing missing, nothing unused."""
    result = run([str(stack_bin / "otelcol-kiki"), "components"])
    assert result.returncode == 0, result.stderr
    built = yaml.safe_load(result.stdout)
    provided = {
        (kind, c["name"])
        for kind in ("receivers", "processors", "exporters", "connectors", "extensions")
        for c in built.get(kind) or []
    }
    assert provided == used_components(COLLECTOR_CONFIG, COLLECTOR_DEBUG)


def test_debug_overlay_keeps_every_exporter_of_the_base_config() -> None:
    """Overlays replace lists: each debug pipeline must list the base exporters plus `debug`."""
    base = load_yaml(COLLECTOR_CONFIG)["service"]["pipelines"]
    overlay = load_yaml(COLLECTOR_DEBUG)["service"]["pipelines"]
    assert set(overlay) == set(base)
    for name, pipeline in base.items():
        assert overlay[name]["exporters"] == [*pipeline["exporters"], "debug"], name


def test_memory_limiter_comes_first_and_redaction_before_any_exporter() -> None:
    """Every pipeline starts with memory_limiter, then redaction, before anything leaves."""
    for name, pipeline in load_yaml(COLLECTOR_CONFIG)["service"]["pipelines"].items():
        assert pipeline["processors"][:2] == ["memory_limiter", "redaction"], name


def test_redaction_never_reports_attribute_names_or_values() -> None:
    """summary `debug` would list masked keys on every span: only counts (`info`) or nothing."""
    assert load_yaml(COLLECTOR_CONFIG)["processors"]["redaction"]["summary"] in {"info", "silent"}


def test_jaeger_config_validates(stack_bin: Path) -> None:
    """The Jaeger v2 binary of the pinned release accepts jaeger/config.yaml."""
    result = run(
        [str(stack_bin / "jaeger"), "validate", f"--config={REPO / 'jaeger' / 'config.yaml'}"]
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- prometheus


def test_promtool_check_config(stack_bin: Path) -> None:
    """prometheus.yml and the rule files it loads are valid for this Prometheus release."""
    result = run([str(stack_bin / "promtool"), "check", "config", "prometheus/prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules(stack_bin: Path) -> None:
    """Every rule file parses and every expression is valid PromQL."""
    result = run([str(stack_bin / "promtool"), "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(stack_bin: Path) -> None:
    """The alert unit tests (burn rates, dependency down) pass."""
    assert RULE_TESTS
    result = run([str(stack_bin / "promtool"), "test", "rules", *map(str, RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_has_unit_tests() -> None:
    """Each rules/*.yml is loaded by at least one promtool test file."""
    tested = {
        (path.parent / f).resolve() for path in RULE_TESTS for f in load_yaml(path)["rule_files"]
    }
    assert set(RULE_FILES) <= tested


def test_every_alert_has_severity_and_summary() -> None:
    """Alerts carry what routing and humans need."""
    alerts = [
        rule
        for path in RULE_FILES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert alerts
    for rule in alerts:
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


# ----------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_spec_schema() -> None:
    """docker-compose.yml validates against the Compose Specification JSON schema."""
    schema = json.loads((Path(__file__).parent / "schemas" / "compose-spec.json").read_text())
    errors = [
        f"{list(e.path)}: {e.message}"
        for e in jsonschema.Draft201909Validator(schema).iter_errors(load_yaml(COMPOSE))
    ]
    assert errors == []


def python_modules(command: list[str]) -> list[str]:
    """Modules a demo container's command runs: `uvicorn pkg.mod:app` or `python -m pkg.mod`."""
    if command[0] == "uvicorn":
        return [command[1].split(":")[0]]
    if command[:2] == ["python", "-m"]:
        return [command[2]]
    return []


def test_compose_mounts_and_build_files_exist() -> None:
    """Every bind-mounted path and every Dockerfile that compose names is in the repo."""
    compose = load_yaml(COMPOSE)
    missing = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./") and not (REPO / source).exists():
                missing.append(f"{name}: {source}")
        if "build" in service:
            build = service["build"]
            if not (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).exists():
                missing.append(f"{name}: {build.get('dockerfile')}")
            missing += [
                f"{name}: {module}"
                for module in python_modules(service["command"])
                if not (REPO / (module.replace(".", "/") + ".py")).exists()
            ]
    assert missing == []


def test_compose_publishes_only_ui_and_otlp_ports() -> None:
    """Backends talk on the compose network; only UIs, OTLP and the demo API reach the host."""
    for name, service in load_yaml(COMPOSE)["services"].items():
        for port in service.get("ports", []):
            assert str(port).split(":")[0] in PUBLISHED_PORTS, f"{name}: {port}"


def test_compose_services_have_memory_limits_and_known_dependencies() -> None:
    """Each service has a memory limit; it waits for `service_healthy` only of checked ones."""
    services = load_yaml(COMPOSE)["services"]
    for name, service in services.items():
        assert service["deploy"]["resources"]["limits"]["memory"], name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} -> {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} -> {dependency}"


def test_compose_mounts_the_files_the_grafana_provider_reads() -> None:
    """The dashboard provider's path is where compose mounts dashboards/json."""
    provider_path = load_yaml(PROVIDER)["providers"][0]["options"]["path"]
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    assert f"./dashboards/json:{provider_path}:ro" in grafana["volumes"]


def test_compose_passes_the_debug_overlays_variables_to_the_collector() -> None:
    """`DEBUG_VERBOSITY=detailed docker compose up` (docs/stack.md) only works if compose hands the
    variable to the container: every ${env:VAR:-default} of debug.yaml is in the collector's
    environment, as ${VAR:-default} with the overlay's own default."""
    overlay_vars = dict(re.findall(r"\$\{env:(\w+):-([^}]*)\}", COLLECTOR_DEBUG.read_text()))
    assert overlay_vars
    environment = load_yaml(COMPOSE)["services"]["collector"].get("environment") or {}
    assert isinstance(environment, dict)
    for name, default in overlay_vars.items():
        assert environment.get(name) == f"${{{name}:-{default}}}", name


# ----------------------------------------------------------------------------- grafana


def datasource_uids_in(node: Any) -> set[str]:
    """Every datasource uid referenced anywhere in a dashboard or datasource definition."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict) and "uid" in value:
                found.add(value["uid"])
            elif key == "datasourceUid":
                found.add(value)
            else:
                found |= datasource_uids_in(value)
    elif isinstance(node, list):
        for item in node:
            found |= datasource_uids_in(item)
    return found


def test_datasources_have_fixed_unique_uids_and_link_to_each_other() -> None:
    """prometheus, jaeger, loki have fixed uids; every cross-link names one of them."""
    datasources = load_yaml(DATASOURCES)["datasources"]
    uids = [ds["uid"] for ds in datasources]
    assert sorted(uids) == ["jaeger", "loki", "prometheus"]
    assert datasource_uids_in([ds.get("jsonData", {}) for ds in datasources]) == {
        "jaeger",
        "loki",
        "prometheus",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_references_only_provisioned_datasources(path: Path) -> None:
    """Every panel, target and variable of the dashboard uses a provisioned datasource uid."""
    provisioned = {ds["uid"] for ds in load_yaml(DATASOURCES)["datasources"]}
    used = datasource_uids_in(json.loads(path.read_text()))
    assert used
    assert used <= provisioned


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_uses_modern_panels_with_queries(path: Path) -> None:
    """Panels are current types, ids are unique, and every panel has a query."""
    dashboard = json.loads(path.read_text())
    panels = dashboard["panels"]
    assert {p["type"] for p in panels} <= MODERN_PANELS
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_dashboard_uids_are_unique() -> None:
    """Four dashboards with distinct uids (the links and Grafana's provisioning rely on it)."""
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(uids) == 4
    assert len(set(uids)) == len(uids)


def loki_targets() -> list[tuple[str, str, dict[str, str]]]:
    """(dashboard uid, expr, {variable: allValue}) of every Loki query."""
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        all_values = {v["name"]: v.get("allValue") or "" for v in dashboard["templating"]["list"]}
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["uid"] == "loki":
                    found.append((dashboard["uid"], target["expr"], all_values))
    return found


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda match: variables[match.group(1)], text)


def test_loki_queries_select_streams_by_otlp_index_labels() -> None:
    """Loki's OTLP ingestion indexes service_name; each Loki query selects on it, and with the
    variables at All the selector still has a matcher that cannot match "" (Loki rejects that)."""
    targets = loki_targets()
    assert targets
    for uid, expr, all_values in targets:
        selector = re.search(r"\{([^}]*)\}", expr)
        assert selector, (uid, expr)
        matchers = re.findall(r'(\w+)\s*(=~|=|!=|!~)\s*"([^"]*)"', selector.group(1))
        assert {label for label, _, _ in matchers} <= {"service_name", "service_namespace"}, expr
        values = [expand(v, all_values) for _, _, v in matchers]
        assert any(re.fullmatch(v, "") is None for v in values), f"{uid}: {expr} matches empty"


def test_prometheus_datasource_interval_fits_the_default_metric_export_interval() -> None:
    """Pushed series get one sample per export (60 s by default). Grafana must know (timeInterval),
    or
    $__rate_interval is 1m, never holds two samples, and every rate panel is empty."""
    assert _grafana.scrape_interval_s() >= _grafana.OTEL_DEFAULT_EXPORT_INTERVAL_S
    rate_window = _grafana.duration_s(_grafana.builtins()["$__rate_interval"])
    assert rate_window >= 2 * _grafana.OTEL_DEFAULT_EXPORT_INTERVAL_S


def test_traces_to_metrics_filters_on_labels_that_exist_with_a_namespace() -> None:
    """Prometheus makes `job` "<namespace>/<name>" when service.namespace is set, so the trace ->
    metrics
    link must filter on the promoted service_name (and service_namespace) labels, never on job."""
    jaeger = next(ds for ds in load_yaml(DATASOURCES)["datasources"] if ds["uid"] == "jaeger")
    tags = {t["key"]: t["value"] for t in jaeger["jsonData"]["tracesToMetrics"]["tags"]}
    assert tags["service.name"] == "service_name"
    assert "job" not in tags.values()
    promoted = load_yaml(REPO / "prometheus" / "prometheus.yml")["otlp"][
        "promote_resource_attributes"
    ]
    assert set(tags) <= set(promoted)


def test_traces_to_logs_finds_records_by_their_trace_id_metadata() -> None:
    """Loki's OTLP ingestion keeps a record's trace id as structured metadata `trace_id` and
    its body (kiki-otel's: the event name) as the line. Grafana's built-in trace filter
    searches the line's text (`|= "<id>"`) and would find nothing: the link must be a custom
    query filtering the metadata, within the span's service stream."""
    jaeger = next(ds for ds in load_yaml(DATASOURCES)["datasources"] if ds["uid"] == "jaeger")
    logs = jaeger["jsonData"]["tracesToLogsV2"]
    assert logs["datasourceUid"] == "loki" and logs["customQuery"] is True
    assert not logs["filterByTraceID"]  # (ignored with a custom query; false says so)
    # Grafana expands $VAR in provisioning files, $$ is a literal $
    query = logs["query"].replace("$$", "$")
    assert query == '{${__tags}} | trace_id="${__trace.traceId}"'
    assert {t["key"]: t["value"] for t in logs["tags"]} == {"service.name": "service_name"}


# One job per case: the health state of each of its instances, and the state the dashboard must show
# for the job (the worst). The old `max(healthy)*2 + max(degraded)` showed 3 (unmapped), 2 (healthy)
# and 1.
HEALTH_CASES: dict[str, tuple[tuple[str, ...], str]] = {
    "all-healthy": (("healthy", "healthy"), "healthy"),
    "one-degraded": (("healthy", "degraded"), "degraded"),
    "one-unhealthy": (("healthy", "unhealthy"), "unhealthy"),
    "degraded-and-unhealthy": (("degraded", "unhealthy"), "unhealthy"),
    "only-degraded": (("degraded",), "degraded"),
}
HEALTH_STATES = ("healthy", "degraded", "unhealthy")


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


def _health_dashboard_unit_tests() -> dict[str, Any]:
    """promtool unit tests that evaluate the health dashboard's panels 1, 2 and 4 (as Grafana sends
    them)
    on series of services with two instances in different states."""
    board = _grafana.dashboard("health")
    variables = {"service": ".*"}
    series = []
    for job, (states, _) in HEALTH_CASES.items():
        for n, state in enumerate(states):
            for candidate in HEALTH_STATES:
                value = "1x10" if candidate == state else "0x10"
                base = {"job": job, "instance": f"{job}-{n}", "state": candidate}
                series.append(_series("kiki_health_status", base, value))
                per_dependency = {**base, "dependency": "db", "critical": "true"}
                series.append(_series("kiki_health_dependency_status", per_dependency, value))
    # check failures: `db` failed (timeout) on one of two instances, `cache` never failed
    for n in (0, 1):
        for dependency in ("db", "cache"):
            labels = {"job": "checks", "instance": f"checks-{n}", "dependency": dependency}
            series.append(_series("kiki_health_check_duration_seconds_count", labels, "0+6x10"))
    failing = {"job": "checks", "instance": "checks-1", "dependency": "db", "reason": "timeout"}
    series.append(_series("kiki_health_check_failures_total", failing, "0+6x10"))

    tests = []
    for panel_id, extra in ((1, {}), (2, {"dependency": "db"})):
        status = _grafana.panel(board, panel_id)
        mapped = _grafana.state_values(status)
        assert set(mapped) == set(HEALTH_STATES), f"panel {panel_id} mappings: {mapped}"
        tests.append(
            {
                "expr": _grafana.substitute(status["targets"][0]["expr"], variables),
                "eval_time": "5m",
                "exp_samples": [
                    {
                        "labels": "{"
                        + ",".join(f'{k}="{v}"' for k, v in {"job": job, **extra}.items())
                        + "}",
                        "value": mapped[worst],
                    }
                    for job, (_, worst) in HEALTH_CASES.items()
                ],
            }
        )
    failures = _grafana.substitute(_grafana.panel(board, 4)["targets"][0]["expr"], variables)
    tests.append(
        {
            # ceil: 1 for a failing dependency (rate > 0), 0 for the fallback line; one series each
            "expr": f"ceil({failures})",
            "eval_time": "8m",
            "exp_samples": [
                {"labels": '{job="checks",dependency="db",reason="timeout"}', "value": 1},
                {"labels": '{job="checks",dependency="cache"}', "value": 0},
            ],
        }
    )
    return {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }


def test_health_dashboard_shows_the_worst_instance_and_one_series_per_failure(
    stack_bin: Path, tmp_path: Path
) -> None:
    """Service and dependency status show the worst state of a service's instances, always as a
    mapped
    value; a failing dependency has one failures series per reason, not also a 0 line beside it."""
    path = tmp_path / "health_dashboard_test.yml"
    path.write_text(yaml.safe_dump(_health_dashboard_unit_tests(), sort_keys=False))
    result = run([str(stack_bin / "promtool"), "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
