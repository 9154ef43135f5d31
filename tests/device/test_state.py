from devtest import make_tmpdir, raises
import json
from binascii import crc32

from ghnode.state import NodeState, SeqAllocator, new_boot_id


def _path():
    return make_tmpdir("st") + "/state.json"


def _read(p):
    with open(p, "rb") as f:
        return f.read()


def _write(p, data):
    with open(p, "wb") as f:
        f.write(data)


def test_fresh_state_has_defaults():
    s = NodeState(_path())
    assert s.source == "new"
    assert s.boot_count == 0 and s.seq_reserved_upto == 0
    assert s.relays == {} and s.energy_mwh == {}


def test_save_and_reload_round_trip():
    p = _path()
    s = NodeState(p)
    s.relays = {"ev": {"state": "on", "tripped": None}, "pump": {"state": "off", "tripped": "over_power"}}
    s.set_energy({"ev": 123456789012, "house": 5})
    s2 = NodeState(p)
    assert s2.source == "main"
    assert s2.relays == {"ev": {"state": "on", "tripped": None}, "pump": {"state": "off", "tripped": "over_power"}}
    assert s2.energy_mwh == {"ev": 123456789012, "house": 5}


def test_boot_counts_and_draws_a_new_id():
    p = _path()
    ids = []
    for n in range(1, 4):
        s = NodeState(p)
        ids.append(s.boot())
        assert s.boot_count == n
    assert NodeState(p).boot_count == 3
    for i in ids:
        assert 0 < i < 2 ** 32
    assert len(set(ids)) == 3


def test_new_boot_id_is_32_bit_and_non_zero():
    for _ in range(20):
        v = new_boot_id()
        assert isinstance(v, int) and 0 < v < 2 ** 32


def test_seq_is_monotonic_across_reboots():
    p = _path()
    seen = []
    for boot, count in enumerate((0, 5, 100, 101, 250, 1, 0, 37)):
        st = NodeState(p)
        st.boot()
        alloc = SeqAllocator(st, block=100)
        for _ in range(count):
            seen.append(alloc.next_seq())
    assert len(seen) == 494
    for a, b in zip(seen, seen[1:]):
        assert b > a


def test_seq_reservation_writes_once_per_block():
    st = NodeState(_path())
    alloc = SeqAllocator(st, block=100)
    gen0 = st.gen
    for i in range(1000):
        assert alloc.next_seq() == i
    assert st.gen - gen0 == 10
    assert NodeState(st.path).seq_reserved_upto == 1000


def test_crash_without_saving_never_repeats_a_seq():
    p = _path()
    a = SeqAllocator(NodeState(p), block=10)
    used = [a.next_seq() for _ in range(15)]  # then power is cut: no shutdown hook
    b = SeqAllocator(NodeState(p), block=10)
    assert b.next_seq() > used[-1]


def test_advance_past_skips_numbers_in_the_buffer():
    st = NodeState(_path())  # state file lost: would start at 0
    alloc = SeqAllocator(st)
    alloc.advance_past(4999)  # the flash buffer's last_seq
    assert alloc.next_seq() == 5000
    alloc.advance_past(10)  # never goes back
    assert alloc.next_seq() == 5001
    assert NodeState(st.path).seq_reserved_upto > 5001


def test_corrupt_main_file_falls_back_to_tmp_copy():
    p = _path()
    s = NodeState(p)
    s.boot_count = 1
    s.save()
    older = _read(p)
    s.boot_count = 2
    s.save()
    _write(p + ".tmp", older)  # e.g. left over from an earlier crash
    _write(p, b'{"gen": 99, "boot_count": 7')  # torn main file
    s2 = NodeState(p)
    assert s2.source == "tmp" and s2.boot_count == 1


def test_newer_tmp_wins_over_older_main():
    p = _path()
    s = NodeState(p)
    s.boot_count = 1
    s.save()
    older = _read(p)
    s.boot_count = 2
    s.save()
    newer = _read(p)
    _write(p, older)
    _write(p + ".tmp", newer)  # crash after the tmp was synced but before the rename
    s2 = NodeState(p)
    assert s2.source == "tmp" and s2.boot_count == 2


def test_garbage_everywhere_falls_back_to_defaults_and_recovers():
    p = _path()
    s = NodeState(p)
    s.boot()
    _write(p, b"\xff\xfe garbage \x00")
    _write(p + ".tmp", b"")
    s2 = NodeState(p)
    assert s2.source == "defaults" and s2.boot_count == 0
    s2.boot()
    assert NodeState(p).boot_count == 1


def test_flipped_bit_is_caught_by_the_checksum():
    p = _path()
    s = NodeState(p)
    s.boot_count = 41
    s.save()
    data = bytearray(_read(p))
    i = data.find(b"41")
    data[i] = ord("9")  # still valid JSON, wrong value
    _write(p, bytes(data))
    assert NodeState(p).source == "defaults"


def test_fields_of_the_wrong_type_are_ignored():
    p = _path()
    body = json.dumps({"gen": 3, "boot_count": "x", "seq_reserved_upto": 500,
                       "relays": {"a": {"state": "on"}, "b": 1}, "energy_mwh": {"e": 2.5, "f": 9}})
    _write(p, (body + "\n%08x\n" % (crc32(body.encode()) & 0xFFFFFFFF)).encode())
    s = NodeState(p)
    assert s.source == "main"
    assert s.boot_count == 0 and s.seq_reserved_upto == 500
    assert s.relays == {"a": {"state": "on"}} and s.energy_mwh == {"f": 9}


def test_set_relay_saves_only_on_change():
    p = _path()
    s = NodeState(p)
    on = {"state": "on", "tripped": None}
    tripped = {"state": "off", "tripped": "over_current"}
    assert s.set_relay("ev", on) is True
    g = s.gen
    assert s.set_relay("ev", {"state": "on", "tripped": None}) is False
    assert s.gen == g
    assert s.set_relay("ev", tripped) is True
    assert NodeState(p).relays == {"ev": tripped}


def test_energy_counters_must_be_integers():
    s = NodeState(_path())
    e = raises(ValueError, s.set_energy, {"ev": 1.5})
    assert "ev" in str(e)
    raises(ValueError, s.set_energy, {"ev": True})
