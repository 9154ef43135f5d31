"""Small persistent node state with crash-safe writes. Runs on MicroPython and CPython.

Held: boot counter, relay last states (for power_up "restore"), energy counters, and the seq
reservation that keeps message sequence numbers monotonic across reboots.

File format: one line of JSON, then one line with its CRC-32 in hex. A save writes `path.tmp`,
syncs it and renames it over `path`; every save bumps `gen`. Load reads both files and takes the
valid one (CRC and JSON ok) with the highest `gen`, so a crash at any point leaves either the old
or the new state, and a garbled main file falls back to the tmp copy or to defaults. `source`
says which it was: "main", "tmp", "new" (no files) or "defaults" (files existed but were bad).

On LittleFS a file this small is stored inline in its directory's metadata block, so a save is a
metadata commit (tens of bytes), not a data-block erase.
"""
import json
import os
from binascii import crc32

SEQ_MAX = 0xFFFFFFFF


def new_boot_id():
    """A random non-zero 32-bit id for this boot (hardware RNG on the ESP32)."""
    try:
        v = int.from_bytes(os.urandom(4), "little")
    except AttributeError:  # some MicroPython ports (e.g. WebAssembly) have no os.urandom
        import random
        v = random.getrandbits(32)
    return v or 1


def _sync(f):
    f.flush()
    try:
        os.fsync(f.fileno())  # CPython
    except AttributeError:
        if hasattr(os, "sync"):
            os.sync()


def _read(path):
    """The dict stored at `path`, or None if the file is missing or damaged."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    raw = raw.rstrip(b"\n")
    cut = raw.rfind(b"\n")
    if cut < 0:
        return None
    body = raw[:cut]
    try:
        if int(raw[cut + 1:], 16) != crc32(body) & 0xFFFFFFFF:
            return None
        data = json.loads(body.decode())
    except (ValueError, UnicodeError):
        return None
    return data if isinstance(data, dict) else None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


class NodeState:
    def __init__(self, path="/state.json"):
        self.path = path
        self.gen = 0
        self.boot_count = 0
        self.boot_id = 0  # not persisted: new every boot()
        self.seq_reserved_upto = 0  # every seq below this may already have been used
        self.relays = {}  # relay name -> what relay.Relay.to_dict() returned (state, trip latch)
        self.energy_mwh = {}  # channel name -> integer energy counter, mWh (ints: ESP32 floats are 32-bit)
        self.source = "new"
        self._load()

    def _load(self):
        best = None
        seen = False
        for src, p in (("main", self.path), ("tmp", self.path + ".tmp")):
            try:
                os.stat(p)
                seen = True
            except OSError:
                continue
            d = _read(p)
            if d is not None and _is_int(d.get("gen")) and (best is None or d["gen"] > best[1]["gen"]):
                best = (src, d)
        if best is None:
            self.source = "defaults" if seen else "new"
            return
        self.source, d = best
        self.gen = d["gen"]
        # Take each field only if it has the right type: a file from another firmware version
        # must not crash the boot.
        for name in ("boot_count", "seq_reserved_upto"):
            if _is_int(d.get(name)) and d[name] >= 0:
                setattr(self, name, d[name])
        r = d.get("relays")
        if isinstance(r, dict):
            self.relays = {k: v for k, v in r.items() if isinstance(v, dict)}
        e = d.get("energy_mwh")
        if isinstance(e, dict):
            self.energy_mwh = {k: v for k, v in e.items() if _is_int(v)}

    def save(self):
        """Write the state crash-safely (tmp file + rename)."""
        self.gen += 1
        body = json.dumps({"gen": self.gen, "boot_count": self.boot_count,
                           "seq_reserved_upto": self.seq_reserved_upto,
                           "relays": self.relays, "energy_mwh": self.energy_mwh})
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(body)
            f.write("\n%08x\n" % (crc32(body.encode()) & 0xFFFFFFFF))
            _sync(f)
        try:
            os.rename(tmp, self.path)
        except OSError:  # FAT will not rename over an existing file; load() falls back to tmp meanwhile
            os.remove(self.path)
            os.rename(tmp, self.path)

    def boot(self):
        """Count this boot, draw a new boot id, save. Call once at start-up; returns the boot id."""
        self.boot_count += 1
        self.boot_id = new_boot_id()
        self.save()
        return self.boot_id

    def set_relay(self, name, saved):
        """Remember a relay's Relay.to_dict(); saves only when it changed. Returns True if it changed."""
        if self.relays.get(name) == saved:
            return False
        self.relays[name] = saved
        self.save()
        return True

    def set_energy(self, counters_mwh, save=True):
        """Replace the energy counters (name -> int mWh). Save them every few minutes, not per reading."""
        for k, v in counters_mwh.items():
            if not _is_int(v):
                raise ValueError("energy counter %r must be an integer (mWh), got %r" % (k, v))
        self.energy_mwh = dict(counters_mwh)
        if save:
            self.save()


class SeqAllocator:
    """Message sequence numbers, monotonic across reboots, with one flash write per `block` numbers.

    The state persists `seq_reserved_upto` = the end of the block in use BEFORE any number of that
    block is handed out, and a new boot starts at the persisted value. So a reboot skips at most
    `block` numbers and never repeats one. At one message a second, 32 bits last 136 years.
    """

    def __init__(self, state, block=100):
        if block < 1:
            raise ValueError("block must be >= 1")
        self._state = state
        self._block = block
        self._next = state.seq_reserved_upto

    def next_seq(self):
        st = self._state
        n = self._next
        if n > SEQ_MAX:
            raise OverflowError("sequence numbers exhausted (2**32)")
        if n >= st.seq_reserved_upto:
            old = st.seq_reserved_upto
            st.seq_reserved_upto = min(n + self._block, SEQ_MAX + 1)
            try:
                st.save()
            except Exception:
                st.seq_reserved_upto = old
                raise
        self._next = n + 1
        return n

    def advance_past(self, seq):
        """Never hand out `seq` or anything below it, e.g. the flash buffer's `last_seq` at boot
        (guards against a lost state file)."""
        if seq >= self._next:
            self._next = seq + 1

    def peek(self):
        """The number next_seq() will return."""
        return self._next
