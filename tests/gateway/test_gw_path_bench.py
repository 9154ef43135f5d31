"""`gridhive bench ingest-path`: the gateway's cores take every message, and the figures add up."""
import gc

import pytest

from gridhive.bench import BENCHES
from gridhive.bench.ingest_path import STEPS, run


def test_the_path_benchmark_stores_every_message_and_reports_each_steps_cpu():
    assert BENCHES["ingest-path"] == "gridhive.bench.ingest_path"
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    figures = run(messages=2500, nodes=20)  # raises unless all 2500 are accepted, stored and batched
    assert figures["messages"] == 2500
    assert all(figures[f"{step}_us"] > 0 for step in STEPS)
    assert figures["total_us"] == pytest.approx(sum(figures[f"{step}_us"] for step in STEPS), abs=0.3)  # rounding
    assert figures["msgs_per_cpu_s"] == pytest.approx(1e6 / figures["total_us"], rel=0.02)
    assert figures["ingest_us"] > figures["verify_us"] > 0  # ingest verifies, and checks more
    # the gateway's GC tuning is undone for whoever runs next in this process
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == frozen
