"""The local client API (LEDGER.md §15): HTTP/JSON on loopback or a unix socket, served by
uvicorn on the validator's own loop. Submit, wait for finality, query state, provenance, blocks,
status; plus the test-only partition switch when [test] admin is on."""
import asyncio
import contextlib
import json

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .provenance import provenance
from .state import TABLES
from .tx import tx_id

MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_WAIT_MS = 60_000
MAX_BATCH_TXS = 10_000


def _json(value, status: int = 200) -> Response:
    return Response(json.dumps(value, separators=(",", ":")), status_code=status, media_type="application/json")


def _error(status: int, reason: str, detail: str = "") -> Response:
    return _json({"error": reason, "detail": detail}, status)


def _reject_float(text):
    raise ValueError("floats are not ledger values")


async def _read_json(request: Request):
    """The body as JSON, or raises ValueError("oversized" | "malformed")."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise ValueError("oversized")
    try:
        return json.loads(body, parse_float=_reject_float, parse_constant=_reject_float)
    except (ValueError, RecursionError):
        raise ValueError("malformed") from None


def _wait_ms(request: Request) -> int:
    try:
        return max(0, min(MAX_WAIT_MS, int(request.query_params.get("wait_ms", "0"))))
    except ValueError:
        return 0


def build_app(validator) -> Starlette:
    node = validator.node

    async def submit(request: Request) -> Response:
        """POST /v1/txs: one tx object, or {"txs": [...]}. Per tx: accepted, or the §10 reason."""
        try:
            body = await _read_json(request)
        except ValueError as exc:
            node.reject(str(exc))
            return _error(413 if str(exc) == "oversized" else 400, str(exc))
        txs = body["txs"] if type(body) is dict and set(body) == {"txs"} and type(body["txs"]) is list else [body]
        if len(txs) > MAX_BATCH_TXS:
            return _error(413, "oversized", f"more than {MAX_BATCH_TXS} txs")
        results = []
        for tx in txs:
            reason = validator.submit(tx)
            try:
                tid = tx_id(tx) if reason != "malformed" else None
            except (TypeError, KeyError, ValueError):
                tid = None
            results.append({"tx_id": tid, "accepted": reason is None, "reason": reason})
        return _json({"results": results})

    async def tx_status(request: Request) -> Response:
        """GET /v1/txs/{id}?wait_ms=: final (with height, index, block hash), pending or unknown."""
        tid = request.path_params["tx_id"]
        where = await validator.wait_final(tid, _wait_ms(request) / 1000)
        if where is not None:
            return _json({"tx_id": tid, "status": "final", **where})
        return _json({"tx_id": tid, "status": "pending" if tid in node.mempool else "unknown"})

    async def state(request: Request) -> Response:
        table, key = request.path_params["table"], request.path_params["key"]
        if table not in TABLES:
            return _error(404, "unknown_table", table)
        value = node.state.get(table, key)
        if value is None:
            return _error(404, "not_found", f"{table}/{key}")
        return _json({"height": node.height, "table": table, "key": key, "value": value})

    async def trade_provenance(request: Request) -> Response:
        """§11, with every tx resolved to its final block (height, index)."""
        trade_id = request.path_params["trade_id"]
        found = provenance(node.state, trade_id)
        if found is None:
            return _error(404, "not_found", trade_id)
        locations = {}
        for tid in found["txs"]:
            where = validator.store.tx_location(tid)
            locations[tid] = {"height": where[0], "index": where[1]} if where else None
        return _json({"height": node.height, "provenance": found, "tx_locations": locations})

    async def block(request: Request) -> Response:
        stored = validator.store.block(request.path_params["height"])
        if stored is None:
            return _error(404, "not_found", str(request.path_params["height"]))
        return _json({"block": stored[0], "commit": stored[1]})

    async def commits(request: Request) -> Response:
        """GET /v1/commits?from_height=&wait_ms=: recent final blocks with their tx ids (long poll)."""
        try:
            from_height = int(request.query_params.get("from_height", "1"))
        except ValueError:
            return _error(400, "malformed", "from_height")
        return _json({"commits": await validator.commits_from(from_height, _wait_ms(request) / 1000)})

    async def status(request: Request) -> Response:
        return _json(validator.status())

    async def genesis(request: Request) -> Response:
        """The chain's genesis: its id, operator and parameters (interval, gate closure, tariffs…)."""
        return _json(validator.config.genesis)

    async def partition(request: Request) -> Response:
        if not validator.config.admin:
            return _error(404, "not_found", "admin endpoints are off")
        try:
            body = await _read_json(request)
            blocked = set(body["blocked"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "malformed", 'expected {"blocked": [validator keys]}')
        validator.set_blocked(blocked)
        return _json({"blocked": sorted(blocked)})

    return Starlette(routes=[
        Route("/v1/txs", submit, methods=["POST"]),
        Route("/v1/txs/{tx_id}", tx_status),
        Route("/v1/state/{table}/{key:path}", state),
        Route("/v1/provenance/{trade_id:path}", trade_provenance),
        Route("/v1/blocks/{height:int}", block),
        Route("/v1/commits", commits),
        Route("/v1/status", status),
        Route("/v1/genesis", genesis),
        Route("/v1/admin/partition", partition, methods=["POST"]),
    ])


class _ApiServer(uvicorn.Server):
    def capture_signals(self):        # the validator owns SIGINT/SIGTERM
        return contextlib.nullcontext()


async def start_api(validator) -> _ApiServer:
    """Start serving on the validator's loop; returns the server (set should_exit, await serve_task)."""
    address = validator.config.api
    options = {"uds": address[5:]} if address.startswith("unix:") else {
        "host": address.rpartition(":")[0].strip("[]"), "port": int(address.rpartition(":")[2])}
    server = _ApiServer(uvicorn.Config(build_app(validator), log_level="warning", access_log=False,
                                       lifespan="off", **options))
    server.serve_task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if server.serve_task.done():
            server.serve_task.result()
            raise OSError(f"the API could not bind {address}")
        await asyncio.sleep(0.01)
    return server
