"""`gridhive bench ingest`: the telemetry path on real processes — load generators -> Mosquitto ->
one gateway process -> uplink -> controller process — measured in one run.

What runs (all on this machine, every piece a separate process):
- the nodes' broker: Mosquitto on a free loopback port, anonymous, no persistence, and
  `max_queued_messages 100000` (the gateway's production default, so a backlog is queued, not dropped);
- the controller's broker: a second Mosquitto (`gridhive.broker.MosquittoBroker`);
- the controller: `python -m gridhive.controller serve --db sqlite:///… --broker …` (SQLite, FULL sync);
- the gateway: `python -m gridhive.gateway run --config gateway.toml` with a generated config and node
  registry (2 CT channels and 1 relay per node), every other setting at its default: MQTT 5 persistent
  session with manual PUBACK after commit, `ack_batch_ms` 100, `commit_max_messages` 2000,
  `storage.synchronous` FULL, Home Assistant discovery and states on, uplink to the controller
  (plain MQTT on loopback instead of TLS);
- load generators: `publishers` processes, each one plain MQTT 3.1.1 connection (our own minimal
  client on a socket, no threads) that multiplexes its share of the node ids, publishes every node's
  signed retained `status` birth, then signed `tele` messages (`ghnode.wire.encode`, the fields of
  docs/PROTOCOL.md: 2 channels with rising energy counters, 1 relay) at QoS 1 with up to 2,000
  unacknowledged by the broker, and verifies the gateway's signed acks on `gh/<node>/ack`.
  Unlike real nodes they never resend: a message the pipeline loses stays lost and is reported.

Phases of `run()`. Both receive rates are measured on the same offered load: the same `messages`
pre-encoded telemetry messages (encoded untimed), published by the same generators into the broker
while the receiver is away, so they wait in its persistent session; then the receiver connects and
drains them. The generators are not running while a rate is timed (they share the machine's cores),
and `publish_msgs_per_s` (how fast they got a burst into the broker, their last PUBACK) shows they
are not what limits either rate.
1. raw: `mosquitto_sub -V mqttv5 -q 1 -c -x 3600 -i bench-raw -t 'gh/+/tele'` subscribes and leaves
   (`-E`), the burst is queued, and the same session reconnects and prints one line per message
   (`-C <n>`) — the same kind of session as the gateway's (MQTT 5, persistent, QoS 1), acking each
   message on receipt. `raw_broker_msgs_per_s` = messages / (last line - start of mosquitto_sub).
   Then the same with the gateway's own MQTT client (gateway.brokerlink, the `subscribe` command
   below) in place of mosquitto_sub: PUBACK on receipt and a line per message, nothing else.
   `raw_python_client_msgs_per_s` is the most one Python process receives before it does any of
   the gateway's work; `ratio_to_python_client` = gateway / it.
2. gateway: the gateway runs once (its retained births are stored, its session subscribed), is
   stopped with SIGTERM (its session stays in the broker), the burst is queued, and it starts again.
   `gateway_msgs_per_s` = messages / (its `gridhive_gateway_messages_accepted_total` on /metrics,
   polled every 0.1 s, reaching them - the last poll before the first was accepted): verified,
   stored (committed) and acknowledged; its Python start-up is not timed, its connect is. Both
   rates err low by up to one sample interval. `ratio` = gateway / raw: mosquitto_sub is C and only
   receives; the gateway is one Python process that verifies, stores, acks and forwards every
   message. CPU time of every process is read from /proc during this phase: `gateway_cpu_util`
   (cores used by the gateway while draining; about 1.0 means its Python core is the limit),
   `gateway_msgs_per_cpu_s` (messages per CPU-second of the gateway: the figure least affected by
   other load on a shared machine), `raw_mosquitto_sub_cpu_util`, `machine_idle_frac`.
   `end_to_end_msgs_per_s` = messages / (all of them in the controller's database - the gateway's start).
3. latency: at a steady `latency_rate` messages/s for `latency_s` seconds, every message carrying its
   publish time in `ts_ms` (wall clock, encoded just before it is sent). The controller's `messages`
   table has `received_ms`, which the controller stamps immediately before the transaction that
   stores the item's batch: `latency_p50_ms` / `latency_p99_ms` = received_ms - ts_ms. Because that
   stamp precedes the commit, the bench also polls the controller's database every 10 ms for new
   rows (by rowid) and reports when each row became visible: `latency_visible_p50_ms` / `_p99_ms`
   (up to ~10 ms late by construction). The path includes the gateway's 100 ms commit-and-ack batching.
Finally every count is checked: `gateway_stored` (rows in the gateway's `message` table),
`controller_stored` (rows in the controller's `messages` table, which are checked per node to be
exactly seqs 1..last), `acked_to_nodes` (seqs named by acks the generators verified) — each should
equal `messages_total`.

`load_avg_1m` is the 1-minute load average just before the bench starts anything (other tenants of a
shared machine); `load_avg_1m_end` is after it (includes the bench's own load).

Soak (not a `gridhive bench` figure, it takes as long as it says):
    python -m gridhive.bench.ingest soak --nodes 1000 --rate-hz 1 --duration-s 600
runs `nodes` simulated nodes (spread over the load generators; each node publishes every 1/rate_hz s,
the nodes' phases staggered evenly) through the same gateway and controller, then checks that every
published (node, seq) is in the controller's database exactly once and was acknowledged to its node.
Also: `python -m gridhive.bench.ingest run [--messages N --nodes N ...]` prints run()'s JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from ghnode import wire
from ghnode.mqtt import enc_len
from gridhive.broker import MosquittoBroker, free_port, mosquitto_path, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_ID = "bench-gw"
WINDOW = 2000            # QoS 1 publishes a load generator keeps unacknowledged by the broker
WBUF_MAX = 256 * 1024    # bytes queued for the socket before the generator waits
MAX_QUEUED = 100_000     # the broker's per-session queue: the gateway's `broker.max_queued_messages` default
POLL_S = 0.1


def _say(text: str) -> None:
    print(f"[bench ingest] {text}", file=sys.stderr, flush=True)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def node_secret(node: str) -> bytes:
    return hashlib.sha256(b"gridhive bench node " + node.encode()).digest()


def _node_ids(n: int) -> list[str]:
    return [f"n{i:04d}" for i in range(n)]


# --- a minimal MQTT 3.1.1 client: cheap enough that the load generators are not what is measured ----

def _str16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


class _Conn:
    """One MQTT 3.1.1 connection on a plain socket, no threads: QoS 1 publish (PUBACKs counted, in
    order, so packet ids are reused cyclically), subscribe, PUBACK for incoming QoS 1, keepalive off."""

    def __init__(self, host: str, port: int, client_id: str, on_message=None):
        s = socket.create_connection((host, port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = _str16(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _str16(client_id.encode())
        s.sendall(b"\x10" + enc_len(len(body)) + body)
        connack = b""
        while len(connack) < 4:
            chunk = s.recv(4 - len(connack))
            if not chunk:
                raise ConnectionError("the broker closed the connection before CONNACK")
            connack += chunk
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"CONNACK refused: {connack.hex()}")
        s.setblocking(False)
        self.sock = s
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.pid = 0
        self.unacked = 0
        self.on_message = on_message
        self.suback_failures = 0

    def publish(self, topic: bytes, payload: bytes, retain: bool = False) -> None:
        self.pid = self.pid % 65535 + 1
        w = self.wbuf
        w += b"\x33" if retain else b"\x32"
        w += enc_len(4 + len(topic) + len(payload))
        w += struct.pack("!H", len(topic))
        w += topic
        w += struct.pack("!H", self.pid)
        w += payload
        self.unacked += 1

    def subscribe(self, filters: list[bytes]) -> None:
        for i in range(0, len(filters), 200):
            self.pid = self.pid % 65535 + 1
            body = struct.pack("!H", self.pid) + b"".join(_str16(f) + b"\x01" for f in filters[i:i + 200])
            self.wbuf += b"\x82" + enc_len(len(body)) + body

    def pump(self, timeout: float = 0.0) -> None:
        """Write what the socket takes, read what has arrived; wait up to `timeout` for either."""
        r, w, _ = select.select([self.sock], [self.sock] if self.wbuf else [], [], timeout)
        if w:
            try:
                sent = self.sock.send(self.wbuf)
                del self.wbuf[:sent]
            except BlockingIOError:
                pass
        if r:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not data:
                raise ConnectionError("the broker closed the connection")
            self.rbuf += data
            self._parse()

    def drain(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.unacked or self.wbuf:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.unacked} publishes not acknowledged by the broker")
            self.pump(0.05)

    def _parse(self) -> None:
        buf, i, n = self.rbuf, 0, len(self.rbuf)
        while n - i >= 2:
            length, mult, j = 0, 1, i + 1
            while j < n:
                byte = buf[j]
                length += (byte & 0x7F) * mult
                mult *= 128
                j += 1
                if not byte & 0x80:
                    break
            else:
                break  # the length itself is incomplete
            if j + length > n:
                break
            kind = buf[i] >> 4
            if kind == 4:  # PUBACK
                self.unacked -= 1
            elif kind == 3:  # PUBLISH
                qos = (buf[i] >> 1) & 3
                tlen = (buf[j] << 8) | buf[j + 1]
                topic = bytes(buf[j + 2:j + 2 + tlen])
                k = j + 2 + tlen
                if qos:
                    self.wbuf += b"\x40\x02" + buf[k:k + 2]
                    k += 2
                if self.on_message:
                    self.on_message(topic, bytes(buf[k:j + length]))
            elif kind == 9:  # SUBACK
                self.suback_failures += bytes(buf[j + 2:j + length]).count(0x80)
            i = j + length
        del buf[:i]


# --- load generator process ------------------------------------------------------------------------

class SimNode:
    """One simulated node's state: its secret, topics, boot id, sequence and energy counters."""
    __slots__ = ("id", "secret", "topic", "ack_topic", "boot", "seq", "in0", "in1", "acked")

    def __init__(self, node_id: str, rng: random.Random):
        self.id, self.secret = node_id, node_secret(node_id)
        self.topic = wire.topic(node_id, "tele").encode()
        self.ack_topic = wire.topic(node_id, "ack").encode()
        self.boot = rng.getrandbits(31) + 1
        self.seq = 0
        self.in0 = self.in1 = 0
        self.acked: set[int] = set()


def tele_message(node: SimNode, ts_ms: int) -> bytes:
    """The node's next signed `tele` message: 2 channels with rising energy counters, 1 relay."""
    node.seq += 1
    s = node.seq
    node.in0 += 1 + (s % 3 == 0)
    node.in1 += s & 1
    p0, p1 = 300 + (s * 37) % 4000, (s & 1) * 3700
    msg = {"v": 1, "t": "tele", "node": node.id, "boot": node.boot, "seq": s, "ts_ms": ts_ms, "synced": True,
           "vrms_mv": 229_500 + s % 1000, "freq_mhz": 49_980 + s % 40,
           "ch": [{"n": 0, "name": "mains", "irms_ma": p0 * 1000 // 230, "power_w": p0, "va": p0 + 25,
                   "pf_milli": 975, "dir": "import", "energy_in_wh": node.in0, "energy_out_wh": 0,
                   "open": False, "clip": False},
                  {"n": 1, "name": "ev", "irms_ma": p1 * 1000 // 230, "power_w": p1, "va": p1,
                   "pf_milli": 1000 if p1 else None, "dir": "import", "energy_in_wh": node.in1,
                   "energy_out_wh": 0, "open": False, "clip": False}],
           "relays": [{"n": 0, "name": "ev", "on": bool(p1), "trip": None, "override": False,
                       "cause": "remote"}]}
    return wire.encode(msg, node.secret)


def write_gateway_config(workdir: Path, node_ids: list[str], broker_port: int, http_port: int,
                         uplink_port: int) -> Path:
    """gateway.toml and its node registry (2 CT channels and 1 relay per node) in workdir; every
    setting not named here at its default, the uplink plain MQTT on loopback."""
    reg = []
    for node in node_ids:
        reg += [f"[nodes.{node}]", f'secret_hex = "{node_secret(node).hex()}"', f'household = "h-{node}"',
                f"[[nodes.{node}.channels]]", "n = 0", 'name = "mains"', "rating_a = 63", "grid = true",
                f"[[nodes.{node}.channels]]", "n = 1", 'name = "ev"', "rating_a = 32",
                f"[[nodes.{node}.relays]]", "n = 0", 'name = "ev"']
    registry = workdir / "nodes.toml"
    registry.write_text("\n".join(reg) + "\n")
    config = workdir / "gateway.toml"
    config.write_text("\n".join([
        "[gateway]", f'id = "{GATEWAY_ID}"', f'data_dir = "{workdir / "gw"}"',
        f'registry_file = "{registry}"', 'log_level = "WARNING"',
        "[broker]", f"port = {broker_port}",
        "[http]", f"port = {http_port}",
        "[uplink]", 'host = "127.0.0.1"', f"port = {uplink_port}", "tls = false",
    ]) + "\n")
    return config


class _Generator:
    """Plays many nodes over one connection; `_generator_stdio` calls its command methods."""

    def __init__(self, host: str, port: int, wid: int, node_ids: list[str]):
        rng = random.Random(os.getpid() ^ time.time_ns())
        self.nodes = [SimNode(n, rng) for n in node_ids]
        self.by_ack_topic = {n.ack_topic: n for n in self.nodes}
        self.bad_acks = 0
        self.prepared: list[tuple[bytes, bytes]] = []
        self.conn = _Conn(host, port, f"bench-pub-{wid}-{os.getpid()}", on_message=self._on_message)
        self.conn.subscribe([n.ack_topic for n in self.nodes])
        for n in self.nodes:  # the retained birth a node publishes after each connect
            msg = {"v": 1, "t": "status", "node": n.id, "boot": n.boot, "online": True}
            self.conn.publish(wire.topic(n.id, "status").encode(), wire.encode(msg, n.secret), retain=True)
        self.conn.drain()
        if self.conn.suback_failures:
            raise RuntimeError(f"the broker refused {self.conn.suback_failures} ack subscriptions")

    def _on_message(self, topic: bytes, payload: bytes) -> None:
        node = self.by_ack_topic.get(topic)
        try:
            msg = wire.decode(payload, lambda nid: node.secret if node and nid == node.id else None)
        except wire.WireError:
            self.bad_acks += 1
            return
        if msg["t"] != "ack" or msg["boot"] != node.boot:
            self.bad_acks += 1
            return
        node.acked.update(msg["acks"])

    # --- commands -----------------------------------------------------------------------------

    def prepare(self, count: int) -> dict:
        """Encode `count` messages round-robin over this generator's nodes (untimed for the bench)."""
        t0 = time.perf_counter()
        ts = _now_ms()
        nodes = self.nodes
        self.prepared = [(nodes[k % len(nodes)].topic, tele_message(nodes[k % len(nodes)], ts)) for k in range(count)]
        return {"prepared": count, "encode_s": time.perf_counter() - t0,
                "bytes": sum(len(p) for _, p in self.prepared)}

    def burst(self, start_at: float) -> dict:
        """Publish everything prepared as fast as the broker takes it; return when all are PUBACKed."""
        conn, msgs = self.conn, self.prepared
        while time.time() < start_at:
            conn.pump(min(0.01, max(0.0, start_at - time.time())))
        cpu0, t0 = time.process_time(), time.time()
        k, total = 0, len(msgs)
        while k < total or conn.unacked or conn.wbuf:
            while k < total and conn.unacked < WINDOW and len(conn.wbuf) < WBUF_MAX:
                conn.publish(*msgs[k])
                k += 1
            conn.pump(0.0 if k < total and conn.unacked < WINDOW and len(conn.wbuf) < WBUF_MAX else 0.01)
        return {"sent": total, "t_start": t0, "t_done": time.time(), "cpu_s": time.process_time() - cpu0}

    def paced(self, rate: float, duration_s: float, start_at: float) -> dict:
        """Publish rate*duration messages at a steady `rate`, round-robin over the nodes (each node at
        rate/len(nodes) Hz, their phases staggered), encoding each one with ts_ms = now."""
        conn, nodes = self.conn, self.nodes
        total, period = int(round(rate * duration_s)), 1.0 / rate
        k, late = 0, []
        while k < total or conn.unacked or conn.wbuf:
            now = time.time()
            due = min(total, int((now - start_at) * rate) + 1) if now >= start_at else 0
            while k < due and conn.unacked < WINDOW:
                late.append(now - (start_at + k * period))
                node = nodes[k % len(nodes)]
                conn.publish(node.topic, tele_message(node, _now_ms()))
                k += 1
            wait = (start_at + k * period) - time.time() if k < total else 0.05
            conn.pump(max(0.0, min(0.05, wait)))
        late.sort()
        return {"sent": total, "late_ms_p99": late[int(0.99 * (len(late) - 1))] * 1000 if late else 0,
                "late_ms_max": late[-1] * 1000 if late else 0}

    def acks(self) -> dict:
        published = sum(n.seq for n in self.nodes)
        acked = sum(sum(1 for s in n.acked if 1 <= s <= n.seq) for n in self.nodes)
        return {"published": published, "acked": acked, "bad_acks": self.bad_acks,
                "last_seq": {n.id: n.seq for n in self.nodes}}


def _generator_stdio() -> None:
    """A load generator process. stdin: a JSON line [host, port, wid, node_ids], then one JSON command
    per line ([name, args]); stdout: one JSON reply per line."""
    out, stdin = sys.stdout, sys.stdin.buffer
    try:
        host, port, wid, node_ids = json.loads(stdin.readline())
        gen = _Generator(host, port, wid, node_ids)
        out.write(json.dumps({"ready": True}) + "\n")
        out.flush()
        while True:
            readable, _, _ = select.select([stdin], [], [], 0.02)
            if readable:
                line = stdin.readline()
                if not line:
                    return
                cmd, args = json.loads(line)
                if cmd == "stop":
                    return
                out.write(json.dumps(getattr(gen, cmd)(*args)) + "\n")
                out.flush()
            else:
                gen.conn.pump(0.0)
    except Exception:
        out.write(json.dumps({"error": traceback.format_exc()}) + "\n")
        out.flush()


class _Generators:
    """The load generator processes (plain subprocesses: nothing of the caller's __main__ is re-run)."""

    def __init__(self, host: str, port: int, node_ids: list[str], count: int, stack: ExitStack):
        self.procs = []
        code = "from gridhive.bench.ingest import _generator_stdio; _generator_stdio()"
        for w in range(count):
            proc = subprocess.Popen([sys.executable, "-c", code, f"bench-pub-{w}"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, cwd=ROOT, env=_clean_env())
            proc.stdin.write((json.dumps([host, port, w, node_ids[w::count]]) + "\n").encode())
            proc.stdin.flush()
            self.procs.append(proc)
        stack.callback(self.close)
        self._collect(60)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def send(self, cmd: str, *args) -> None:
        self.send_each(cmd, [args] * len(self.procs))

    def send_each(self, cmd: str, args_per_generator: list[tuple]) -> None:
        for proc, args in zip(self.procs, args_per_generator):
            proc.stdin.write((json.dumps([cmd, list(args)]) + "\n").encode())
            proc.stdin.flush()

    def ready(self) -> bool:
        """True when every generator has a reply waiting (one line per command)."""
        return all(select.select([p.stdout], [], [], 0)[0] for p in self.procs)

    def _collect(self, timeout_s: float) -> list[dict]:
        out = []
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            if not select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(f"a load generator did not answer within {timeout_s} s")
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"a load generator exited with {proc.wait(5)}")
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(f"a load generator failed:\n{reply['error']}")
            out.append(reply)
        return out

    def call(self, cmd: str, *args, timeout_s: float = 600) -> list[dict]:
        self.send(cmd, *args)
        return self._collect(timeout_s)

    def close(self) -> None:
        for proc in self.procs:
            try:
                if proc.poll() is None:
                    proc.stdin.write(b'["stop", []]\n')
                    proc.stdin.flush()
            except (OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# --- the processes under test ----------------------------------------------------------------------

def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_cpu() -> tuple[float, float]:
    """(idle, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)


class _CpuWatch:
    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups
        self.t0 = time.monotonic()
        self.cpu0 = {name: sum(_cpu_s(p) for p in pids) for name, pids in groups.items()}
        self.machine0 = _machine_cpu()

    def utilisation(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        out = {name: (sum(_cpu_s(p) for p in pids) - self.cpu0[name]) / wall for name, pids in self.groups.items()}
        idle, total = _machine_cpu()
        out["machine_idle_frac"] = (idle - self.machine0[0]) / max(1, total - self.machine0[1])
        out["wall_s"] = wall
        return out


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("GRIDHIVE_GATEWAY__", "GRIDHIVE_CTL_"))} | {"PYTHONUNBUFFERED": "1"}


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class _Site:
    """Brokers, controller and gateway as processes in `workdir`; everything stops with `stack`."""

    def __init__(self, workdir: Path, node_ids: list[str], stack: ExitStack):
        self.dir, self.node_ids, self.stack = workdir, node_ids, stack
        self.procs: dict[str, subprocess.Popen] = {}
        exe = mosquitto_path()
        if not exe:
            raise RuntimeError("mosquitto is not installed: `apt-get install mosquitto` (or scripts/setup.sh --test)")
        self.port = free_port()
        conf = workdir / "nodes-broker.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"max_queued_messages {MAX_QUEUED}\nmax_packet_size 65536\n"
                        "log_dest stderr\nlog_type error\nlog_type warning\n")
        self._spawn("broker", [exe, "-c", str(conf)])
        wait_for_port(self.port)
        self.ctl_broker = MosquittoBroker(workdir / "ctl-broker")
        self.ctl_broker.start()
        stack.callback(self.ctl_broker.stop)
        self.ctl_db = workdir / "controller.db"
        self.gw_db = workdir / "gw" / "gateway.sqlite3"
        self.http_port = free_port()

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT, env=env or _clean_env())
        log.close()
        self.procs[name] = proc

        self.stack.callback(stop_process, proc, 20)
        return proc

    def pid(self, name: str) -> list[int]:
        if name == "ctl_broker":
            return [self.ctl_broker.proc.pid] if self.ctl_broker.proc else []
        proc = self.procs.get(name)
        return [proc.pid] if proc else []

    def start_controller(self) -> None:
        self._spawn("controller", [sys.executable, "-m", "gridhive.controller", "serve", "--db",
                                   f"sqlite:///{self.ctl_db}", "--broker", f"127.0.0.1:{self.ctl_broker.port}",
                                   "--client-id", "bench-controller", "--log-level", "warning"])
        log = self.dir / "controller.log"
        deadline = time.monotonic() + 60
        while "controller ready" not in _tail(log, 100_000):
            if self.procs["controller"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the controller did not start:\n{_tail(log)}")
            time.sleep(0.05)

    def start_gateway(self, timeout_s: float = 60) -> None:
        config = write_gateway_config(self.dir, self.node_ids, self.port, self.http_port, self.ctl_broker.port)
        sock_path = self.dir / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(sock_path))
        notify.settimeout(0.5)
        proc = self._spawn("gateway", [sys.executable, "-m", "gridhive.gateway", "run", "--config", str(config)],
                           env=_clean_env() | {"NOTIFY_SOCKET": str(sock_path)})
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if "READY=1" in notify.recv(4096).decode().split("\n"):
                        break
                except TimeoutError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway sent no READY=1:\n{_tail(self.dir / 'gateway.log')}")
        finally:
            notify.close()
            sock_path.unlink()
        wait_for_port(self.http_port, 20)

    def stop_gateway(self) -> None:
        """SIGTERM: the gateway commits and acknowledges what it has; its broker session stays."""
        stop_process(self.procs["gateway"], 20)

    def gateway_get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return r.read().decode()

    def gateway_stats(self) -> dict:
        return json.loads(self.gateway_get("/api/stats"))

    def gateway_counts(self) -> tuple[int, int]:
        """(accepted: stored and acked, decided: accepted + rejected + duplicate) from /metrics."""
        accepted = other = 0.0
        for line in self.gateway_get("/metrics").splitlines():
            if line.startswith("gridhive_gateway_messages_accepted_total{"):
                accepted += float(line.rsplit(" ", 1)[1])
            elif line.startswith(("gridhive_gateway_messages_rejected_total{",
                                  "gridhive_gateway_messages_duplicate_total ")):
                other += float(line.rsplit(" ", 1)[1])
        return int(accepted), int(accepted + other)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{_tail(self.dir / (name + '.log'))}")

    def _ctl_query(self, sql: str, params=()) -> list[tuple]:
        if not self.ctl_db.exists():
            return []
        db = sqlite3.connect(f"file:{self.ctl_db}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError:  # the schema is not there yet
            return []
        finally:
            db.close()

    def controller_count(self) -> int:
        rows = self._ctl_query("SELECT count(*) FROM messages")
        return rows[0][0] if rows else 0

    def wait_controller(self, want: int, timeout_s: float, what: str) -> float | None:
        """Wait until the controller's database holds `want` messages; returns when (time.time()), or
        None once nothing is left to come (the gateway's outbox is empty and the count stands still
        for 5 s): then the caller's checks report what is missing."""
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while True:
            have = self.controller_count()
            if have >= want:
                return time.time()
            self.check_alive()
            if have != last:
                last, since = have, time.monotonic()
            elif time.monotonic() - since > 5:
                stats = self.gateway_stats()
                if not (stats["outbox_items"] or stats["outbox_batches"] or stats["pending"]):
                    _say(f"{what}: the controller stopped at {have} of {want} messages")
                    return None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: the controller has {self.controller_count()} of {want} messages "
                                   f"after {timeout_s:.0f} s\ngateway log:\n{_tail(self.dir / 'gateway.log')}")
            time.sleep(POLL_S)

    def verify(self, last_seq: dict[str, int]) -> dict:
        """Every (node, seq) 1..last_seq[node] in both databases exactly once, nothing else."""
        per_node = {node: (lo, hi, n) for node, lo, hi, n in
                    self._ctl_query("SELECT node, min(seq), max(seq), count(*) FROM messages GROUP BY node")}
        missing = extra = 0
        for node, last in last_seq.items():
            lo, hi, n = per_node.pop(node, (1, 0, 0))
            # A node's rows are unique by (node, seq) (primary key), so min 1, max last and count last
            # mean exactly the seqs 1..last.
            if lo == 1 and hi == last and n == last:
                continue
            missing += max(0, last - n)
            extra += max(0, n - last) + (hi > last) + (lo < 1)
        extra += sum(n for _, _, n in per_node.values())
        dup_items = self._ctl_query("SELECT coalesce(sum(items - stored - rejected), 0) FROM batches")
        gw = sqlite3.connect(f"file:{self.gw_db}?mode=ro", uri=True, timeout=10)
        try:
            gateway_stored = gw.execute("SELECT count(*) FROM message").fetchone()[0]
            quarantined = gw.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        finally:
            gw.close()
        return {"controller_stored": self.controller_count(),
                "controller_missing": missing, "controller_unexpected": extra,
                "controller_duplicate_items": dup_items[0][0] if dup_items else 0,
                "gateway_stored": gateway_stored, "gateway_quarantined": quarantined}

    def latencies(self, since_ts_ms: int) -> list[tuple[str, int, int, int]]:
        """(node, seq, ts_ms, received_ms) of every controller row published since `since_ts_ms`."""
        return self._ctl_query("SELECT node, seq, ts_ms, received_ms FROM messages WHERE ts_ms >= ?", (since_ts_ms,))


class _RowWatcher(threading.Thread):
    """Polls the controller's database every `interval_s` and records when each new row appeared."""

    def __init__(self, db_path: Path, interval_s: float = 0.01):
        super().__init__(name="bench-row-watcher", daemon=True)
        self.db_path, self.interval_s = db_path, interval_s
        self.seen_ms: dict[tuple[str, int], int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        last = db.execute("SELECT coalesce(max(rowid), 0) FROM messages").fetchone()[0]
        try:
            while not self.halt.is_set():
                rows = db.execute("SELECT rowid, node, seq FROM messages WHERE rowid > ? ORDER BY rowid",
                                  (last,)).fetchall()
                now = _now_ms()
                for rowid, node, seq in rows:
                    self.seen_ms[(node, seq)] = now
                    last = rowid
                time.sleep(self.interval_s)
        finally:
            db.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


def _wait_acks(gens: _Generators, timeout_s: float) -> list[dict]:
    """The generators' ack tallies once every published message is acked, or the count has stood
    still for 5 s, or `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while True:
        acks = gens.call("acks")
        acked = sum(a["acked"] for a in acks)
        if acked >= sum(a["published"] for a in acks) or time.monotonic() > deadline:
            return acks
        if acked != last:
            last, since = acked, time.monotonic()
        elif time.monotonic() - since > 5:
            return acks
        time.sleep(0.2)


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


# --- the raw broker rate ---------------------------------------------------------------------------

def _queue_burst(gens: _Generators) -> float:
    """The generators publish everything prepared while its receiver is away: it waits in the
    receiver's persistent session. Returns the generators' publish rate (all PUBACKed)."""
    start_at = time.time() + 0.2
    gens.send("burst", start_at)
    pub = gens._collect(600)
    return sum(r["sent"] for r in pub) / (max(r["t_done"] for r in pub) - start_at)


def _drain_rate(samples: list[tuple[float, int, float]]) -> tuple[float, float, float]:
    """(messages/s, receiver CPU-seconds, seconds) of a drain from its samples (time, messages so
    far, receiver CPU-seconds), the first one taken before anything arrived: from the last sample
    still at 0 (the receiver is started and connecting) to the last one. The receiver's start-up
    before that is left out; what is counted errs towards a lower rate by up to one sample interval."""
    start = max(i for i, x in enumerate(samples) if x[1] == 0)
    first, last = samples[start], samples[-1]
    return last[1] / (last[0] - first[0]), last[2] - first[2], last[0] - first[0]


def _raw_phase(site: _Site, gens: _Generators, count: int) -> dict:
    sub_exe = shutil.which("mosquitto_sub")
    if not sub_exe:
        raise RuntimeError("mosquitto_sub is not installed: `apt-get install mosquitto-clients` "
                           "(scripts/setup.sh --test installs it)")
    # The same session as the gateway's: MQTT 5, persistent (-c, expiry -x), QoS 1, acking on receipt.
    # -F %t prints one line (the topic) per message; -C: exit after `count` messages.
    session = [sub_exe, "-h", "127.0.0.1", "-p", str(site.port), "-V", "mqttv5", "-q", "1", "-c", "-x", "3600",
               "-i", "bench-raw", "-t", "gh/+/tele"]
    return _drain_phase(site, gens, count, "mosquitto_sub", session + ["-E"], session + ["-F", "%t", "-C", str(count)])


def _python_client_phase(site: _Site, gens: _Generators, count: int) -> dict:
    """The same drain by the gateway's own MQTT client (`subscribe` below): what one Python process
    spends only receiving and PUBACKing, before the gateway's work on a message begins."""
    session = [sys.executable, "-m", "gridhive.bench.ingest", "subscribe", "--port", str(site.port),
               "--client-id", "bench-python", "--topic", "gh/+/tele"]
    return _drain_phase(site, gens, count, "the Python client", session + ["--leave"],
                        session + ["--count", str(count)])


def _drain_phase(site: _Site, gens: _Generators, count: int, name: str, leave: list[str], drain: list[str]) -> dict:
    """A subscriber that prints a line per message: it subscribes and leaves, the burst is queued
    in its session, and it reconnects and drains it; the rate from its output lines."""
    subprocess.run(leave, check=True, timeout=30, stderr=subprocess.DEVNULL)
    publish_rate = _queue_burst(gens)
    broker_cpu0, t0 = _cpu_s(site.pid("broker")[0]), time.time()
    samples = [(t0, 0, 0.0)]  # (time, lines so far, subscriber CPU-seconds)
    with open(site.dir / "sub.log", "wb") as errlog:
        proc = subprocess.Popen(drain, stdout=subprocess.PIPE, stderr=errlog)

    def read():
        lines = 0
        while True:
            chunk = proc.stdout.read1(1 << 16)
            if not chunk:
                return
            lines += chunk.count(b"\n")
            samples.append((time.time(), lines, _cpu_s(proc.pid)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        reader.join(max(60, count / 1000))  # EOF: the subscriber has exited after its count
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    got = samples[-1][1] if samples else 0
    if got != count:
        raise RuntimeError(f"{name} received {got} of {count} messages: {_tail(site.dir / 'sub.log')}")
    rate, cpu_s, wall_s = _drain_rate(samples)
    return {"msgs_per_s": rate, "publish_msgs_per_s": publish_rate, "cpu_util": cpu_s / wall_s,
            "broker_cpu_util": (_cpu_s(site.pid("broker")[0]) - broker_cpu0) / (samples[-1][0] - t0)}


def subscribe(port: int, client_id: str, topic: str, leave: bool, count: int) -> None:
    """`_python_client_phase`'s subscriber: gateway.brokerlink's session (MQTT 5, persistent, QoS 1),
    every message PUBACKed on receipt and a line printed for it, nothing else."""
    import asyncio

    from gridhive.gateway.brokerlink import BrokerLink

    async def main() -> None:
        done, got = asyncio.Event(), 0

        def on_messages(batch) -> None:
            nonlocal got
            for m in batch:
                link.ack(m)
            sys.stdout.buffer.write(b"\n" * len(batch))
            sys.stdout.buffer.flush()
            got += len(batch)
            if got >= count:
                done.set()

        def on_connect() -> None:
            if leave:  # subscribed (the SUBSCRIBE went out with the CONNECT): leave the session
                asyncio.get_running_loop().call_later(0.5, done.set)

        link = BrokerLink(name="bench", host="127.0.0.1", port=port, client_id=client_id,
                          subscriptions=((topic, 1),), on_messages=on_messages, on_connect=on_connect)
        link.start(asyncio.get_running_loop())
        await done.wait()
        await asyncio.sleep(0.2)  # the last PUBACKs leave

    asyncio.run(main())


def _gateway_phase(site: _Site, gens: _Generators, count: int, cpu_groups: dict) -> dict:
    """The gateway's drain of the same backlog: stopped (its session stays in the broker), the
    burst queued, started again; rate from its accepted counter (stored, committed, acked)."""
    site.stop_gateway()
    publish_rate = _queue_burst(gens)
    site.start_gateway()
    gw_pid = site.pid("gateway")[0]
    watch = _CpuWatch(cpu_groups | {"gateway": [gw_pid]})
    samples = [(time.time(), 0, _cpu_s(gw_pid))]
    deadline = time.time() + max(120.0, count / 300)
    while samples[-1][1] < count:
        time.sleep(POLL_S)
        accepted, decided = site.gateway_counts()
        samples.append((time.time(), accepted, _cpu_s(gw_pid)))
        if decided >= count and samples[-11:][0][1] == accepted and accepted < count:
            _say(f"gateway: only {accepted} of {count} messages accepted, the rest refused")
            break  # everything decided, nothing accepted for 1 s: the checks below report it
        if time.time() > deadline:
            raise RuntimeError(f"the gateway stored {accepted} of {count} messages:\n{_tail(site.dir / 'gateway.log')}")
    cpu = watch.utilisation()
    rate, cpu_s, wall_s = _drain_rate(samples)
    return {"gateway_msgs_per_s": rate, "gateway_cpu_s": cpu_s, "gateway_cpu_util": cpu_s / wall_s,
            "publish_msgs_per_s_gateway_phase": publish_rate,
            "cpu": cpu, "t_start": samples[0][0]}


# --- run() and soak() -----------------------------------------------------------------------------

def run(messages: int = 60_000, nodes: int = 200, publishers: int = 2, latency_rate: float = 500.0,
        latency_s: float = 10.0) -> dict:
    """One run of the three phases (see the module docstring); figures in a dict, JSON-ready."""
    load_start = os.getloadavg()[0]
    node_ids = _node_ids(nodes)
    publishers = max(1, min(publishers, nodes))
    with tempfile.TemporaryDirectory(prefix="gridhive-bench-ingest-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        site = _Site(workdir, node_ids, stack)
        site.start_controller()
        gens = _Generators("127.0.0.1", site.port, node_ids, publishers, stack)
        gens.send_each("prepare", [(messages // publishers + (w < messages % publishers),)
                                   for w in range(publishers)])
        prep = gens._collect(600)
        count = sum(r["prepared"] for r in prep)
        _say(f"{count} messages of ~{sum(r['bytes'] for r in prep) // count} bytes encoded for {nodes} nodes "
             f"by {publishers} generators in {max(r['encode_s'] for r in prep):.1f} s")
        raw = _raw_phase(site, gens, count)
        _say(f"raw: mosquitto_sub drained {raw['msgs_per_s']:.0f}/s, "
             f"generators published {raw['publish_msgs_per_s']:.0f}/s")
        py = _python_client_phase(site, gens, count)
        _say(f"raw: the gateway's MQTT client alone drained {py['msgs_per_s']:.0f}/s "
             f"at {py['cpu_util']:.2f} cores")

        site.start_gateway()
        time.sleep(1.0)  # the retained births arrive and are stored
        deadline = time.monotonic() + 30
        while site.gateway_stats()["pending"] and time.monotonic() < deadline:
            time.sleep(POLL_S)
        groups = {"broker": site.pid("broker"), "publishers": gens.pids, "controller": site.pid("controller"),
                  "ctl_broker": site.pid("ctl_broker")}
        gw = _gateway_phase(site, gens, count, groups)
        cpu = gw["cpu"]
        _say(f"gateway: drained {gw['gateway_msgs_per_s']:.0f}/s (gateway process at {gw['gateway_cpu_util']:.2f} "
             f"cores, machine idle {cpu['machine_idle_frac']:.0%})")
        t_ctl = site.wait_controller(count, max(120.0, count / 200), "burst")

        # Latency at a steady, moderate rate.
        watcher = _RowWatcher(site.ctl_db)
        watcher.start()
        paced_from = _now_ms()
        start_at = time.time() + 0.3
        paced = gens.call("paced", latency_rate / publishers, latency_s, start_at, timeout_s=latency_s + 600)
        n_paced = sum(r["sent"] for r in paced)
        site.wait_controller(count + n_paced, 120, "latency phase")
        time.sleep(0.05)
        watcher.stop()
        rows = site.latencies(paced_from)
        lat = sorted(float(rx - ts) for _, _, ts, rx in rows)
        visible = sorted(float(watcher.seen_ms[(n, s)] - ts) for n, s, ts, _ in rows if (n, s) in watcher.seen_ms)

        # Everything acknowledged to its node, and in both databases exactly once.
        acks = _wait_acks(gens, 60)
        last_seq = {node: seq for a in acks for node, seq in a["last_seq"].items()}
        checks = site.verify(last_seq)
        stats = site.gateway_stats()
        site.check_alive()
    gateway_rate = gw["gateway_msgs_per_s"]  # accepted: verified, stored (committed) and acked
    raw_rate = raw["msgs_per_s"]
    return {
        "gateway_msgs_per_s": round(gateway_rate),
        "raw_broker_msgs_per_s": round(raw_rate),
        "ratio": round(gateway_rate / raw_rate, 3),
        "raw_python_client_msgs_per_s": round(py["msgs_per_s"]),
        "raw_python_client_cpu_util": round(py["cpu_util"], 2),
        "ratio_to_python_client": round(gateway_rate / py["msgs_per_s"], 3),
        "latency_p50_ms": _percentile(lat, 0.50) if lat else None,
        "latency_p99_ms": _percentile(lat, 0.99) if lat else None,
        "load_avg_1m": round(load_start, 2),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "messages": count,
        "nodes": nodes,
        "publishers": publishers,
        "publish_msgs_per_s": round(raw["publish_msgs_per_s"]),
        "publish_msgs_per_s_gateway_phase": round(gw["publish_msgs_per_s_gateway_phase"]),
        "raw_broker_cpu_util": round(raw["broker_cpu_util"], 2),
        "raw_mosquitto_sub_cpu_util": round(raw["cpu_util"], 2),
        "gateway_cpu_util": round(gw["gateway_cpu_util"], 2),
        "gateway_msgs_per_cpu_s": round(gateway_rate / max(1e-9, gw["gateway_cpu_util"])),
        "broker_cpu_util": round(cpu["broker"], 2),
        "publishers_cpu_util": round(cpu["publishers"], 2),
        "controller_cpu_util": round(cpu["controller"] + cpu["ctl_broker"], 2),
        "machine_idle_frac": round(cpu["machine_idle_frac"], 3),
        "end_to_end_msgs_per_s": round(count / (t_ctl - gw["t_start"])) if t_ctl else None,
        "latency_rate_msgs_per_s": latency_rate,
        "latency_samples": len(lat),
        "latency_max_ms": lat[-1] if lat else None,
        "latency_visible_p50_ms": _percentile(visible, 0.50) if visible else None,
        "latency_visible_p99_ms": _percentile(visible, 0.99) if visible else None,
        "publish_late_ms_max": round(max(r["late_ms_max"] for r in paced), 1),
        "messages_total": count + n_paced,
        "gateway_accepted": sum(stats["accepted"].values()),
        "gateway_rejected": stats["rejected_total"],
        "gateway_duplicates": stats["duplicates"],
        **checks,
        "acked_to_nodes": sum(a["acked"] for a in acks),
        "bad_acks": sum(a["bad_acks"] for a in acks),
    }


def soak(nodes: int = 1000, rate_hz: float = 1.0, duration_s: float = 600, publishers: int = 2) -> dict:
    """`nodes` simulated nodes at `rate_hz` each for `duration_s` through one gateway to the controller;
    checks every published (node, seq) reached the controller's database exactly once and was acked."""
    load_start = os.getloadavg()[0]
    node_ids = _node_ids(nodes)
    publishers = max(1, min(publishers, nodes))
    with tempfile.TemporaryDirectory(prefix="gridhive-soak-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        site = _Site(workdir, node_ids, stack)
        site.start_controller()
        gens = _Generators("127.0.0.1", site.port, node_ids, publishers, stack)
        site.start_gateway()
        time.sleep(2)
        groups = {"gateway": site.pid("gateway"), "broker": site.pid("broker"), "publishers": gens.pids,
                  "controller": site.pid("controller") + site.pid("ctl_broker")}
        watch = _CpuWatch(groups)
        paced_from = _now_ms()
        start_at = time.time() + 0.5
        gens.send_each("paced", [(rate_hz * len(node_ids[w::publishers]), duration_s, start_at)
                                 for w in range(publishers)])
        _say(f"soak: {nodes} nodes at {rate_hz} Hz for {duration_s:.0f} s ({nodes * rate_hz:.0f} messages/s)")
        max_backlog = 0
        t_next = time.time() + 10
        while not gens.ready():
            time.sleep(0.2)
            site.check_alive()
            if time.time() >= t_next:
                t_next += 10
                stats = site.gateway_stats()
                ctl = site.controller_count()
                backlog = sum(stats["accepted"].values()) - ctl
                max_backlog = max(max_backlog, backlog)
                _say(f"soak {time.time() - start_at:5.0f} s: gateway accepted {sum(stats['accepted'].values())}, "
                     f"controller {ctl}, outbox {stats['outbox_items']} items / {stats['outbox_batches']} batches, "
                     f"load {os.getloadavg()[0]:.2f}")
        paced = gens._collect(60)
        cpu = watch.utilisation()
        published = sum(r["sent"] for r in paced)
        t_end = time.time()
        try:
            site.wait_controller(published, 300, "soak")
        except RuntimeError as e:
            _say(str(e).splitlines()[0])
        drain_s = time.time() - t_end
        acks = _wait_acks(gens, 60)
        last_seq = {node: seq for a in acks for node, seq in a["last_seq"].items()}
        checks = site.verify(last_seq)
        stats = site.gateway_stats()
        rows = site.latencies(paced_from)
        lat = sorted(float(rx - ts) for _, _, ts, rx in rows)
        site.check_alive()
    acked = sum(a["acked"] for a in acks)
    return {
        "zero_loss": (checks["controller_missing"] == 0 and checks["controller_unexpected"] == 0
                      and checks["controller_stored"] == published and acked == published),
        "nodes": nodes, "rate_hz": rate_hz, "duration_s": duration_s, "publishers": publishers,
        "published": published,
        **checks,
        "acked_to_nodes": acked,
        "bad_acks": sum(a["bad_acks"] for a in acks),
        "gateway_accepted": sum(stats["accepted"].values()),
        "gateway_rejected": stats["rejected_total"],
        "gateway_duplicates": stats["duplicates"],
        "max_controller_backlog": max_backlog,
        "drain_after_end_s": round(drain_s, 1),
        "latency_p50_ms": _percentile(lat, 0.50) if lat else None,
        "latency_p99_ms": _percentile(lat, 0.99) if lat else None,
        "latency_max_ms": lat[-1] if lat else None,
        "publish_late_ms_p99": round(max(r["late_ms_p99"] for r in paced), 1),
        "publish_late_ms_max": round(max(r["late_ms_max"] for r in paced), 1),
        "gateway_cpu_util": round(cpu["gateway"], 3),
        "broker_cpu_util": round(cpu["broker"], 3),
        "publishers_cpu_util": round(cpu["publishers"], 3),
        "controller_cpu_util": round(cpu["controller"], 3),
        "machine_idle_frac": round(cpu["machine_idle_frac"], 3),
        "load_avg_1m": round(load_start, 2),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gridhive.bench.ingest", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="the benchmark `gridhive bench ingest` runs, with its parameters")
    p_run.add_argument("--messages", type=int, default=60_000)
    p_run.add_argument("--nodes", type=int, default=200)
    p_run.add_argument("--publishers", type=int, default=2)
    p_run.add_argument("--latency-rate", type=float, default=500.0)
    p_run.add_argument("--latency-s", type=float, default=10.0)
    p_soak = sub.add_parser("soak", help="many nodes at a steady rate for a long time; checks zero loss")
    p_soak.add_argument("--nodes", type=int, default=1000)
    p_soak.add_argument("--rate-hz", type=float, default=1.0)
    p_soak.add_argument("--duration-s", type=float, default=600)
    p_soak.add_argument("--publishers", type=int, default=2)
    p_sub = sub.add_parser("subscribe", help="the bench's Python subscriber (a line per message on stdout)")
    p_sub.add_argument("--port", type=int, required=True)
    p_sub.add_argument("--client-id", required=True)
    p_sub.add_argument("--topic", required=True)
    p_sub.add_argument("--leave", action="store_true", help="subscribe and leave the session")
    p_sub.add_argument("--count", type=int, default=0, help="exit after this many messages")
    args = parser.parse_args(argv)
    if args.cmd == "subscribe":
        subscribe(args.port, args.client_id, args.topic, args.leave, args.count)
        return 0
    if args.cmd == "run":
        figures = run(args.messages, args.nodes, args.publishers, args.latency_rate, args.latency_s)
        print(json.dumps(figures, sort_keys=True))
        return 0
    figures = soak(args.nodes, args.rate_hz, args.duration_s, args.publishers)
    print(json.dumps(figures, sort_keys=True))
    return 0 if figures["zero_loss"] else 1


if __name__ == "__main__":
    sys.exit(main())
