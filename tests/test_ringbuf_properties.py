"""Property test: the flash ring buffer behaves like a bounded list under any mix of operations.

Random sequences of append / ack / ack_many / reopen (also with a new geometry) / garbled acks are
run against a RingBuffer and against a plain-list model; after every step the pending messages,
their order, depth, dropped count and the return values must agree.
"""
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghnode import ringbuf
from ghnode.ringbuf import HDR_BYTES, RingBuffer

SLOT_BYTES = 48
MAX_PAYLOAD = SLOT_BYTES - HDR_BYTES

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 3), st.binary(max_size=MAX_PAYLOAD)),
        st.tuples(st.just("append_big"), st.integers(MAX_PAYLOAD + 1, MAX_PAYLOAD + 40)),
        st.tuples(st.just("ack"), st.integers(0, 50)),
        st.tuples(st.just("ack_unknown"), st.integers(0, 10 ** 6)),
        st.tuples(st.just("ack_many"), st.lists(st.integers(0, 50), max_size=6), st.booleans()),
        st.tuples(st.just("reopen")),
        st.tuples(st.just("regeom"), st.integers(1, 9), st.sampled_from([SLOT_BYTES, 64, 96])),
        st.tuples(st.just("pending"), st.integers(-1, 60), st.integers(0, 5)),
    ),
    max_size=60,
)


def _pick(model, i):
    return model[i % len(model)][0] if model else None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 9), seg_slots=st.integers(1, 4), program=ops)
def test_ring_buffer_matches_a_bounded_list(capacity, seg_slots, program):
    root = tempfile.mkdtemp()
    # This checks the logic, not the disk: skip the per-write fsync (20 s -> 2 s). Crash safety is
    # covered by the torn-write tests in tests/device/test_ringbuf.py.
    real_sync = ringbuf._sync
    ringbuf._sync = lambda f: f.flush()
    try:
        path = root + "/buf"
        geom = [capacity, SLOT_BYTES]
        rb = RingBuffer(path, capacity, SLOT_BYTES, seg_slots * SLOT_BYTES)
        model = []  # [(seq, payload)] oldest first
        dropped = 0
        last_seq = 0
        for op in program:
            kind = op[0]
            if kind == "append":
                last_seq += op[1]
                lost = rb.append(last_seq, op[2])
                model.append((last_seq, op[2]))
                expect_lost = None
                if len(model) > geom[0]:
                    expect_lost = model.pop(0)[0]
                    dropped += 1
                assert lost == expect_lost
            elif kind == "append_big":
                try:
                    rb.append(last_seq + 1, b"x" * op[1])
                except ValueError:
                    pass
                else:
                    assert op[1] <= geom[1] - HDR_BYTES, "oversized payload was accepted"
                    last_seq += 1
                    model.append((last_seq, b"x" * op[1]))
                    if len(model) > geom[0]:
                        model.pop(0)
                        dropped += 1
            elif kind == "ack":
                seq = _pick(model, op[1])
                if seq is None:
                    assert rb.ack(op[1]) is False
                else:
                    assert rb.ack(seq) is True
                    model = [m for m in model if m[0] != seq]
            elif kind == "ack_unknown":
                seq = op[1]
                known = any(m[0] == seq for m in model)
                assert rb.ack(seq) is known
                if known:
                    model = [m for m in model if m[0] != seq]
            elif kind == "ack_many":
                seqs = [_pick(model, i) for i in op[1]] if op[2] else list(op[1])
                seqs = [s for s in seqs if s is not None]
                pending = {m[0] for m in model}
                assert rb.ack_many(seqs) == len(set(seqs) & pending)
                model = [m for m in model if m[0] not in set(seqs)]
            elif kind == "reopen":
                rb.close()
                rb = RingBuffer(path, geom[0], geom[1], seg_slots * geom[1])
            elif kind == "regeom":
                rb.close()
                geom = [op[1], op[2]]
                rb = RingBuffer(path, geom[0], geom[1], seg_slots * geom[1])
                kept = [m for m in model if len(m[1]) <= geom[1] - HDR_BYTES]
                dropped += len(model) - len(kept)
                overflow = max(0, len(kept) - geom[0])
                dropped += overflow
                model = kept[overflow:]
            elif kind == "pending":
                after = None if op[1] < 0 else op[1]
                want = [m for m in model if after is None or m[0] > after][:op[2]]
                assert list(rb.pending(after_seq=after, limit=op[2])) == want
            assert list(rb.pending()) == model
            assert rb.depth() == len(model)
            assert rb.dropped == dropped
            assert rb.last_seq <= last_seq
        rb = RingBuffer(path, geom[0], geom[1], seg_slots * geom[1])
        assert list(rb.pending()) == model and rb.dropped == dropped
    finally:
        ringbuf._sync = real_sync
        shutil.rmtree(root)
