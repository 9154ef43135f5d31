"""`gridhive bench ingest-path`: the CPU one gateway spends per node message on each step of its
path, in one process on one core, with no network. `bench ingest` says how fast the gateway
process drains a broker; this one says where its time goes, so a change to one step can be
measured by itself (as `bench ledger-path` does for a validator).

The gateway's own cores, built from a config written as `bench ingest` writes it (every setting at
its default, `storage.synchronous` FULL on a real SQLite file), take `messages` signed `tele`
messages of `nodes` nodes (the same messages as `bench ingest`'s generators send) in batches of
`ingest.commit_max_messages`, the way the service does:
- `receive_us`: split MQTT 5 QoS 1 PUBLISH packets off a socket buffer, decode them, build the
  PUBACKs (gateway.brokerlink);
- `ingest_us`: `Ingest.receive`: verify, sequence and range checks, interval energies; of which
  `verify_us`, `wire.verify` timed alone on the same payloads;
- `store_us`: `Storage.write` of the batch in one transaction (CPU only: the fsync waits are not
  counted);
- `ack_us`: the signed acks to the nodes, as MQTT packets;
- `uplink_us`: cutting the outbox into uplink batches and deleting them once acknowledged.
`total_us` is their sum and `msgs_per_cpu_s` the rate one core could reach on these steps alone.
What the running service adds on top (asyncio, metrics, Home Assistant states, the uplink's MQTT
client) shows as the difference to `bench ingest`'s `gateway_msgs_per_cpu_s`.
"""
from __future__ import annotations

import gc
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from ghnode import wire
from gridhive.gateway.brokerlink import PUBLISH, Received, decode_publish, publish_packet, puback_packet, read_packets
from gridhive.gateway.config import load_config
from gridhive.gateway.ingest import ACCEPTED, Ingest, Limits, ack_payloads
from gridhive.gateway.storage import Storage, node_rows
from gridhive.gateway.service import tune_gc
from gridhive.gateway.uplink import CUT_AHEAD

from . import StepClock
from .ingest import GATEWAY_ID, SimNode, tele_message, write_gateway_config

STEPS = ("receive", "ingest", "store", "ack", "uplink")
READ_BYTES = 256 * 1024  # what asyncio's selector transport reads from a socket at most


def run(messages: int = 60_000, nodes: int = 200) -> dict:
    threshold = gc.get_threshold()
    tune_gc()  # as the gateway process does
    try:
        return _run(messages, nodes)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def _run(messages: int, nodes: int) -> dict:
    clock = StepClock(STEPS + ("verify",))
    timed = clock.timed
    with tempfile.TemporaryDirectory(prefix="gridhive-ingest-path-") as tmp:
        node_ids = [f"n{i:04d}" for i in range(nodes)]
        cfg = load_config(write_gateway_config(Path(tmp), node_ids, broker_port=1883, http_port=8080,
                                               uplink_port=8883))
        cfg.db_path.parent.mkdir(parents=True, exist_ok=True)
        storage = Storage(cfg.db_path, cfg.storage.synchronous, outbox=cfg.uplink.enabled)
        ingest = Ingest(cfg.registry, Limits.of(cfg), storage.is_known, storage.load_tracks())
        now_ms = time.time_ns() // 1_000_000
        rng = random.Random(7)
        sims = [SimNode(n, rng) for n in node_ids]
        for sim in sims:  # each node's birth, as after its connect: the boot its acks must name
            birth = {"v": 1, "t": "status", "node": sim.id, "boot": sim.boot, "online": True}
            ingest.receive(wire.topic(sim.id, "status"), wire.encode(birth, sim.secret), now_ms)
        storage.write([], node_rows(ingest.tracks))
        batch_size = cfg.ingest.commit_max_messages
        stored = 0
        for first in range(0, messages, batch_size):
            count = min(batch_size, messages - first)
            payloads = [tele_message(sims[(first + k) % nodes], now_ms) for k in range(count)]
            stream = b"".join(
                publish_packet(sims[(first + k) % nodes].topic.decode(), p, 1, False, 1 + k % 65535, mqtt5=True)
                for k, p in enumerate(payloads))
            received = timed("receive", lambda: _receive(stream))
            verdicts = timed("ingest", lambda: [(ingest.receive(m.topic, m.payload, now_ms), now_ms) for m in received])
            if any(v.outcome != ACCEPTED for v, _ in verdicts):
                raise RuntimeError(f"ingest refused a benchmark message: {Counter(v.reason for v, _ in verdicts)}")
            ingest.flushing()
            stored += timed("store", lambda: storage.write(
                verdicts, node_rows({v.node: ingest.tracks[v.node] for v, _ in verdicts})))
            ingest.stored()
            timed("ack", lambda: _acks(verdicts, ingest, cfg.registry))
            timed("uplink", lambda: _uplink(storage, cfg.uplink.batch_items, now_ms))
            timed("verify", lambda: [wire.verify(p, cfg.registry.secret_for) for p in payloads])
        if storage.outbox_depth() != (0, 0):
            raise RuntimeError(f"the outbox still holds {storage.outbox_depth()} (items, batches)")
        storage.close()
    if stored != messages:
        raise RuntimeError(f"{stored} of {messages} messages were stored")
    figures = clock.us_per(messages, total_of=STEPS)
    figures["msgs_per_cpu_s"] = round(1e6 / figures["total_us"])
    figures["messages"] = messages
    return figures


def _receive(stream: bytes) -> list[Received]:
    """What BrokerLink does with socket reads of PUBLISH packets (the PUBACKs built, not sent)."""
    buffer, received = bytearray(), []
    for start in range(0, len(stream), READ_BYTES):
        buffer += stream[start:start + READ_BYTES]
        packets, used = read_packets(buffer)
        _decode(packets, received)
        del packets  # release the memoryviews into the buffer before it is resized
        del buffer[:used]
    return received


def _decode(packets, received: list[Received]) -> None:
    for kind, flags, body in packets:
        if kind != PUBLISH:
            raise RuntimeError(f"packet type {kind} in the benchmark's stream")
        topic, payload, qos, retain, pid = decode_publish(flags, body, mqtt5=True)
        puback_packet(pid)
        received.append(Received(topic, payload, qos, retain, pid, 1))


def _acks(verdicts, ingest: Ingest, registry) -> int:
    seqs: dict[str, list[int]] = {}
    for v, _ in verdicts:
        seqs.setdefault(v.node, []).append(v.msg["seq"])
    packets = [publish_packet(wire.topic(node, "ack"), payload, 1, False, 1, mqtt5=True)
               for node, node_seqs in seqs.items()
               for payload in ack_payloads(node, ingest.tracks[node].boot, node_seqs, registry.secret_for(node))]
    return len(packets)


def _uplink(storage: Storage, batch_items: int, now_ms: int) -> None:
    while formed := storage.form_batches(GATEWAY_ID, batch_items, now_ms, max_batches=CUT_AHEAD):
        storage.delete_batches([gseq for gseq, _ in formed])


if __name__ == "__main__":
    import json

    print(json.dumps(run()))
