"""MicroPython side of `gridhive bench device`: times ghnode.sampler under real MicroPython.

Run by gridhive/bench/device.py through tools/mpyrun.mjs; prints one JSON line of figures.
The figures are for the WebAssembly port (bytecode); the ESP32 build compiles sampler.py native.
"""
import gc
import json
import sys
import time
from array import array

import micropython

from ghnode.hal_sim import ArrayADC, SimADC, SimClock, Waveform
from ghnode.measure import CTCal, Meter, VTCal
from ghnode.sampler import sample


def _sim_adcs(clock, n_ct):
    """A voltage input and n_ct CTs on a 50 Hz supply, with harmonics and 1 mV of ADC noise."""
    adcs = [SimADC(clock, Waveform(230, 50, 0, ((5, 0.03, 10),)), 383.0, noise_uv=1000)]
    for k in range(n_ct):
        i = Waveform(5 + 10 * k, 50, -20 * k, ((3, 0.2, 10),))
        adcs.append(SimADC(clock, i, 50.0, noise_uv=1000))
    return adcs


def _best_us(fn, repeats, min_us=300_000):
    """Best over `repeats` blocks of the mean time per call; a block lasts >= min_us because the
    WebAssembly port's ticks_us() only moves in whole milliseconds."""
    best = None
    for _ in range(repeats):
        calls = 0
        t0 = time.ticks_us()
        while True:
            fn()
            calls += 1
            dt = time.ticks_diff(time.ticks_us(), t0)
            if dt >= min_us:
                break
        per_call = dt / calls
        best = per_call if best is None or per_call < best else best
    return best


def main(args):
    args = args or {}
    n = args.get("samples", 2000)
    nch = args.get("channels", 4)
    repeats = args.get("repeats", 3)
    # Replay recorded readings: ArrayADC.read_uv allocates nothing, like machine.ADC.read_uv.
    reads = tuple(ArrayADC.record(a, n).read_uv for a in _sim_adcs(SimClock(), nch - 1))
    bufs = tuple(array("i", [0] * n) for _ in range(nch))
    stats = array("i", [0, 0])

    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    sample(reads, bufs, n, 0, time, stats)
    loop_alloc_bytes = gc.mem_alloc() - before
    micropython.heap_lock()
    try:
        sample(reads, bufs, n, 0, time, stats)
        heap_lock_ok = True
    except MemoryError:
        heap_lock_ok = False
    finally:
        micropython.heap_unlock()
    us = _best_us(lambda: sample(reads, bufs, n, 0, time, stats), repeats)
    # The same loop with a builtin (C) read in place of the Python-level ArrayADC: the loop's own cost.
    c_reads = (time.ticks_cpu,) * nch
    us_c = _best_us(lambda: sample(c_reads, bufs, n, 0, time, stats), repeats)
    gc.enable()

    # One default window (10 cycles at 64 samples/cycle) through Meter.analyse.
    clock = SimClock(777)
    meter = Meter([CTCal() for _ in range(nch - 1)], VTCal())
    meter.measure(tuple(a.read_uv for a in _sim_adcs(clock, nch - 1)), clock)
    analyse_us = _best_us(lambda: meter.analyse(meter.bufs, meter.n, meter.stats), repeats)

    print(json.dumps({
        "interpreter": "MicroPython %s %s (bytecode)" % (".".join(str(v) for v in sys.implementation.version[:3]),
                                                         sys.implementation._machine),
        "channels": nch,
        "samples_per_call": n * nch,
        "us_per_sample": us / (n * nch),
        "us_per_set": us / n,
        "samples_per_s_per_channel": 1e6 * n / us,
        "loop_only_us_per_sample": us_c / (n * nch),
        "loop_alloc_bytes": loop_alloc_bytes,
        "heap_lock_ok": heap_lock_ok,
        "window_sets": meter.n,
        "analyse_ms_per_window": analyse_us / 1000,
    }))
