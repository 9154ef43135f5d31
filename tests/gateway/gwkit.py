"""Helpers for the gateway suites: configs, simulated nodes that sign real messages, MQTT clients."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho

from ghnode import wire
from gridhive.broker import wait_for_port

ROOT = Path(__file__).resolve().parents[2]
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a whole hour


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def secret(node: str) -> bytes:
    return hashlib.sha256(b"test secret " + node.encode()).digest()


def write_config(path: Path, *, broker_port: int, nodes=("n1", "n2"), broker_password: str = "",
                 uplink_port: int | None = None, http_port: int = 0, ha: bool = True, extra: str = "",
                 ack_batch_ms: int = 20) -> Path:
    """A gateway.toml for tests: node i has a 63 A grid CT on channel 0 and a 16 A circuit on 1."""
    lines = [
        "[gateway]", 'id = "gw1"', f'data_dir = "{path.parent / "data"}"', 'log_level = "INFO"',
        "[broker]", f"port = {broker_port}", f'password = "{broker_password}"', 'listen_host = "127.0.0.1"',
        "[ingest]", f"ack_batch_ms = {ack_batch_ms}",
        "[http]", f"port = {http_port}",
        "[homeassistant]", f"enabled = {'true' if ha else 'false'}", 'password = "ha-pass"',
        "[uplink]", f"enabled = {'true' if uplink_port else 'false'}", "tls = false",
        f"port = {uplink_port or 8883}", "retry_s = 2", "status_interval_s = 5",
        "[commands]", "timeout_s = 3",
    ]
    for node in nodes:
        lines += [f"[nodes.{node}]", f'secret_hex = "{secret(node).hex()}"', f'household = "h-{node}"',
                  f"[[nodes.{node}.channels]]", "n = 0", 'name = "grid"', "rating_a = 63", "grid = true",
                  f"[[nodes.{node}.channels]]", "n = 1", 'name = "ev"', "rating_a = 16",
                  f"[[nodes.{node}.relays]]", "n = 0", 'name = "ev"']
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


class NodeSim:
    """Builds a node's signed messages: strictly increasing seq, counters that only grow."""

    def __init__(self, node: str, boot: int = 1, seq: int = 0, in_wh=(0, 0), out_wh=(0, 0)):
        self.node, self.boot, self.seq = node, boot, seq
        self.secret = secret(node)
        self.in_wh, self.out_wh = list(in_wh), list(out_wh)

    def sign(self, msg: dict) -> bytes:
        return wire.encode(msg, self.secret)

    def tele(self, ts_ms: int, power_w=(500, 100), add_in_wh=(1, 1), add_out_wh=(0, 0), relays_on=(False,),
             **over) -> tuple[str, bytes, dict]:
        self.seq += 1
        for i, wh in enumerate(add_in_wh):
            self.in_wh[i] += wh
        for i, wh in enumerate(add_out_wh):
            self.out_wh[i] += wh
        msg = {"v": 1, "t": "tele", "node": self.node, "boot": self.boot, "seq": self.seq, "ts_ms": ts_ms,
               "synced": True, "vrms_mv": 230_000,
               "ch": [{"n": i, "name": f"c{i}", "power_w": p, "irms_ma": abs(p) * 1000 // 230, "va": abs(p),
                       "pf_milli": 1000, "dir": "import" if p >= 0 else "export",
                       "energy_in_wh": self.in_wh[i], "energy_out_wh": self.out_wh[i], "open": False,
                       "clip": False} for i, p in enumerate(power_w)],
               "relays": [{"n": i, "name": f"r{i}", "on": on, "trip": None, "override": False}
                          for i, on in enumerate(relays_on)]}
        msg.update(over)
        return wire.topic(self.node, "tele"), self.sign(msg), msg

    def health(self, ts_ms: int, fw: str = "1.0.0") -> tuple[str, bytes, dict]:
        self.seq += 1
        msg = {"v": 1, "t": "health", "node": self.node, "boot": self.boot, "seq": self.seq, "ts_ms": ts_ms,
               "synced": True, "heap_free_b": 90_000, "uptime_s": 60, "reset_cause": "power_on",
               "rssi_dbm": -60, "buf_depth": 0, "buf_dropped": 0, "fw": fw, "safe_mode": False, "error": None}
        return wire.topic(self.node, "health"), self.sign(msg), msg

    def reply(self, ts_ms: int, cid: int, relay: int, state: str, ok: bool = True, **extra) -> tuple[str, bytes, dict]:
        self.seq += 1
        msg = {"v": 1, "t": "reply", "node": self.node, "boot": self.boot, "seq": self.seq, "ts_ms": ts_ms,
               "synced": True, "cid": cid, "ok": ok, "relay": relay, "state": state, **extra}
        return wire.topic(self.node, "reply"), self.sign(msg), msg

    def status(self, online: bool = True) -> tuple[str, bytes, dict]:
        msg = {"v": 1, "t": "status", "node": self.node, "boot": self.boot, "online": online}
        return wire.topic(self.node, "status"), self.sign(msg), msg


class Client:
    """A paho client on its own thread that records what it receives."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None, client_id: str = "",
                 host: str = "127.0.0.1", on_message=None):
        self.received: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subacks: list[list[int]] = []
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        if user:
            self.c.username_pw_set(user, password)
        self._extra = on_message
        self.c.on_message = self._message
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.subacks.append([int(x.value) for x in codes])
        self.connect_rc = None
        self._subs: list[tuple[str, int]] = []
        self.c.on_connect = self._connected
        self.c.max_inflight_messages_set(100)
        self.c.connect(host, port, 30)
        self.c.loop_start()
        wait(lambda: self.connect_rc is not None, 10, "CONNACK")

    def _connected(self, c, u, flags, rc, props):
        self.connect_rc = rc
        for topic, qos in self._subs:  # a clean session forgets them on every reconnect
            c.subscribe(topic, qos)

    def _message(self, c, u, m):
        with self.lock:
            self.received.append((m.topic, m.payload, m.retain))
        if self._extra:
            self._extra(self, m)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        n = len(self.subacks)
        self._subs.append((topic, qos))
        self.c.subscribe(topic, qos)
        wait(lambda: len(self.subacks) > n, 10, "SUBACK")

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False):
        return self.c.publish(topic, payload, qos=qos, retain=retain)

    def messages(self, prefix: str = "") -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return [m for m in self.received if m[0].startswith(prefix)]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def wait(predicate, timeout_s: float, what: str = "condition", interval_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def acked_seqs(client: Client, node: str) -> set[int]:
    """Every seq the gateway has acknowledged to `node` (verifying each ack's tag)."""
    seqs = set()
    for topic, payload, _ in client.messages(wire.topic(node, "ack")):
        msg = wire.decode(payload, lambda n: secret(n))
        seqs.update(msg["acks"])
    return seqs


class GatewayProcess:
    """`python -m gridhive.gateway run` as a real process; waits for sd_notify READY=1."""

    def __init__(self, config: Path, workdir: Path, env: dict | None = None):
        self.config, self.workdir = config, workdir
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "gateway.log"

    def start(self, http_port: int, timeout_s: float = 20) -> None:
        import socket as s
        sock_path = self.workdir / f"notify-{time.monotonic_ns()}.sock"
        notify = s.socket(s.AF_UNIX, s.SOCK_DGRAM)
        notify.bind(str(sock_path))
        notify.settimeout(timeout_s)
        env = {**self.env, "NOTIFY_SOCKET": str(sock_path), "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "gridhive.gateway", "run", "--config", str(self.config)],
                                         stdout=log, stderr=log, env=env, cwd=ROOT)
        try:
            while True:
                data = notify.recv(4096).decode()
                if "READY=1" in data.split("\n"):
                    break
        except TimeoutError:
            raise AssertionError(f"gateway sent no READY=1 in {timeout_s} s:\n{self.log.read_text()[-3000:]}")
        finally:
            notify.close()
            sock_path.unlink()
        self.http_port = http_port
        wait_for_port(http_port)
        # READY=1 comes before the broker answers the gateway's SUBSCRIBE (a gateway whose broker
        # is down still starts). On a first start, with no session on the broker yet, what nodes
        # publish before it reaches nobody and is seen only when they resend it.
        wait(lambda: self.get("/api/stats")["broker_subscribed"], 10, "the gateway's subscription")

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def metrics(self) -> dict:
        """/metrics as {(sample name, ((label, value), ...)): value}."""
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0


def http(method: str, url: str, body: dict | None = None, timeout_s: float = 15) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class ConfiguredBroker:
    """Mosquitto started with the files `gridhive gateway mosquitto-config` wrote."""

    def __init__(self, conf: Path, port: int):
        from gridhive.broker import mosquitto_path
        self.conf, self.port = conf, port
        self.exe = mosquitto_path()
        self.proc = None

    def start(self) -> None:
        self.log = open(self.conf.parent / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=self.log, stderr=self.log)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


class GatewayThread:
    """An in-process Gateway on its own event loop thread (for tests that look inside it)."""

    def __init__(self, config: Path, env: dict | None = None):
        from gridhive.gateway.config import load_config
        self.cfg = load_config(config, env=env or {})
        self.gw = None
        self.exit_code = None
        self._thread = threading.Thread(target=self._main, name="gateway", daemon=True)

    def _main(self):
        import asyncio
        from gridhive.gateway.service import Gateway

        async def main():
            self.loop = asyncio.get_running_loop()
            self.gw = Gateway(self.cfg)
            self.exit_code = await self.gw.run(handle_signals=False)

        asyncio.run(main())

    def start(self) -> "GatewayThread":
        self._thread.start()
        wait(lambda: self.gw is not None and self.gw.local.connected and self.gw.http_port is not None, 15,
             "the gateway to connect")
        return self

    def call(self, fn, *args):
        """Run fn(*args) on the gateway's loop and return its result (awaiting coroutines)."""
        import asyncio

        async def run():
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.gw.http_port}{path}"

    def stop(self) -> None:
        if self.gw is not None and self._thread.is_alive():
            self.gw.stop()
            self._thread.join(20)


class NodeResponder:
    """Plays a node's relay side: verifies each signed `cmd` and answers with a signed `reply`."""

    def __init__(self, port: int, sim: NodeSim, refuse: str | None = None, silent: bool = False, **client_kw):
        self.sim, self.refuse, self.silent = sim, refuse, silent
        self.commands: list[dict] = []
        self.client = Client(port, on_message=self._on_message, client_id=f"{sim.node}-relay", **client_kw)
        self.client.subscribe(wire.topic(sim.node, "cmd"))

    def _on_message(self, client, m):
        cmd = wire.decode(m.payload, lambda n: secret(n))
        self.commands.append(cmd)
        if self.silent or cmd["boot"] != self.sim.boot:
            return
        extra = {"reason": self.refuse, "retry_after_ms": 5000} if self.refuse else {}
        state = "off" if self.refuse or cmd["action"] == "off" else "on"
        topic, payload, _ = self.sim.reply(now_ms(), cmd["cid"], cmd["relay"], state, ok=not self.refuse, **extra)
        client.c.publish(topic, payload, qos=1)


class FakeController:
    """Subscribes to a gateway's uplink and acks every batch, like the controller will."""

    def __init__(self, port: int, gateway_id: str = "gw1", ack: bool = True):
        self.gateway_id, self.ack = gateway_id, ack
        self.batches: list[dict] = []
        self.payloads: list[bytes] = []
        self.client = Client(port, client_id="controller", on_message=self._on_message)
        self.client.subscribe(f"ghc/{gateway_id}/up")
        self.client.subscribe(f"ghc/{gateway_id}/status")

    def _on_message(self, client, m):
        if not m.topic.endswith("/up"):
            return
        batch = json.loads(m.payload)
        self.payloads.append(m.payload)
        self.batches.append(batch)
        if self.ack:
            client.c.publish(f"ghc/{self.gateway_id}/ack",
                             json.dumps({"v": 1, "gw": self.gateway_id, "acks": [batch["gseq"]]}), qos=1)

    def items(self) -> dict[tuple[str, int], dict]:
        """Every item received, deduplicated by (node, seq) as the controller does."""
        return {(i["node"], i["seq"]): i for b in list(self.batches) for i in b["items"]}

    def statuses(self) -> list[dict]:
        return [json.loads(p) for t, p, _ in self.client.messages(f"ghc/{self.gateway_id}/status")]

    def close(self) -> None:
        self.client.close()


class FleetNode(threading.Thread):
    """A simulated node on its own thread, behaving like the firmware's delivery loop: every
    message stays buffered until the gateway acks its seq; everything unacked is resent after
    each (re)connect and after `resend_s` without an ack."""

    def __init__(self, port: int, name: str, rate_hz: float, resend_s: float = 3.0):
        super().__init__(name=f"node-{name}", daemon=True)
        from gridhive.gateway.mosquitto import node_password
        self.sim = NodeSim(name, boot=int.from_bytes(os.urandom(3), "big") + 1)
        self.rate_hz, self.resend_s = rate_hz, resend_s
        self.lock = threading.Lock()
        self.unacked: dict[int, list] = {}  # seq -> [topic, payload, last sent]
        self.produced: list[int] = []
        self.producing = threading.Event()
        self.producing.set()
        self.halt = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv311)
        c.username_pw_set(name, node_password(self.sim.secret))
        c.max_inflight_messages_set(50)
        c.reconnect_delay_set(0.2, 1)
        topic, payload, _ = self.sim.status(False)
        c.will_set(topic, payload, 1, True)
        c.on_connect = self._connected
        c.on_message = self._message
        self.client = c
        c.connect(LOOPBACK, port, 10)
        c.loop_start()

    def _connected(self, c, u, flags, rc, props):
        c.subscribe(wire.topic(self.sim.node, "ack"), 1)
        topic, payload, _ = self.sim.status(True)
        c.publish(topic, payload, 1, retain=True)
        self._resend(force=True)

    def _message(self, c, u, m):
        try:
            ack = wire.decode(m.payload, lambda n: self.sim.secret)
        except wire.WireError:
            return
        if ack["t"] == "ack" and ack["boot"] == self.sim.boot:
            with self.lock:
                for seq in ack["acks"]:
                    self.unacked.pop(seq, None)

    def _resend(self, force=False):
        now = time.monotonic()
        with self.lock:
            due = [(s, e) for s, e in sorted(self.unacked.items()) if force or now - e[2] >= self.resend_s]
            for _, e in due:
                e[2] = now
        for _, (topic, payload, _) in due:
            self.client.publish(topic, payload, 1)

    def run(self):
        next_at = time.monotonic()
        while not self.halt.is_set():
            if self.producing.is_set():
                topic, payload, msg = self.sim.tele(now_ms())
                with self.lock:
                    self.unacked[msg["seq"]] = [topic, payload, time.monotonic()]
                    self.produced.append(msg["seq"])
                self.client.publish(topic, payload, 1)
            self._resend()
            next_at += 1 / self.rate_hz
            time.sleep(max(0.0, next_at - time.monotonic()))

    def pending(self) -> int:
        with self.lock:
            return len(self.unacked)

    def close(self):
        self.halt.set()
        self.join(5)
        self.client.disconnect()
        self.client.loop_stop()


LOOPBACK = "127.0.0.1"
