"""ghnode.sampler: interleaving, timing and (under MicroPython) zero allocation in the loop."""
import sys
from array import array

from ghnode.hal_sim import TICKS_PERIOD, ArrayADC, SimADC, SimClock
from ghnode.sampler import sample

IS_MICROPYTHON = sys.implementation.name == "micropython"


def zeros(n):
    return array("i", [0] * n)


def ramp_adcs(nch, n):
    """ArrayADCs whose channel c reads c*1_000_000 + k on its k-th read."""
    return [ArrayADC(array("i", [c * 1_000_000 + k for k in range(n)])) for c in range(nch)]


def check_interleaved(bufs, n):
    for c in range(len(bufs)):
        for k in range(n):
            assert bufs[c][k] == c * 1_000_000 + k, (c, k, bufs[c][k])


def test_fills_each_channel_in_order_and_leaves_the_rest():
    n, nch = 50, 3
    adcs = ramp_adcs(nch, n)
    bufs = tuple(array("i", [-1] * (n + 5)) for _ in range(nch))
    stats = zeros(2)
    assert sample(tuple(a.read_uv for a in adcs), bufs, n, 0, SimClock(), stats) == n
    check_interleaved(bufs, n)
    assert all(b[n] == -1 for b in bufs)


def test_paced_timing_and_read_skew_are_reported():
    n, nch, period_us, read_us = 200, 3, 400, 40
    clock = SimClock(1000)
    adcs = [SimADC(clock, None, read_cost_us=read_us, unplugged="bias") for _ in range(nch)]
    stats = zeros(2)
    sample(tuple(a.read_uv for a in adcs), tuple(zeros(n) for _ in range(nch)), n, period_us, clock, stats)
    assert stats[0] == (n - 1) * period_us
    assert stats[1] == n * (nch * read_us + 1)  # + one 1 us ticks_us() call per set


def test_free_running_and_across_the_ticks_wrap():
    n, nch, read_us = 100, 2, 30
    clock = SimClock(TICKS_PERIOD - 2000)  # wraps within the window
    adcs = [SimADC(clock, None, read_cost_us=read_us, unplugged="low") for _ in range(nch)]
    stats = zeros(2)
    sample(tuple(a.read_uv for a in adcs), tuple(zeros(n) for _ in range(nch)), n, 0, clock, stats)
    assert clock.now_us > TICKS_PERIOD
    assert stats[0] == (n - 1) * (nch * read_us + 2)  # two ticks_us() calls per set
    assert stats[1] == n * (nch * read_us + 1)


def test_the_sampling_loop_allocates_nothing():
    n, nch = 300, 4
    adcs = ramp_adcs(nch, n)
    reads = tuple(a.read_uv for a in adcs)
    bufs = tuple(zeros(n) for _ in range(nch))
    stats = zeros(2)
    if IS_MICROPYTHON:
        # On the board's clock (the time module); any heap allocation raises MemoryError.
        import gc
        import micropython
        import time
        gc.collect()
        gc.disable()
        try:
            before = gc.mem_alloc()
            micropython.heap_lock()
            try:
                sample(reads, bufs, n, 0, time, stats)
            finally:
                micropython.heap_unlock()
            assert gc.mem_alloc() == before
        finally:
            gc.enable()
        assert stats[0] >= 0 and stats[1] >= 0
    else:
        # CPython cannot lock its heap: check the same call fills the buffers and reports timing.
        sample(reads, bufs, n, 0, SimClock(), stats)
        assert stats[0] == (n - 1) * 2 and stats[1] == n
    check_interleaved(bufs, n)
