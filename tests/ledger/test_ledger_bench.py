"""LEDGER.md §17: `gridhive bench ledger` runs real validator processes and reports its figures."""
from gridhive.ledger.bench import run


def test_the_benchmark_reports_throughput_finality_cpu_and_memory():
    figures = run(validators=4, max_tx_s=150, duration_s=2.5, warmup_s=1.5, clients=60)
    assert {"tx_per_s", "finality_p50_ms", "finality_p99_ms", "cpu_ms_per_tx", "rss_mb_max", "validators"} <= set(figures)
    assert figures["validators"] == 4 and figures["tx_per_s"] > 0 and figures["cpu_ms_per_tx"] > 0
    assert 0 < figures["finality_p50_ms"] <= figures["finality_p99_ms"]
    assert 20 < figures["rss_mb_max"] < 150
