"""The gateway's local HTTP API (Starlette), served by uvicorn inside the gateway's event loop.

  POST /api/nodes/{node}/relays/{n}   {"action": "on"|"off"|"toggle", "timeout_s": 5}
       200 the node's reply; 409 refused by the node (with its reason) or boot unknown;
       404 unknown node; 422 bad action or relay; 503 broker down; 504 no reply in time
  GET  /api/nodes                     what the gateway knows of each node
  GET  /api/stats                     accepted / rejected (by reason) / duplicates / queues
  GET  /api/energy?start_ms=&end_ms=  interval energies per household and per circuit
  GET  /api/meter                     the utility meter: link, last reading, counters, last cross-check
  GET  /api/meter/readings?start_ms=&end_ms=  its readings and gaps (by slot)
  GET  /api/meter/checks?start_ms=&end_ms=    each interval's meter energy against the node circuits
       (the three: 404 when gateway.toml has no [meter])
  GET  /healthz                       200 while the event loop runs
  GET  /metrics                       Prometheus

Every refusal is JSON {"error": "..."} with its status (404 no such path, 405 wrong method, 413 body
over 4 KiB, 422 bad value), counted in gridhive_gateway_http_rejected_total{reason} and logged once
per reason per ingest.reject_log_interval_s.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .commands import BadCommand, CommandError, UnknownNode
from .ingest import RejectLog

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("gridhive.gateway.http")

MAX_BODY_BYTES = 4096
MAX_MS = 2**63  # times are SQLite INTEGERs: 0 <= ms < 2**63
BODY_HINT = 'the body must be a JSON object with action: on, off or toggle, e.g. {"action": "on"}'
COMMAND_REASONS = {UnknownNode: "unknown_node", BadCommand: "bad_command"}  # other CommandErrors are not input errors


def build_app(gateway: "Gateway") -> Starlette:
    reject_log = RejectLog(gateway.cfg.ingest.reject_log_interval_s * 1000)

    def reject(request: Request, reason: str, status: int, message: str, extra: dict | None = None,
               headers: dict | None = None) -> JSONResponse:
        """The JSON error for a refused request, counted and logged (once per reason per interval)."""
        gateway.metrics.http_rejected.labels(reason).inc()
        suppressed = reject_log.should_log("http", reason, int(time.time() * 1000))
        if suppressed is not None:
            more = f" (and {suppressed} more since the last report)" if suppressed else ""
            log.warning("rejected HTTP request %s: %s %s: %s%s", reason, request.method, request.url.path[:100],
                        message[:200], more)
        return JSONResponse({"error": message, **(extra or {})}, status, headers=headers)

    async def switch(request: Request):
        node, n = request.path_params["node"], request.path_params["n"]
        if not re.fullmatch(r"[0-9]{1,3}", n):
            # The range is the command's to check (BadCommand below); this is only the number's form.
            return reject(request, "bad_relay", 422, f"relay must be a whole number, got {n[:20]!r}")
        body = b""
        async for chunk in request.stream():  # read no more than the limit allows
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return reject(request, "body_too_large", 413, f"the body must be at most {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(body) if body else None
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("action"), str):
            return reject(request, "bad_body", 422, BODY_HINT)
        timeout_s = body.get("timeout_s")
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                      or not 0 < timeout_s <= 600):
            return reject(request, "bad_timeout", 422, "timeout_s must be a number of seconds, more than 0, at most 600")
        try:
            result = await gateway.switch_relay(node, int(n), body["action"], timeout_s)
        except CommandError as e:
            extra = {"result": e.result} if e.result else {}
            if type(e) in COMMAND_REASONS:
                return reject(request, COMMAND_REASONS[type(e)], e.status, str(e), extra)
            return JSONResponse({"error": str(e), **extra}, e.status)
        return JSONResponse(result.as_dict())

    async def nodes(request: Request):
        return JSONResponse(gateway.node_status())

    async def stats(request: Request):
        return JSONResponse(gateway.stats())

    def time_range(answer):
        """An endpoint answering answer(start_ms, end_ms), from the query, 422 when they are bad."""
        async def endpoint(request: Request):
            span = _time_range(request)
            if isinstance(span, str):
                return reject(request, "bad_time_range", 422, span)
            return JSONResponse(answer(*span))
        return endpoint

    def meter_api(endpoint):
        async def checked(request: Request):
            if gateway.meter is None:
                return reject(request, "no_meter", 404, "this gateway reads no utility meter (no [meter] in gateway.toml)")
            return await endpoint(request)
        return checked

    async def meter_status(request: Request):
        return JSONResponse(gateway.meter.status())

    async def http_error(request: Request, exc: HTTPException):
        """Starlette's own refusals (no route, wrong method) as JSON."""
        what = f"{request.method} {request.url.path[:100]}"
        if exc.status_code == 404:
            return reject(request, "not_found", 404, f"no such endpoint: {what}")
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            return reject(request, "method_not_allowed", 405, f"{what} is not allowed; use {allow}",
                          headers=exc.headers)
        return reject(request, "bad_request", exc.status_code, str(exc.detail), headers=exc.headers)

    async def healthz(request: Request):
        return PlainTextResponse("ok\n")

    async def metrics(request: Request):
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/api/nodes/{node}/relays/{n}", switch, methods=["POST"]),
        Route("/api/nodes", nodes),
        Route("/api/stats", stats),
        Route("/api/energy", time_range(gateway.energy)),
        Route("/api/meter", meter_api(meter_status)),
        Route("/api/meter/readings", meter_api(time_range(lambda s, e: gateway.meter.readings(s, e)))),
        Route("/api/meter/checks", meter_api(time_range(lambda s, e: gateway.meter.checks(s, e)))),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ], exception_handlers={HTTPException: http_error})


def _time_range(request: Request) -> tuple[int, int] | str:
    """(start_ms, end_ms) from the query, or what is wrong with them. start_ms == end_ms is allowed."""
    values = [request.query_params.get(key, "") for key in ("start_ms", "end_ms")]
    if not all(re.fullmatch(r"[0-9]{1,19}", v) and int(v) < MAX_MS for v in values):
        return "start_ms and end_ms must be integers (Unix ms), 0 to 2**63 - 1"
    start_ms, end_ms = map(int, values)
    if start_ms > end_ms:
        return f"start_ms must not be after end_ms (got {start_ms} > {end_ms})"
    return start_ms, end_ms
