"""A kiki-otel service that records what real services plausibly record, secrets included, for
the live stack test (tests/e2e/conftest.py runs it under uvicorn): the collector's redaction must
mask the secrets and leave the rest alone.

GET /leak       an outgoing httpx call with credentials in the query string (url.full of the
                client span, url.query of the /echo server span, httpx's "HTTP Request: GET
                ...?api_key=..." log line), a DSN with a password (span and log attribute), a
                Basic credential, a bearer token in a log message
GET /overmatch  things that only look like secrets: token counts, a tokenizer name, "basic
                authentication" prose
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI, Request
from opentelemetry import trace

import kiki_otel
from tests.e2e import _leaks

app = FastAPI(title="kiki-otel e2e leak app")
telemetry = kiki_otel.configure(app)
log = kiki_otel.get_logger("leak")
client = httpx.AsyncClient(timeout=5)
telemetry.on_shutdown(client.aclose)


@app.get("/leak")
async def leak(request: Request) -> dict[str, object]:
    log.info(
        "login",
        password=_leaks.LOGIN_PASSWORD,
        api_token=_leaks.API_TOKEN,
        dsn=_leaks.DSN,
    )
    log.info(_leaks.BEARER_IN_PROSE)
    response = await client.get(f"{request.base_url}echo", params=_leaks.QUERY)
    span = trace.get_current_span()
    span.set_attribute("db.connection_string", _leaks.DSN)
    span.set_attribute("enduser.credential", _leaks.BASIC_CREDENTIAL)
    return {"echo": response.status_code}


@app.get("/echo")
async def echo() -> dict[str, bool]:
    return {"ok": True}


@app.get("/overmatch")
async def overmatch() -> dict[str, bool]:
    log.info(_leaks.PROSE)
    log.info(
        "llm.call",
        input_tokens=_leaks.INPUT_TOKENS,
        output_tokens=_leaks.OUTPUT_TOKENS,
        tokenizer=_leaks.TOKENIZER,
    )
    span = trace.get_current_span()
    span.set_attribute("gen_ai.usage.input_tokens", _leaks.INPUT_TOKENS)
    span.set_attribute("gen_ai.usage.output_tokens", _leaks.OUTPUT_TOKENS)
    span.set_attribute("gen_ai.token.type", "input")
    return {"ok": True}
