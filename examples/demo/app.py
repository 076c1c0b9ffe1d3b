"""A small FastAPI service instrumented with one call to ``kiki_otel.configure(app)``.

Run it: ``uvicorn examples.demo.app:app``. Telemetry goes to ``OTEL_EXPORTER_OTLP_ENDPOINT``
(default http://localhost:4318); with no collector running it still serves and logs JSON.
"""

from __future__ import annotations

import asyncio

import httpx
from fastapi import BackgroundTasks, FastAPI, HTTPException
from opentelemetry import trace

import kiki_otel

from .settings import DemoSettings

settings = DemoSettings.load()
app = FastAPI(title="kiki-otel demo")
telemetry = kiki_otel.configure(app)
log = kiki_otel.get_logger("demo")

client = httpx.AsyncClient(timeout=settings.request_timeout)
telemetry.on_shutdown(client.aclose)
if settings.downstream_url:
    telemetry.health.add_http(
        "downstream", f"{settings.downstream_url}/health/live", critical=False
    )
if settings.redis_url:
    telemetry.health.add_redis("cache", settings.redis_url, critical=False)
if settings.database_url:
    telemetry.health.add_sql("postgres", settings.database_url.get_secret_value())


@app.get("/plans/{plan_id}")
async def get_plan(plan_id: int) -> dict[str, object]:
    """Load a plan; with a downstream configured, ask it for the plan's value (one trace)."""
    log.info("plan.loaded", plan_id=plan_id)
    value: object = None
    if settings.downstream_url:
        response = await client.get(f"{settings.downstream_url}/plans/{plan_id}/value")
        response.raise_for_status()
        value = response.json()["value"]
    return {"plan_id": plan_id, "value": value, "request_id": kiki_otel.get_request_id()}


@app.get("/plans/{plan_id}/value")
async def get_plan_value(plan_id: int) -> dict[str, object]:
    """The downstream half of the demo."""
    log.info("plan.valued", plan_id=plan_id)
    return {"value": plan_id * 10, "request_id": kiki_otel.get_request_id()}


@app.post("/checkout")
async def checkout(background: BackgroundTasks) -> dict[str, object]:
    """Records sensitive attributes on purpose: the collector must redact them."""
    span = trace.get_current_span()
    span.set_attribute("payment.card_number", "4111 1111 1111 1111")
    span.set_attribute("user.password", "hunter2")
    background.add_task(_send_receipt)
    return {"ok": True, "request_id": kiki_otel.get_request_id()}


async def _send_receipt() -> None:
    log.info("receipt.sent")


@app.get("/slow")
async def slow(seconds: float = 0.2) -> dict[str, float]:
    """Takes a while: used to show in-flight requests finishing during shutdown."""
    await asyncio.sleep(min(seconds, 30.0))
    return {"slept": seconds}


@app.get("/boom")
async def boom() -> None:
    """An unhandled error: the 500 still carries X-Request-ID, the span records the error."""
    raise RuntimeError("boom")


@app.get("/teapot")
async def teapot() -> None:
    """A handled error path (exception handler response)."""
    raise HTTPException(status_code=418, detail="short and stout")
