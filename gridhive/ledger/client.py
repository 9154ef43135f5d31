"""Python client of a validator's local API (LEDGER.md §15), for gateway agents, the controller
and tests. Standard library only; one kept-alive connection per client (not thread-safe: use
one client per thread)."""
import http.client
import json
import socket
import time
from urllib.parse import quote

from .tx import tx_id


class LedgerError(RuntimeError):
    def __init__(self, status: int, reason: str, detail: str = ""):
        super().__init__(f"HTTP {status} {reason}: {detail}" if detail else f"HTTP {status} {reason}")
        self.status = status
        self.reason = reason


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class LedgerClient:
    def __init__(self, address: str, timeout_s: float = 30.0):
        """`address`: "host:port", "http://host:port" or "unix:/path/to/api.sock"."""
        self.address = address.removeprefix("http://").rstrip("/")
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.address.startswith("unix:"):
                self._conn = _UnixConnection(self.address[5:], self.timeout_s)
            else:
                host, _, port = self.address.rpartition(":")
                self._conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        for attempt in (0, 1):               # a kept-alive connection the server closed: reconnect once
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
                response = conn.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException) as e:
                # Includes a response cut short by a validator that died mid-reply (IncompleteRead).
                self.close()
                if attempt:
                    raise ConnectionError(f"ledger API {self.address}{path}: {e!r}") from e
        value = json.loads(payload) if payload else None
        if response.status >= 400:
            value = value if isinstance(value, dict) else {}
            raise LedgerError(response.status, value.get("error", "error"), value.get("detail", ""))
        return value

    # -- transactions ---------------------------------------------------------------------------
    def submit(self, tx: dict) -> dict:
        """{"tx_id", "accepted", "reason"}: reason is the §10 code when not accepted."""
        return self.request("POST", "/v1/txs", tx)["results"][0]

    def submit_many(self, txs: list[dict]) -> list[dict]:
        return self.request("POST", "/v1/txs", {"txs": txs})["results"]

    def tx(self, tid: str, wait_ms: int = 0) -> dict:
        """{"status": "final", "height", "index", "block_hash"} or {"status": "pending" | "unknown"}."""
        return self.request("GET", f"/v1/txs/{tid}?wait_ms={wait_ms}")

    def wait_final(self, tid: str, timeout_s: float = 30.0) -> dict:
        """Block until `tid` is final; raises TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            result = self.tx(tid, wait_ms=max(0, min(left_ms, 10_000)))
            if result["status"] == "final":
                return result
            if left_ms <= 0:
                raise TimeoutError(f"tx {tid[:16]}… not final within {timeout_s} s ({result['status']})")

    def submit_and_wait(self, tx: dict, timeout_s: float = 30.0) -> dict:
        result = self.submit(tx)
        if not result["accepted"]:
            raise LedgerError(422, result["reason"], f"tx {tx_id(tx)[:16]}…")
        return self.wait_final(result["tx_id"], timeout_s)

    # -- queries --------------------------------------------------------------------------------
    def status(self) -> dict:
        return self.request("GET", "/v1/status")

    def genesis(self) -> dict:
        return self.request("GET", "/v1/genesis")

    def state(self, table: str, key: str):
        """The value in `table` at `key`, or None."""
        try:
            return self.request("GET", f"/v1/state/{table}/{quote(key, safe='/')}")["value"]
        except LedgerError as exc:
            if exc.reason == "not_found":
                return None
            raise

    def account(self, pubkey: str) -> dict:
        return self.state("accounts", pubkey) or {"nonce": 0, "balance_minor": 0}

    def provenance(self, trade_id: str) -> dict:
        return self.request("GET", f"/v1/provenance/{quote(trade_id, safe='/')}")

    def block(self, height: int) -> dict:
        return self.request("GET", f"/v1/blocks/{height}")

    def commits(self, from_height: int, wait_ms: int = 0) -> list[dict]:
        return self.request("GET", f"/v1/commits?from_height={from_height}&wait_ms={wait_ms}")["commits"]

    def set_blocked(self, keys) -> None:
        """Test-only partition switch (needs [test] admin = true on the validator)."""
        self.request("POST", "/v1/admin/partition", {"blocked": sorted(keys)})
