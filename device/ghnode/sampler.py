"""The hot sampling loop: interleaved ADC reads into preallocated buffers.

The ESP32 release build compiles this module with the native emitter, and the loop must not allocate
(a GC pause mid-window would skew the sample timing). So: plain Python, ints only, locals only,
callables bound and arrays allocated by the caller. tests/device/test_sampler.py proves "no
allocation" under MicroPython with micropython.heap_lock(). The maths lives in measure.py.
"""


def sample(reads, bufs, n, period_us, clock, stats):
    """Fill bufs[c][0:n] with reads[c]() for every channel c, one set of reads per sampling tick.

    reads:     tuple of zero-argument callables returning ints (bound `adc.read_uv` methods).
    bufs:      tuple of array('i'), len >= n each, same order as reads.
    period_us: time between the starts of consecutive sets; 0 runs as fast as the reads allow.
               A late set is caught up (not skipped), so the average rate stays at the period.
    clock:     anything with ticks_us/ticks_diff/ticks_add (the `time` module on a board,
               hal_sim.SimClock on a host).
    stats:     array('i'), len >= 2; receives
               stats[0] = span_us from the start of the first set to the start of the last,
               stats[1] = busy_us, the time spent inside the sets (reads), summed over all sets:
                          busy_us / (n * len(reads)) is the spacing between two channels' reads,
                          i.e. the sequential-sampling skew that measure.py compensates.
    Returns n.
    """
    now = clock.ticks_us
    diff = clock.ticks_diff
    add = clock.ticks_add
    nch = len(reads)
    busy = 0
    t = now()
    first = t  # the first set never waits: due starts at t
    due = t
    i = 0
    while i < n:
        if period_us:
            while diff(t, due) < 0:
                t = now()
            due = add(due, period_us)
        c = 0
        while c < nch:
            bufs[c][i] = reads[c]()
            c += 1
        busy += diff(now(), t)
        i += 1
        if i < n:
            t = now()
    stats[0] = diff(t, first)
    stats[1] = busy
    return n
