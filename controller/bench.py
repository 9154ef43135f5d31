"""`gridhive bench ctl-ingest`: how fast the controller stores and acknowledges gateway batches.

A real Mosquitto broker, the ControllerService in this process, gateways emulated by paho clients:
- burst: every batch published at once; items committed and acknowledged per second.
- paced: batches at a steady rate well below the burst rate; publish -> ack latency per batch.
Database: a fresh SQLite file, or GRIDHIVE_CTL_BENCH_DB (e.g. postgresql://…, an empty database).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from gridhive.broker import MosquittoBroker

from .service import ControllerService

GATEWAYS = 4
ITEMS_PER_BATCH = 100
BURST_BATCHES = 400       # 40,000 items
PACED_BATCHES_PER_S = 20  # 2,000 items/s
PACED_S = 5.0


def _items(gw, gseq):
    return [{"v": 1, "t": "tele", "node": f"{gw}-n{i % 20}", "boot": 1, "seq": gseq * 10 + i // 20,
             "ts_ms": 1_700_000_000_000 + gseq, "synced": True, "vrms_mv": 230_000, "relays": [],
             "ch": [{"n": 0, "name": "main", "irms_ma": 1000, "power_w": 230, "va": 240, "pf_milli": 958,
                     "dir": "import", "energy_in_wh": gseq, "energy_out_wh": 0, "open": False, "clip": False}]}
            for i in range(ITEMS_PER_BATCH)]


class _Gateways:
    def __init__(self, broker):
        self.acked_at = {}   # (gw, gseq) -> monotonic s
        self.sent_at = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-gateways")
        self.client.on_message = self._on_ack
        self.client.connect(broker.host, broker.port)
        # As the controller does: without it Nagle holds each batch for the previous one's TCP ACK.
        self.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.subscribe("ghc/+/ack", qos=1)
        self.client.loop_start()

    def _on_ack(self, _c, _u, message):
        now = time.monotonic()
        body = json.loads(message.payload)
        with self.lock:
            for gseq in body["acks"]:
                self.acked_at.setdefault((body["gw"], gseq), now)

    def publish(self, gw, gseq, payload):
        self.sent_at[(gw, gseq)] = time.monotonic()
        self.client.publish(f"ghc/{gw}/up", payload, qos=1)

    def wait(self, keys, timeout_s=120):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if all(k in self.acked_at for k in keys):
                    return
            time.sleep(0.005)
        raise TimeoutError("the controller did not acknowledge every batch")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _payloads(first_gseq, count):
    out = []
    for n in range(count):
        gw, gseq = f"gw-{n % GATEWAYS}", first_gseq + n // GATEWAYS
        out.append((gw, gseq, json.dumps({"v": 1, "gw": gw, "gseq": gseq, "ts_ms": 0,
                                          "items": _items(gw, gseq)}).encode()))
    return out


def run():
    with tempfile.TemporaryDirectory(prefix="gridhive-bench-") as tmp:
        broker = MosquittoBroker(Path(tmp))
        broker.start()
        db_url = os.environ.get("GRIDHIVE_CTL_BENCH_DB") or f"sqlite:///{tmp}/controller.db"
        service = ControllerService(db_url, broker.host, broker.port, client_id="bench-controller")
        loop, stop = asyncio.new_event_loop(), asyncio.Event()
        thread = threading.Thread(target=lambda: loop.run_until_complete(service.run(stop)), daemon=True)
        thread.start()
        gateways = _Gateways(broker)
        try:
            while not service.ready.is_set():
                time.sleep(0.01)
            burst = _payloads(1, BURST_BATCHES)
            t0 = time.monotonic()
            for gw, gseq, payload in burst:
                gateways.publish(gw, gseq, payload)
            gateways.wait([(gw, gseq) for gw, gseq, _ in burst])
            burst_s = time.monotonic() - t0

            paced = _payloads(10_000, int(PACED_BATCHES_PER_S * PACED_S))
            t0 = time.monotonic()
            for n, (gw, gseq, payload) in enumerate(paced):
                time.sleep(max(0.0, t0 + n / PACED_BATCHES_PER_S - time.monotonic()))
                gateways.publish(gw, gseq, payload)
            keys = [(gw, gseq) for gw, gseq, _ in paced]
            gateways.wait(keys)
            latencies_ms = sorted((gateways.acked_at[k] - gateways.sent_at[k]) * 1000 for k in keys)
        finally:
            gateways.close()
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            broker.stop()
    return {
        "backend": db_url.split(":", 1)[0],
        "burst_items": BURST_BATCHES * ITEMS_PER_BATCH,
        "burst_items_per_s": round(BURST_BATCHES * ITEMS_PER_BATCH / burst_s),
        "burst_batches_per_s": round(BURST_BATCHES / burst_s, 1),
        "paced_items_per_s": PACED_BATCHES_PER_S * ITEMS_PER_BATCH,
        "ack_latency_p50_ms": round(statistics.median(latencies_ms), 2),
        "ack_latency_p99_ms": round(latencies_ms[int(0.99 * (len(latencies_ms) - 1))], 2),
        "items_stored": service.counters().get("items_stored", 0),
    }


if __name__ == "__main__":
    print(json.dumps(run(), sort_keys=True))
