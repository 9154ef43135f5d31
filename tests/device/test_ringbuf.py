from devtest import make_tmpdir, raises
import os

from ghnode.ringbuf import HDR_BYTES, RingBuffer


def _new(capacity=8, slot_bytes=64, seg_bytes=256):
    # Small slots and segments so wrap-around and multi-segment paths are exercised quickly.
    path = make_tmpdir("rb") + "/buf"
    return path, RingBuffer(path, capacity, slot_bytes, seg_bytes)


def _reopen(rb):
    rb.close()
    return RingBuffer(rb.path, rb.capacity, rb.slot_bytes, rb.seg_slots * rb.slot_bytes)


def _msg(seq):
    return b"msg-%d" % seq


def _all(rb):
    return list(rb.pending())


def _slot_offset(rb, seq):
    slot = rb._slots[rb._find(seq)]
    return "%s/%d.seg" % (rb.path, slot // rb.seg_slots), (slot % rb.seg_slots) * rb.slot_bytes


def _poke(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_append_then_pending_in_seq_order():
    _, rb = _new()
    for s in (3, 4, 10, 11):
        assert rb.append(s, _msg(s)) is None
    assert _all(rb) == [(s, _msg(s)) for s in (3, 4, 10, 11)]
    assert rb.depth() == 4 and rb.dropped == 0 and rb.last_seq == 11


def test_reopen_after_close_keeps_contents_in_order():
    _, rb = _new()
    for s in range(1, 7):
        rb.append(s, _msg(s))
    rb.ack(2)
    before = _all(rb)
    rb2 = _reopen(rb)
    assert _all(rb2) == before
    assert rb2.depth() == 5 and rb2.last_seq == 6
    rb2.append(7, b"x")  # and it carries on after the highest seq
    assert [s for s, _ in _all(_reopen(rb2))] == [1, 3, 4, 5, 6, 7]


def test_ack_removes_exactly_one_and_persists():
    _, rb = _new()
    for s in range(10, 15):
        rb.append(s, _msg(s))
    assert rb.ack(12) is True
    assert [s for s, _ in _all(rb)] == [10, 11, 13, 14]
    assert [s for s, _ in _all(_reopen(rb))] == [10, 11, 13, 14]


def test_unknown_repeated_and_forged_acks_change_nothing():
    _, rb = _new()
    for s in range(1, 5):
        rb.append(s, _msg(s))
    rb.ack(2)
    before = _all(rb)
    for bad in (2, 0, 5, 99, -1, 2 ** 40, "3", None, 3.0, True, b"\x01"):
        assert rb.ack(bad) is False
    assert rb.ack_many([2, 2, 77]) == 0
    assert _all(rb) == before
    assert _all(_reopen(rb)) == before


def test_ack_many_frees_each_once():
    _, rb = _new(capacity=16)
    for s in range(1, 13):
        rb.append(s, _msg(s))
    assert rb.ack_many([12, 1, 5, 5, 9, 40]) == 4
    left = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    for s in (12, 1, 5, 9):
        left.remove(s)
    assert [s for s, _ in _all(rb)] == left
    assert [s for s, _ in _all(_reopen(rb))] == left


def test_full_buffer_drops_oldest_and_counts():
    _, rb = _new(capacity=4)
    for s in range(1, 5):
        assert rb.append(s, _msg(s)) is None
    assert rb.append(5, _msg(5)) == 1
    assert rb.append(6, _msg(6)) == 2
    assert rb.dropped == 2 and rb.depth() == 4
    assert _all(rb) == [(s, _msg(s)) for s in (3, 4, 5, 6)]


def test_not_full_never_drops_even_when_the_next_slot_is_taken():
    _, rb = _new(capacity=4)
    for s in range(1, 5):
        rb.append(s, _msg(s))
    rb.ack(3)  # a hole in the middle; slot after the newest holds the oldest
    assert rb.append(5, _msg(5)) is None
    assert rb.dropped == 0
    assert [s for s, _ in _all(rb)] == [1, 2, 4, 5]


def test_drop_counter_survives_reopen_even_when_everything_was_acked():
    _, rb = _new(capacity=3)
    for s in range(1, 9):
        rb.append(s, _msg(s))
    assert rb.dropped == 5
    rb2 = _reopen(rb)
    assert rb2.dropped == 5
    rb2.ack_many([6, 7, 8])
    rb3 = _reopen(rb2)
    assert rb3.dropped == 5 and rb3.depth() == 0 and rb3.last_seq == 8


def test_torn_write_is_detected_and_treated_as_free():
    _, rb = _new()
    for s in range(1, 6):
        rb.append(s, _msg(s))
    seg, off = _slot_offset(rb, 3)
    _poke(seg, off + HDR_BYTES + 1, b"\xff")  # garbled payload byte
    seg, off = _slot_offset(rb, 5)
    _poke(seg, off + 6, b"\x01")  # garbled seq byte of the newest slot
    rb2 = _reopen(rb)
    assert _all(rb2) == [(s, _msg(s)) for s in (1, 2, 4)]
    assert rb2.last_seq == 4  # the torn newest slot does not count
    rb2.append(5, b"again")  # ...so its seq may be written again
    assert [s for s, _ in _all(rb2)] == [1, 2, 4, 5]


def test_truncated_segment_is_tolerated():
    path, rb = _new(capacity=8, slot_bytes=64, seg_bytes=256)  # 4 slots per segment
    for s in range(1, 9):
        rb.append(s, _msg(s))
    seg0 = path + "/0.seg"
    with open(seg0, "rb") as f:
        data = f.read()
    with open(seg0, "wb") as f:  # crash while the file was being rewritten: the tail is gone
        f.write(data[:64 + 20])
    rb2 = _reopen(rb)
    assert [s for s, _ in _all(rb2)] == [1, 5, 6, 7, 8]
    for s in range(9, 12):  # the lost slots are reused
        assert rb2.append(s, _msg(s)) is None
    assert [s for s, _ in _all(_reopen(rb2))] == [1, 5, 6, 7, 8, 9, 10, 11]


def test_lost_segment_file_is_recreated_empty():
    path, rb = _new(capacity=8, slot_bytes=64, seg_bytes=256)
    for s in range(1, 9):
        rb.append(s, _msg(s))
    os.remove(path + "/1.seg")
    rb2 = _reopen(rb)
    assert [s for s, _ in _all(rb2)] == [1, 2, 3, 4]
    rb2.append(9, b"x")
    assert rb2.depth() == 5


def test_order_holds_across_wrap_around():
    _, rb = _new(capacity=5)
    model = []
    seq = 0
    for rnd in range(12):
        for _ in range(3):
            seq += 1
            rb.append(seq, _msg(seq))
            model.append(seq)
            if len(model) > 5:
                model.pop(0)
        # ack one from the middle and the oldest: holes force writes out of slot order
        for s in (model[len(model) // 2], model[0]):
            assert rb.ack(s)
            model.remove(s)
        assert [s for s, _ in _all(rb)] == model
        if rnd % 4 == 3:
            rb = _reopen(rb)
            assert [s for s, _ in _all(rb)] == model


def test_pending_after_and_limit():
    _, rb = _new(capacity=16)
    for s in range(1, 11):
        rb.append(s * 10, _msg(s))
    assert [s for s, _ in rb.pending(after_seq=35, limit=3)] == [40, 50, 60]
    assert [s for s, _ in rb.pending(limit=2)] == [10, 20]
    assert [s for s, _ in rb.pending(after_seq=100)] == []
    assert list(rb.pending(limit=0)) == []


def test_acking_while_iterating_is_safe():
    _, rb = _new(capacity=16)
    for s in range(1, 9):
        rb.append(s, _msg(s))
    seen = []
    for s, _ in rb.pending():
        seen.append(s)
        rb.ack(s)
        if s == 3:
            rb.ack(4)  # ack one ahead: it must not be yielded
    assert seen == [1, 2, 3, 5, 6, 7, 8]
    assert rb.depth() == 0


def test_payload_size_limits():
    _, rb = _new(slot_bytes=64)
    rb.append(1, b"x" * (64 - HDR_BYTES))
    e = raises(ValueError, rb.append, 2, b"x" * (64 - HDR_BYTES + 1))
    assert "slot" in str(e) and "49" in str(e)
    raises(TypeError, rb.append, 2, "text")
    rb.append(2, b"")
    assert _all(rb) == [(1, b"x" * 48), (2, b"")]


def test_seq_must_increase():
    _, rb = _new()
    rb.append(5, b"a")
    raises(ValueError, rb.append, 5, b"b")
    raises(ValueError, rb.append, 4, b"b")
    raises(ValueError, rb.append, 2 ** 32, b"b")
    rb.ack(5)
    raises(ValueError, rb.append, 5, b"b")  # an acked seq still counts
    rb.append(2 ** 32 - 1, b"top")
    assert [s for s, _ in _all(_reopen(rb))] == [2 ** 32 - 1]


def test_geometry_change_keeps_what_fits_and_counts_the_rest():
    path, rb = _new(capacity=8, slot_bytes=64, seg_bytes=256)
    for s in range(1, 9):
        rb.append(s, b"%d" % s if s != 7 else b"y" * 40)
    rb.ack(2)
    smaller = RingBuffer(path, 4, 48, 96)  # 7 pending, 4 slots, and seq 7 no longer fits
    assert [s for s, _ in _all(smaller)] == [4, 5, 6, 8]
    assert smaller.dropped == 3
    assert not _exists(path + ".old")
    again = RingBuffer(path, 4, 48, 96)
    assert _all(again) == _all(smaller) and again.dropped == 3
    bigger = RingBuffer(path, 16, 128)
    assert [s for s, _ in _all(bigger)] == [4, 5, 6, 8] and bigger.dropped == 3


def test_interrupted_geometry_change_is_redone():
    path, rb = _new(capacity=6, slot_bytes=64, seg_bytes=128)
    for s in range(1, 7):
        rb.append(s, _msg(s))
    os.rename(path, path + ".old")  # crash right after the old copy was set aside...
    os.mkdir(path)
    with open(path + "/0.seg", "wb") as f:  # ...and part-way through the new format
        f.write(b"\x4c" * 10)
    rb2 = RingBuffer(path, 4, 64, 128)
    assert [s for s, _ in _all(rb2)] == [3, 4, 5, 6]
    assert rb2.dropped == 2
    assert not _exists(path + ".old")


def test_bad_geometry_arguments():
    path = make_tmpdir("rb") + "/b"
    raises(ValueError, RingBuffer, path, 0)
    raises(ValueError, RingBuffer, path, 70000)
    raises(ValueError, RingBuffer, path, 8, HDR_BYTES)


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False
