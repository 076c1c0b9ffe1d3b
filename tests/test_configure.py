"""configure(): the public surface, idempotence, joining other SDK setups, SDK-disabled mode,
the resource, and coexistence with other server instrumentations."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

import kiki_otel
from kiki_otel import ConfigurationError
from tests.conftest import HeaderSink, Memory


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]


def test_public_api_is_pinned() -> None:
    """The public surface only grows on purpose."""
    assert sorted(kiki_otel.__all__) == [
        "CheckFailed",
        "ConfigurationError",
        "HealthRegistry",
        "HealthStatus",
        "ServiceSettings",
        "Settings",
        "ShutdownReport",
        "Telemetry",
        "configure",
        "get_logger",
        "get_request_id",
    ]


def test_configure_without_app_sets_global_providers() -> None:
    """Scripts and workers: providers are global, the handle is ready, ids work in spans."""
    telemetry = kiki_otel.configure(service_name="worker", metrics_exporter="none")
    assert trace.get_tracer_provider() is telemetry.providers.tracer_provider
    assert isinstance(telemetry.providers.tracer_provider, TracerProvider)
    assert telemetry.lifecycle.ready
    with telemetry.tracer("job").start_as_current_span("step") as span:
        assert kiki_otel.get_request_id() == format(span.get_span_context().trace_id, "032x")
    assert kiki_otel.get_request_id() is None


def test_second_configure_returns_same_handle_and_reports_ignored_changes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """configure() twice: same handle; the changed settings are named (not their values,
    which may be secrets) as not applied."""
    first = kiki_otel.configure(service_name="one", metrics_exporter="none")
    second = kiki_otel.configure(
        service_name="two",
        metrics_exporter="none",
        exporter_otlp_headers="authorization=Bearer s3cret",
        health={"cache_ttl": 9.0},
    )
    assert first is second and second.settings.service_name == "one"
    lines = json_lines(capsys)
    (ignored,) = [l for l in lines if l["event"] == "kiki_otel.reconfigure_ignored"]
    assert ignored["settings"] == ["service_name", "exporter_otlp_headers", "health.cache_ttl"]
    assert "s3cret" not in json.dumps(lines)


def test_joins_an_existing_sdk_setup(memory: Memory, capsys: pytest.CaptureFixture[str]) -> None:
    """Providers set by someone else are used as they are, and a log line says so."""
    telemetry = kiki_otel.configure()
    assert telemetry.providers.owned == []
    assert sorted(telemetry.providers.joined) == ["logs", "metrics", "traces"]
    joined = [l for l in json_lines(capsys) if l["event"] == "kiki_otel.joined_existing_providers"]
    assert joined and joined[0]["signals"] == ["traces", "metrics", "logs"]


def test_resource_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    """service.*, deployment.environment.name, a unique instance id, process/host attributes,
    merged with OTEL_RESOURCE_ATTRIBUTES (settings win); no command line (may hold secrets)."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=growth,service.name=from-attrs")
    telemetry = kiki_otel.configure(
        service_version="1.2.3",
        service_namespace="kiki",
        environment="staging",
        metrics_exporter="none",
    )
    attrs = dict(telemetry.resource.attributes)
    assert attrs["service.name"] == "from-attrs"  # no explicit name: the attribute is used
    assert attrs["team"] == "growth"
    assert attrs["service.version"] == "1.2.3" and attrs["service.namespace"] == "kiki"
    assert attrs["deployment.environment.name"] == "staging"
    assert len(str(attrs["service.instance.id"])) == 36
    assert {"process.pid", "host.name", "process.runtime.version"} <= set(attrs)
    assert "process.command_line" not in attrs and "process.command_args" not in attrs


def test_an_explicit_instance_id_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """``service.instance.id`` set in OTEL_RESOURCE_ATTRIBUTES (a pod name, say) is the
    process's id; it used to be replaced by a random UUID (forked workers still get theirs)."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=checkout-7d9f-x2")
    telemetry = kiki_otel.configure(metrics_exporter="none")
    assert telemetry.resource.attributes["service.instance.id"] == "checkout-7d9f-x2"


def _instance_in_a_child(queue: Any) -> None:  # (a spawned child: module level, picklable)
    telemetry = kiki_otel.configure(metrics_exporter="none", traces_exporter="none")
    queue.put((os.getpid(), telemetry.resource.attributes["service.instance.id"]))
    telemetry.shutdown()


def test_an_explicit_instance_id_is_made_each_workers_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a process started by another through multiprocessing (``uvicorn --workers``) an
    explicit id is ``<id>-<pid>``: workers sharing it would mix their metrics' series."""
    import multiprocessing

    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=checkout-7d9f-x2")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    child = spawn.Process(target=_instance_in_a_child, args=(queue,))
    child.start()
    pid, instance = queue.get(timeout=60)
    child.join(60)
    assert (child.exitcode, instance) == (0, f"checkout-7d9f-x2-{pid}")


def test_sdk_disabled_still_logs_and_gives_request_ids(capsys: pytest.CaptureFixture[str]) -> None:
    """OTEL_SDK_DISABLED=true: no-op providers, but JSON logs and X-Request-ID keep working."""
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str | None]:
        kiki_otel.get_logger().info("hit")
        return {"id": kiki_otel.get_request_id()}

    telemetry = kiki_otel.configure(app, sdk_disabled=True)
    assert not isinstance(telemetry.providers.tracer_provider, TracerProvider)
    import asyncio

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/")

    response = asyncio.run(call())
    assert len(response.headers["x-request-id"]) == 32
    hit = [l for l in json_lines(capsys) if l["event"] == "hit"]
    assert hit and hit[0]["request_id"] == response.headers["x-request-id"]


def test_bad_setting_fails_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value fails configure() itself, before anything is installed."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "lots")
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_SAMPLER_ARG"):
        kiki_otel.configure()


async def test_contrib_fastapi_instrumentation_is_replaced(memory: Memory) -> None:
    """An app already instrumented by opentelemetry-instrumentation-fastapi still produces
    exactly one server span: ours."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app = FastAPI()

    @app.get("/x")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    FastAPIInstrumentor.instrument_app(app)
    kiki_otel.configure(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/x")
    spans = memory.spans()
    assert [s.kind for s in spans] == [SpanKind.SERVER], [s.name for s in spans]
    assert spans[0].instrumentation_scope.name == "kiki_otel.http.server"
    assert response.headers["x-request-id"] == format(spans[0].context.trace_id, "032x")


def test_plain_asgi_app_is_refused_with_a_hint() -> None:
    """configure(app) on a non-Starlette ASGI callable says to use telemetry.wrap(app)."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(TypeError, match=r"wrap\(app\)"):
        kiki_otel.configure(asgi, metrics_exporter="none")


async def test_wrap_instruments_any_asgi_app(memory: Memory) -> None:
    """telemetry.wrap(app) gives a bare ASGI app the server span, ids and health endpoints."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    wrapped = kiki_otel.configure(metrics_exporter="none").wrap(asgi)
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/anything")
        live = await client.get("/health/live")
    (span,) = memory.spans()
    assert response.text == "hi"
    assert response.headers["x-request-id"] == format(span.context.trace_id, "032x")
    assert live.status_code == 200
    # what uvicorn checks of the app it is given (its inner layers need not be coroutines)
    import uvicorn

    config = uvicorn.Config(wrapped, interface="auto", log_config=None)
    config.load()
    assert config.interface == "asgi3"


async def test_background_health_starts_with_the_lifespan(memory: Memory) -> None:
    """With health.background_interval set, checks run from lifespan startup on, before any
    probe, so the health metrics move on their own."""
    import asyncio

    calls: list[int] = []
    app = FastAPI()
    telemetry = kiki_otel.configure(app, health={"background_interval": 0.05})
    telemetry.health.add_check("counted", lambda: calls.append(1))
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            await asyncio.sleep(0.3)
            await queue.put({"type": "lifespan.shutdown"})

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, queue.get, send)
    assert len(calls) >= 2


def test_resource_property_follows_the_provider() -> None:
    """telemetry.resource is the resource the providers export with (refreshed after fork)."""
    telemetry = kiki_otel.configure(metrics_exporter="none")
    assert telemetry.resource is telemetry.providers.tracer_provider.resource  # type: ignore[attr-defined]


def test_endpoint_credentials_never_reach_the_logs(capsys: pytest.CaptureFixture[str]) -> None:
    """An endpoint URL with user:password is logged with the credentials masked."""
    kiki_otel.configure(
        exporter_otlp_endpoint="https://tenant:s3cr3t@otlp.example.invalid", metrics_exporter="none"
    )
    out = capsys.readouterr().out
    assert "s3cr3t" not in out and "tenant" not in out
    assert "https://***@otlp.example.invalid" in out


async def test_request_id_header_propagates_when_enabled(
    memory: Memory, header_sink: HeaderSink
) -> None:
    """KIKI_OTEL_HTTP__PROPAGATE_REQUEST_ID: outgoing httpx calls also carry X-Request-ID;
    a call the app gave its own (a caller's legacy id it forwards) keeps it."""
    app = FastAPI()

    @app.get("/call")
    async def call() -> dict[str, str]:
        async with httpx.AsyncClient() as out:
            await out.get(header_sink.url, headers={"X-Request-ID": "my-own-id"})
            await out.get(header_sink.url)
        return {}

    kiki_otel.configure(app, metrics_exporter="none", http={"propagate_request_id": True})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/call")
    assert [r.get("x-request-id") for r in header_sink.requests] == [
        "my-own-id",
        response.headers["x-request-id"],
    ]


async def test_outgoing_url_secrets_stay_out_of_logs_and_spans(
    memory: Memory, header_sink: HeaderSink, capsys: pytest.CaptureFixture[str]
) -> None:
    """httpx logs each call's URL at INFO and contrib's client span keeps the query in
    ``url.full``: credentials and sensitive query values (the server span's list) are
    replaced in both; a health check's calls log no line at all."""
    app = FastAPI()
    secret_url = header_sink.url.replace("http://", "http://admin:hunter2@")
    secret_url += "?token=sekrit&X-Amz-Signature=abcsig&page=2"

    @app.get("/call")
    async def call() -> dict[str, str]:
        async with httpx.AsyncClient() as out:
            await out.get(secret_url)
        return {}

    telemetry = kiki_otel.configure(app, metrics_exporter="none")
    telemetry.health.add_http("peer", secret_url)
    capsys.readouterr()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/call")).status_code == 200
        assert (await client.get("/health")).json()["status"] == "healthy"
    assert len(header_sink.requests) == 2  # the call and the check's
    out = capsys.readouterr().out
    assert not any(word in out for word in ("hunter2", "sekrit", "abcsig"))
    # (the test's own client logs its calls to http://t too)
    (line,) = [json.loads(l) for l in out.splitlines() if '"logger":"httpx"' in l and "127" in l]
    assert "token=REDACTED&X-Amz-Signature=REDACTED&page=2" in line["event"]
    assert "REDACTED:REDACTED@127.0.0.1" in line["event"]
    (client_span,) = [s for s in memory.spans() if s.kind is SpanKind.CLIENT]
    full = str((client_span.attributes or {})["url.full"])
    assert "token=REDACTED&X-Amz-Signature=REDACTED&page=2" in full and "hunter2" not in full


@pytest.mark.parametrize(
    ("variable", "value", "protocol"),
    [
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318/v1/traces", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:99999/v1/traces", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://[::1/v1/logs", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://:4318/v1/traces", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:0", "grpc"),
        # metrics always use the official exporter: these used to fail every export instead
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector:4318/v1/metrics", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://collector:99999/v1/metrics", "grpc"),
    ],
)
def test_bad_per_signal_endpoint_fails_configure(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, protocol: str
) -> None:
    """A per-signal endpoint gets the checks of OTEL_EXPORTER_OTLP_ENDPOINT, at configure()
    time and naming the variable, instead of a bare ValueError or failing every export."""
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    with pytest.raises(ConfigurationError, match=variable):
        kiki_otel.configure()
    assert kiki_otel._configure.current() is None  # nothing half-built to join later


def test_bad_per_signal_endpoint_error_hides_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refused URL is shown with its user:password@ masked."""
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "https://tenant:s3cr3t@otlp.example:99999/v1/logs"
    )
    with pytest.raises(ConfigurationError) as info:
        kiki_otel.configure(metrics_exporter="none")
    message = str(info.value)
    assert "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" in message
    assert "s3cr3t" not in message and "tenant" not in message
    assert "https://***@otlp.example:99999/v1/logs" in message


def test_usable_or_blank_per_signal_endpoints_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Valid per-signal URLs are used as given; a blank one means unset (as for the base
    variable); the variable of a signal that is not exported over OTLP is not checked."""
    from kiki_otel._exporters import log_exporter, span_exporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", " http://127.0.0.1:9/custom/t ")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "   ")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector:4318")
    telemetry = kiki_otel.configure(
        exporter_otlp_endpoint="http://127.0.0.1:9",
        metrics_exporter="none",
        # the refused export of its own startup line ends within the test, not in a later
        # one's output (an abandoned flush otherwise retries for the default 10 s)
        exporter_otlp_timeout=100,
    )
    settings = telemetry.settings
    assert span_exporter(settings)._client.url == "http://127.0.0.1:9/custom/t"  # type: ignore[attr-defined]
    assert log_exporter(settings)._client.url == "http://127.0.0.1:9/v1/logs"  # type: ignore[attr-defined]


def test_unknown_keyword_overrides_are_refused() -> None:
    """A misspelt keyword used to be dropped silently (settings ignore unknown environment
    variables, and that applied to keywords too): it now fails, naming the key and the
    closest valid name, top-level or inside a group."""
    with pytest.raises(ConfigurationError, match=r"'servce_name'.*'service_name'"):
        kiki_otel.configure(servce_name="billing")
    with pytest.raises(
        ConfigurationError, match=r"'http\.propagate_requst_id'.*'http\.propagate_request_id'"
    ):
        kiki_otel.configure(http={"propagate_requst_id": True})
    with pytest.raises(ConfigurationError, match="'no_such_thing'"):
        kiki_otel.configure(settings=kiki_otel.Settings(), no_such_thing=1)
    assert kiki_otel._configure.current() is None


def test_known_keywords_aliases_and_unknown_env_vars_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Field names (any case at the top level, as pydantic-settings takes them), standard
    variable names as keywords and group models keep working; unknown environment
    variables are still ignored."""
    monkeypatch.setenv("KIKI_OTEL_SERVCE_NAME", "ignored")
    telemetry = kiki_otel.configure(
        OTEL_SERVICE_NAME="billing",
        Metrics_Exporter="none",
        http={"propagate_request_id": True},
        health=kiki_otel._settings.HealthSettings(timeout=0.2),
    )
    assert telemetry.settings.service_name == "billing"
    assert telemetry.settings.metrics_exporter == "none"
    assert telemetry.settings.http.propagate_request_id
    assert telemetry.settings.health.timeout == 0.2


def test_a_group_keyword_changes_only_its_fields_of_given_settings() -> None:
    """``configure(settings=s, http={...})`` changes those fields of ``s.http`` and keeps
    the rest of the group as ``s`` had it (it used to replace the whole group)."""
    from kiki_otel import Settings

    settings = Settings(http={"access_log": False, "traceresponse": False})
    telemetry = kiki_otel.configure(settings=settings, http={"server_timing": True})
    http = telemetry.settings.http
    assert (http.access_log, http.traceresponse, http.server_timing) == (False, False, True)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_SERVICE_NAME": ""}, "unknown_service"),
        ({"OTEL_SERVICE_NAME": "   "}, "unknown_service"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name="}, "unknown_service"),
        ({"OTEL_SERVICE_NAME": " billing "}, "billing"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs"}, "from-attrs"),
    ],
)
def test_a_blank_service_name_is_the_documented_default(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """A blank name (an empty variable in a deployment template) is ``unknown_service``, as
    documented, not the SDK's ``unknown_service:python``; names are trimmed."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    telemetry = kiki_otel.configure(metrics_exporter="none")
    assert telemetry.resource.attributes["service.name"] == expected


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """configure() copies ``.env``'s SDK variables into ``os.environ`` and may replace the
    global propagator: both are put back after the test."""
    from opentelemetry import propagate

    from kiki_otel import _errors

    saved, textmap = dict(os.environ), propagate.get_global_textmap()
    monkeypatch.setattr(_errors, "_imported", getattr(_errors, "_imported", None), raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)
    propagate.set_global_textmap(textmap)


@pytest.mark.usefixtures("sdk_env")
def test_sdk_variables_in_dotenv_apply_without_overriding_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """README: keyword > environment > ``.env`` > default, for every variable it lists. The
    ones the SDK reads itself (per-signal endpoints, OTEL_BSP_*...) were silently ignored in
    ``.env`` while OTEL_EXPORTER_OTLP_ENDPOINT there applied: spans went elsewhere."""
    from kiki_otel._exporters import log_exporter, span_exporter

    (tmp_path / ".env").write_text(
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:9\n"
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:9/from-dotenv/t\n"
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=http://127.0.0.1:9/from-dotenv/l\n"
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=100\n"
        "OTEL_BLRP_SCHEDULE_DELAY=\n"
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://127.0.0.1:9/from-env/l")
    telemetry = kiki_otel.configure(metrics_exporter="none", exporter_otlp_timeout=100)
    settings = telemetry.settings
    assert span_exporter(settings)._client.url == "http://127.0.0.1:9/from-dotenv/t"  # type: ignore[attr-defined]
    assert log_exporter(settings)._client.url == "http://127.0.0.1:9/from-env/l"  # type: ignore[attr-defined]
    assert os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] == "100"  # the SDK's processor reads it
    assert "OTEL_BLRP_SCHEDULE_DELAY" not in os.environ  # blank: unset
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in os.environ  # kiki's setting, read by kiki


@pytest.mark.usefixtures("sdk_env")
def test_a_bad_sdk_variable_in_dotenv_fails_configure(tmp_path: Path) -> None:
    """The startup check of the SDK's variables saw only the environment, not ``.env``."""
    (tmp_path / ".env").write_text("OTEL_BSP_MAX_QUEUE_SIZE=abc\n")
    with pytest.raises(ConfigurationError, match="OTEL_BSP_MAX_QUEUE_SIZE: must be a positive"):
        kiki_otel.configure(metrics_exporter="none")


@pytest.mark.usefixtures("sdk_env")
def test_otel_propagators_in_dotenv_apply_at_configure(tmp_path: Path) -> None:
    """The SDK reads OTEL_PROPAGATORS when imported, before ``.env`` is: configure() applies
    the ``.env`` value then (an unknown name is refused, naming the variable)."""
    from opentelemetry import propagate

    (tmp_path / ".env").write_text("OTEL_PROPAGATORS=baggage\n")
    telemetry = kiki_otel.configure(metrics_exporter="none")
    carrier: dict[str, str] = {}
    with telemetry.tracer("t").start_as_current_span("s"):
        propagate.inject(carrier)
    assert "traceparent" not in carrier


@pytest.mark.usefixtures("sdk_env")
def test_a_bad_or_overridden_otel_propagators_in_dotenv(tmp_path: Path) -> None:
    """An unknown propagator in ``.env`` fails configure() as it fails the import from the
    environment; a propagator the app installed itself wins, as it does over the environment."""
    from opentelemetry import propagate
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    (tmp_path / ".env").write_text("OTEL_PROPAGATORS=b3\n")
    with pytest.raises(ConfigurationError, match="invalid OTEL_PROPAGATORS: Propagator b3"):
        kiki_otel.configure(metrics_exporter="none")
    (tmp_path / ".env").write_text("OTEL_PROPAGATORS=tracecontext\n")
    own = W3CBaggagePropagator()
    propagate.set_global_textmap(own)
    kiki_otel.configure(metrics_exporter="none")
    assert propagate.get_global_textmap() is own


def test_a_trailing_comma_in_resource_attributes_is_taken_quietly() -> None:
    """``OTEL_RESOURCE_ATTRIBUTES=a=1,``: kiki takes it; the SDK's parse of the same
    variable in ``Resource.create`` warned of the empty pair after it."""
    import subprocess
    import sys

    env = {**os.environ, "OTEL_RESOURCE_ATTRIBUTES": "a=1,"}
    code = (
        "import kiki_otel; t = kiki_otel.configure(metrics_exporter='none', "
        "traces_exporter='none', logs_exporter='none'); print('a=' + t.resource.attributes['a'])"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "a=1" in done.stdout
    assert "Invalid key value resource attribute pair" not in done.stdout + done.stderr


def test_a_bad_resource_attributes_value_is_reported_once() -> None:
    """``OTEL_RESOURCE_ATTRIBUTES=foo``: the SDK's own warning came three times (throwaway
    resources built while kiki is imported) before kiki's error naming the variable."""
    import subprocess
    import sys

    env = {**os.environ, "OTEL_RESOURCE_ATTRIBUTES": "foo"}
    code = "import kiki_otel; kiki_otel.configure()"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "Invalid key value resource attribute pair" not in done.stdout + done.stderr
    assert "ConfigurationError: invalid Settings" in done.stderr
    assert "OTEL_RESOURCE_ATTRIBUTES: expected key=value pairs" in done.stderr
