"""Bounded, crash-safe ring buffer of outgoing messages in flash. Runs on MicroPython and CPython.

A message stays here from `append` until the gateway acknowledges it (`ack`), across reboots and
power cuts. Nothing is lost unless the buffer is full: then the OLDEST message is dropped and
counted in `dropped`.

Layout: `path` is a directory of preallocated segment files, each holding `seg_slots` fixed-size
slots (8 x 512 B = one 4 KiB flash block by default), plus a `geom` file naming the geometry.
A slot is a 16-byte header + payload:

    0 state u8   0x00 never written, 'L' live, 'A' acked (anything else: free)
    1 magic u8   format version
    2 len   u16  payload length
    4 seq   u32  caller's sequence number (strictly increasing)
    8 drop  u32  the `dropped` counter when this slot was written (so it needs no file of its own)
   12 crc   u32  CRC-32 of bytes 1..11 + payload (the state byte is left out so an ack can
                 rewrite it alone)

There is no head/tail index file to corrupt. On open every slot header is read: CRC-valid live
slots are the pending messages, ordered by seq; the highest seq of any valid slot (live or acked)
is `last_seq`, and the next write looks for a free slot after that one. A torn write fails its CRC
and the slot counts as free. `dropped` is the largest drop counter of any valid header.

Why segments and not one 256 KiB file: LittleFS stores a file as a copy-on-write CTZ skip-list,
so changing byte k of a file rewrites every block from k's block to the END of the file. In one
256 KiB file a slot write would copy 32 blocks (128 KiB) on average; in a 4 KiB segment it copies
exactly one block.

Flash wear (ESP32, 4 MiB flash, MicroPython's 2 MiB LittleFS partition = 512 blocks of 4 KiB):
an append or an ack costs one block erase (copy-on-write of its segment) plus a ~40-byte commit
to the directory's metadata log (one erase per ~100 commits). Telemetry every 10 s gives 8,640
appends + 8,640 acks a day = ~17,500 erases/day. LittleFS levels wear dynamically over the blocks
it rewrites or that are free (~450 here: 2 MiB less ~250 KiB of code and config), so each block
is erased ~39 times a day; NOR flash is rated 100,000 cycles -> ~7 years, ~3.5 years if you
allow 2x for metadata compaction and uneven levelling. `ack_many` (the gateway acks in batches)
writes each touched segment once, which roughly halves the ack share. The single-file layout
would have cost ~32 erases per operation: under 3 months.

RAM: two arrays (seq u32, slot u16) sorted by seq, a bytearray of live flags and one slot-sized
buffer: ~4 KiB for 512 slots on the ESP32. `pending()` reads one slot at a time.
"""
import os
import struct
from array import array
from binascii import crc32

HDR_BYTES = 16
SEQ_MAX = 0xFFFFFFFF
_MAGIC = 0xB1
_LIVE = 0x4C
_ACKED = 0x41
_ACKED_BYTE = b"\x41"
_GEOM_VERSION = 1


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _sync(f):
    f.flush()  # on LittleFS this commits the file (lfs_file_sync)
    try:
        os.fsync(f.fileno())  # CPython: make it reach the disk
    except AttributeError:
        if hasattr(os, "sync"):
            os.sync()


def _rmtree(path):
    # Flat directories only: that is all this module creates.
    for name in os.listdir(path):
        os.remove(path + "/" + name)
    os.rmdir(path)


def _replace(tmp, path):
    try:
        os.rename(tmp, path)
    except OSError:  # FAT refuses to rename over an existing file
        os.remove(path)
        os.rename(tmp, path)


def _read_geom(path):
    """(slot_bytes, capacity, seg_slots, dropped_base) of the buffer at `path`, or None."""
    try:
        with open(path + "/geom") as f:
            v = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return None
    if len(v) != 5 or v[0] != _GEOM_VERSION:
        return None
    return tuple(v[1:])


class RingBuffer:
    def __init__(self, path, capacity=512, slot_bytes=512, seg_bytes=4096):
        if not 1 <= capacity <= 65535:
            raise ValueError("capacity must be 1..65535 slots, got %r" % (capacity,))
        if slot_bytes <= HDR_BYTES or slot_bytes > 65535 + HDR_BYTES:
            raise ValueError("slot_bytes must be %d..%d, got %r"
                             % (HDR_BYTES + 1, 65535 + HDR_BYTES, slot_bytes))
        self.path = path
        self.capacity = capacity
        self.slot_bytes = slot_bytes
        self.seg_slots = max(1, seg_bytes // slot_bytes)
        self.max_payload = slot_bytes - HDR_BYTES
        self.dropped = 0
        self.last_seq = -1  # highest seq written (live or acked); appends must go above it
        self._nsegs = (capacity + self.seg_slots - 1) // self.seg_slots
        # The index: live entries sorted by seq, in parallel arrays (no per-entry objects).
        self._seqs = array("L", [0] * capacity)
        self._slots = array("H", [0] * capacity)
        self._n = 0
        self._live = bytearray(capacity)
        self._cursor = 0
        self._buf = bytearray(slot_bytes)
        self._open()

    # --- public API ------------------------------------------------------------------------------

    def depth(self):
        """Number of pending (unacknowledged) messages."""
        return self._n

    def append(self, seq, payload):
        """Store one message durably. Returns the seq dropped to make room, or None."""
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError("payload must be bytes, got %s" % type(payload).__name__)
        n = len(payload)
        if n > self.max_payload:
            raise ValueError("payload of %d bytes does not fit a %d-byte slot (max %d bytes of payload): "
                             "raise buffer.slot_bytes" % (n, self.slot_bytes, self.max_payload))
        if not isinstance(seq, int) or isinstance(seq, bool) or seq > SEQ_MAX or seq <= self.last_seq:
            raise ValueError("seq %r must be an integer above the last stored seq %d and below 2**32"
                             % (seq, self.last_seq))
        lost = None
        if self._n == self.capacity:
            # Full: the oldest message gives up its slot.
            slot = self._slots[0]
            lost = self._seqs[0]
            self._remove(0)
            self._live[slot] = 0
            self.dropped += 1
        else:
            slot = self._free_slot()
        self._write(slot, seq, payload)
        self._seqs[self._n] = seq
        self._slots[self._n] = slot
        self._n += 1
        self._live[slot] = 1
        self.last_seq = seq
        self._cursor = (slot + 1) % self.capacity
        return lost

    def ack(self, seq):
        """Free the slot of message `seq`. False (and no change) if it is not pending."""
        return self.ack_many((seq,)) == 1

    def ack_many(self, seqs):
        """Free several messages, writing each touched segment once. Returns how many were pending.

        Unknown or already-freed seqs are ignored. The index is updated before the flash: if the
        write fails, those messages come back after a reboot and are sent again (the gateway
        de-duplicates), which is the safe way round.
        """
        slots = []
        for seq in seqs:
            pos = self._find(seq)
            if pos >= 0:
                slot = self._slots[pos]
                self._remove(pos)
                self._live[slot] = 0
                slots.append(slot)
        slots.sort()
        f = None
        cur = -1
        try:
            for slot in slots:
                seg = slot // self.seg_slots
                if seg != cur:
                    if f:
                        _sync(f)
                        f.close()
                    f = open(self._seg_path(seg), "r+b")
                    cur = seg
                f.seek((slot % self.seg_slots) * self.slot_bytes)
                f.write(_ACKED_BYTE)
            if f:
                _sync(f)
        finally:
            if f:
                f.close()
        return len(slots)

    def pending(self, after_seq=None, limit=None):
        """Yield (seq, payload) of pending messages with seq > after_seq, oldest first.

        One slot is read per step and the position is found again by seq each time, so acking or
        appending while iterating is safe.
        """
        last = -1 if after_seq is None else after_seq
        count = 0
        while limit is None or count < limit:
            pos = self._after(last)
            if pos >= self._n:
                return
            seq = self._seqs[pos]
            last = seq
            payload = self._read(self._slots[pos], seq)
            if payload is None:  # damaged since open (should not happen): skip, keep going
                continue
            count += 1
            yield seq, payload

    def close(self):
        """Nothing is held open between calls (every write is already durable); a no-op."""

    # --- slots on flash --------------------------------------------------------------------------

    def _seg_path(self, seg):
        return "%s/%d.seg" % (self.path, seg)

    def _seg_len(self, seg):
        return min(self.seg_slots, self.capacity - seg * self.seg_slots)

    def _write(self, slot, seq, payload):
        b = self._buf
        mv = memoryview(b)
        n = len(payload)
        struct.pack_into("<BBHII", b, 0, _LIVE, _MAGIC, n, seq, self.dropped)
        b[HDR_BYTES:HDR_BYTES + n] = payload
        struct.pack_into("<I", b, 12, crc32(payload, crc32(mv[1:12])) & 0xFFFFFFFF)
        with open(self._seg_path(slot // self.seg_slots), "r+b") as f:
            f.seek((slot % self.seg_slots) * self.slot_bytes)
            f.write(mv[:HDR_BYTES + n])
            _sync(f)

    def _check(self, got):
        """Parse the slot in self._buf (`got` bytes were read): (state, seq, drop, len) or None."""
        if got < HDR_BYTES:
            return None
        b = self._buf
        state, magic, n, seq, drop, crc = struct.unpack_from("<BBHIII", b, 0)
        if (state != _LIVE and state != _ACKED) or magic != _MAGIC or HDR_BYTES + n > got:
            return None
        mv = memoryview(b)
        if crc32(mv[HDR_BYTES:HDR_BYTES + n], crc32(mv[1:12])) & 0xFFFFFFFF != crc:
            return None
        return state, seq, drop, n

    def _read(self, slot, seq):
        try:
            with open(self._seg_path(slot // self.seg_slots), "rb") as f:
                f.seek((slot % self.seg_slots) * self.slot_bytes)
                got = f.readinto(self._buf)
        except OSError:
            return None
        h = self._check(got or 0)
        if h is None or h[0] != _LIVE or h[1] != seq:
            return None
        return bytes(memoryview(self._buf)[HDR_BYTES:HDR_BYTES + h[3]])

    # --- open / format / migrate -----------------------------------------------------------------

    def _open(self):
        old = self.path + ".old"
        if _exists(old):  # a geometry change was interrupted: redo it from the untouched old copy
            self._migrate(old)
            return
        g = _read_geom(self.path)
        if g is None:
            self._format(0)
        elif g[:3] != (self.slot_bytes, self.capacity, self.seg_slots):
            os.rename(self.path, old)
            self._migrate(old)
        else:
            self.dropped = g[3]
            self._scan()

    def _format(self, dropped_base):
        try:
            os.mkdir(self.path)
        except OSError:
            for name in os.listdir(self.path):  # leftovers of an interrupted format
                os.remove(self.path + "/" + name)
        for seg in range(self._nsegs):
            self._zero_segment(seg)
        self._write_geom(dropped_base)  # last: a geom file marks a complete format
        self.dropped = dropped_base

    def _zero_segment(self, seg):
        zero = bytes(self.slot_bytes)  # all-zero slots read as never written
        with open(self._seg_path(seg), "wb") as f:
            for _ in range(self._seg_len(seg)):
                f.write(zero)
            _sync(f)

    def _write_geom(self, dropped_base):
        tmp = self.path + "/geom.tmp"
        with open(tmp, "w") as f:
            f.write("%d %d %d %d %d\n" % (_GEOM_VERSION, self.slot_bytes, self.capacity,
                                          self.seg_slots, dropped_base))
            _sync(f)
        _replace(tmp, self.path + "/geom")

    def _migrate(self, old):
        # Copy pending messages from a buffer with another geometry, oldest first; what no longer
        # fits is dropped and counted. The old copy is removed only once the new one is complete.
        g = _read_geom(old)
        if g is None:
            _rmtree(old)
            self._format(0)
            return
        src = RingBuffer(old, g[1], g[0], g[0] * g[2])
        self._format(src.dropped)
        for seq, payload in src.pending():
            if len(payload) > self.max_payload:
                self.dropped += 1
            else:
                self.append(seq, payload)
        self._write_geom(self.dropped)  # keeps drops that left no slot behind
        _rmtree(old)

    def _scan(self):
        buf = self._buf
        mv = memoryview(buf)
        for seg in range(self._nsegs):
            base = seg * self.seg_slots
            try:
                f = open(self._seg_path(seg), "rb")
            except OSError:  # lost segment: recreate it empty
                self._zero_segment(seg)
                continue
            try:
                for i in range(self._seg_len(seg)):
                    f.seek(i * self.slot_bytes)
                    h = self._check(f.readinto(mv) or 0)
                    if h is None:
                        continue
                    slot = base + i
                    if h[2] > self.dropped:
                        self.dropped = h[2]
                    if h[1] > self.last_seq:
                        self.last_seq = h[1]
                        self._cursor = (slot + 1) % self.capacity
                    if h[0] == _LIVE:
                        self._insert(h[1], slot)
                        self._live[slot] = 1
            finally:
                f.close()

    # --- the sorted index ------------------------------------------------------------------------

    def _after(self, seq):
        """Index of the first entry with a seq above `seq`."""
        lo, hi = 0, self._n
        s = self._seqs
        while lo < hi:
            mid = (lo + hi) >> 1
            if s[mid] <= seq:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _find(self, seq):
        if not isinstance(seq, int) or isinstance(seq, bool):
            return -1
        pos = self._after(seq) - 1
        return pos if pos >= 0 and self._seqs[pos] == seq else -1

    def _insert(self, seq, slot):
        pos = self._after(seq)
        n = self._n
        if pos < n:  # memoryview slices move in place (memmove), no copy of the arrays
            m = memoryview(self._seqs)
            m[pos + 1:n + 1] = m[pos:n]
            m = memoryview(self._slots)
            m[pos + 1:n + 1] = m[pos:n]
        self._seqs[pos] = seq
        self._slots[pos] = slot
        self._n = n + 1

    def _remove(self, pos):
        n = self._n
        if pos < n - 1:
            m = memoryview(self._seqs)
            m[pos:n - 1] = m[pos + 1:n]
            m = memoryview(self._slots)
            m[pos:n - 1] = m[pos + 1:n]
        self._n = n - 1

    def _free_slot(self):
        live = self._live
        cap = self.capacity
        i = self._cursor
        for _ in range(cap):
            if not live[i]:
                return i
            i += 1
            if i == cap:
                i = 0
        raise RuntimeError("no free slot although depth < capacity")
