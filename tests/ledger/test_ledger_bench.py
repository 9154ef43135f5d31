"""LEDGER.md §17: `gridhive bench ledger` runs real validator processes and reports its figures."""
from gridhive.ledger.bench import run


def test_the_benchmark_reports_throughput_finality_cpu_and_memory():
    figures = run(validators=4, max_tx_s=150, duration_s=2.5, warmup_s=1.5, clients=60)
    assert {"tx_per_s", "finality_p50_ms", "finality_p99_ms", "cpu_ms_per_tx", "rss_mb_max", "validators"} <= set(figures)
    assert figures["validators"] == 4 and figures["tx_per_s"] > 0 and figures["cpu_ms_per_tx"] > 0
    assert 0 < figures["finality_p50_ms"] <= figures["finality_p99_ms"]
    assert 20 < figures["rss_mb_max"] < 150


def test_the_path_benchmark_reports_each_steps_cpu_per_tx():
    from gridhive.ledger.pathbench import run as path_run

    figures = path_run(txs_per_block=40, blocks=2, clients=50)
    steps = ("gossip_admission_us", "proposal_parse_us", "execute_us", "finalize_us", "store_us")
    assert figures["txs"] == 80 and all(figures[s] > 0 for s in steps)
    assert abs(sum(figures[s] for s in steps) - figures["total_us"]) <= 0.5      # rounded per step
    # every gossiped tx is verified in full, so admission costs at least one verification
    assert figures["gossip_admission_us"] > 0.5 * figures["verify_us"] > 0
