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
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .commands import CommandError

if TYPE_CHECKING:
    from .service import Gateway


def build_app(gateway: "Gateway") -> Starlette:
    async def switch(request: Request):
        node, n = request.path_params["node"], request.path_params["n"]
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "the body must be JSON, e.g. {\"action\": \"on\"}"}, 422)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, 422)
        timeout_s = body.get("timeout_s")
        if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 600):
            return JSONResponse({"error": "timeout_s must be a number of seconds, 0-600"}, 422)
        try:
            result = await gateway.switch_relay(node, n, body.get("action"), timeout_s)
        except CommandError as e:
            return JSONResponse({"error": str(e), **({"result": e.result} if e.result else {})}, e.status)
        return JSONResponse(result.as_dict())

    async def nodes(request: Request):
        return JSONResponse(gateway.node_status())

    async def stats(request: Request):
        return JSONResponse(gateway.stats())

    async def energy(request: Request):
        span = _time_range(request)
        return span if isinstance(span, Response) else JSONResponse(gateway.energy(*span))

    def meter_api(answer):
        async def endpoint(request: Request):
            if gateway.meter is None:
                return JSONResponse({"error": "this gateway reads no utility meter (no [meter] in gateway.toml)"}, 404)
            return answer(request)
        return endpoint

    def meter_status(request: Request):
        return JSONResponse(gateway.meter.status())

    def meter_readings(request: Request):
        span = _time_range(request)
        return span if isinstance(span, Response) else JSONResponse(gateway.meter.readings(*span))

    def meter_checks(request: Request):
        span = _time_range(request)
        return span if isinstance(span, Response) else JSONResponse(gateway.meter.checks(*span))

    async def healthz(request: Request):
        return PlainTextResponse("ok\n")

    async def metrics(request: Request):
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/api/nodes/{node}/relays/{n:int}", switch, methods=["POST"]),
        Route("/api/nodes", nodes),
        Route("/api/stats", stats),
        Route("/api/energy", energy),
        Route("/api/meter", meter_api(meter_status)),
        Route("/api/meter/readings", meter_api(meter_readings)),
        Route("/api/meter/checks", meter_api(meter_checks)),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ])


def _time_range(request: Request) -> tuple[int, int] | Response:
    """(start_ms, end_ms) from the query, or the 422 response saying what is missing."""
    try:
        return int(request.query_params["start_ms"]), int(request.query_params["end_ms"])
    except (KeyError, ValueError):
        return JSONResponse({"error": "give start_ms and end_ms as integers (Unix ms)"}, 422)
