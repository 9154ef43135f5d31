"""Smoke test of `gridhive bench ingest` with tiny parameters: the real processes start, the figures
are there, and every message was stored by the gateway and the controller and acked to its node."""
import pytest

from gridhive.bench import BENCHES
from gridhive.bench import ingest

pytestmark = pytest.mark.broker

KEYS = ("gateway_msgs_per_s", "raw_broker_msgs_per_s", "ratio", "latency_p50_ms", "latency_p99_ms", "load_avg_1m",
        "raw_python_client_msgs_per_s", "ratio_to_python_client")


def test_bench_ingest_tiny_run_stores_and_acks_every_message():
    assert BENCHES["ingest"] == "gridhive.bench.ingest"
    figures = ingest.run(messages=2000, nodes=20, publishers=1, latency_rate=200, latency_s=1.0)
    for key in KEYS:
        assert key in figures, key
    total = figures["messages_total"]
    assert figures["messages"] == 2000 and total == 2200  # burst + 200 messages/s for 1 s
    assert figures["gateway_stored"] == figures["gateway_accepted"] == total
    assert figures["controller_stored"] == total
    assert figures["controller_missing"] == figures["controller_unexpected"] == 0
    assert figures["acked_to_nodes"] == total and figures["bad_acks"] == 0
    assert figures["gateway_rejected"] == 0
    assert figures["latency_samples"] == 200
    assert figures["gateway_msgs_per_s"] > 0 and figures["raw_broker_msgs_per_s"] > 0
    assert figures["raw_python_client_msgs_per_s"] > 0  # it drained every message, or run() raises
    ratio = figures["gateway_msgs_per_s"] / figures["raw_python_client_msgs_per_s"]  # of rounded rates
    assert figures["ratio_to_python_client"] == pytest.approx(ratio, abs=0.002)
    assert 0 < figures["latency_p50_ms"] <= figures["latency_p99_ms"] < 10_000
