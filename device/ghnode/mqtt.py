"""Small MQTT 3.1.1 client for the node, keeping micropython-lib umqtt.simple's API.

Written from the OASIS MQTT 3.1.1 spec. It differs from umqtt.simple where the node's main loop
must never stall:
- the socket is non-blocking; check_msg() handles only bytes already received, a packet may
  arrive over several calls;
- publish(qos=1) and subscribe() return the packet id at once; PUBACK/SUBACK are handled later
  by check_msg()/wait_msg() (see .inflight and .on_puback), so several QoS 1 messages pipeline;
- connect() is begin_connect() (non-blocking TCP connect + CONNECT) plus waiting for CONNACK;
  ghnode.link uses the two halves to connect without blocking.
Encoders and decoders are module-level pure functions, tested without sockets.
Topics and payloads are bytes (str is encoded); callbacks get bytes.
"""
import errno
import struct

try:
    import socket
except ImportError:  # the WebAssembly port (codec tests) has no sockets
    socket = None
try:
    import select
except ImportError:
    select = None
try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython
    from time import monotonic as _mono

    def ticks_ms():
        return int(_mono() * 1000)

    def ticks_diff(a, b):
        return a - b

POLLIN, POLLOUT, POLLERR, POLLHUP = 1, 4, 8, 16  # same values on MicroPython and Linux
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
# packet types (high nibble of the first byte)
CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 0x20, 0x30, 0x40, 0x90, 0xD0
MAX_LEN = 268435455  # largest remaining length 4 bytes can encode
_AGAIN = (errno.EAGAIN, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))
_INPROGRESS = (errno.EINPROGRESS, getattr(errno, "EALREADY", errno.EINPROGRESS)) + _AGAIN
_REASONS = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
            4: "bad user name or password", 5: "not authorized", 0x80: "subscription refused"}


class MQTTException(Exception):
    """args = (code, text); code is the CONNACK return code 1..5, 0x80 for a refused
    subscription, 0 for a malformed packet from the broker."""

    def __init__(self, code, text=None):
        super().__init__(code, text or _REASONS.get(code, "protocol error"))

    @property
    def code(self):
        return self.args[0]


# ---- pure encoders -------------------------------------------------------------------------

def _b(x):
    return x.encode() if isinstance(x, str) else x


def enc_len(n):
    """Remaining length as the 1-4 byte variable-length integer (7 bits a byte, MSB = more)."""
    if n < 0 or n > MAX_LEN:
        raise ValueError("remaining length")
    out = bytearray()
    while True:
        d = n & 0x7F
        n >>= 7
        out.append(d | 0x80 if n else d)
        if not n:
            return out


def _str(x):
    x = _b(x)
    return struct.pack("!H", len(x)) + x


def _pkt(first, body):
    p = bytearray((first,))
    p += enc_len(len(body))
    p += body
    return p


def connect_pkt(client_id, keepalive=0, clean_session=True, user=None, password=None, will=None):
    """CONNECT; will is (topic, msg, retain, qos) or None."""
    flags = 2 if clean_session else 0
    pay = _str(client_id)
    if will:
        topic, msg, retain, qos = will
        flags |= 4 | qos << 3 | (0x20 if retain else 0)
        pay += _str(topic) + _str(msg)
    if user is not None:
        flags |= 0x80
        pay += _str(user)
        if password is not None:
            flags |= 0x40
            pay += _str(password)
    elif password is not None:
        raise ValueError("password needs a user name")  # 3.1.1 forbids it [MQTT-3.1.2-22]
    return _pkt(0x10, b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", keepalive) + pay)


def publish_hdr(topic, n, qos=0, retain=False, pid=0, dup=False):
    """Fixed + variable header of a PUBLISH carrying n payload bytes (payload sent after it)."""
    if qos not in (0, 1):
        raise ValueError("qos")  # QoS 2 is not implemented
    t = _str(topic)
    h = bytearray((PUBLISH | qos << 1 | (8 if dup else 0) | (1 if retain else 0),))
    h += enc_len(len(t) + n + (2 if qos else 0))
    h += t
    if qos:
        h += struct.pack("!H", pid)
    return h


def publish_pkt(topic, msg, qos=0, retain=False, pid=0, dup=False):
    msg = _b(msg)
    h = publish_hdr(topic, len(msg), qos, retain, pid, dup)
    h += msg
    return h


def subscribe_pkt(pid, topic, qos=0):
    return _pkt(0x82, struct.pack("!H", pid) + _str(topic) + bytes((qos,)))


def puback_pkt(pid):
    return b"\x40\x02" + struct.pack("!H", pid)


# ---- pure decoders (body = bytes after the remaining length) -------------------------------

def dec_len(buf, pos=0):
    """Decode a remaining length at buf[pos]: (value, next_pos), or None if more bytes are needed."""
    n = sh = 0
    while pos < len(buf):
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << sh
        if not b & 0x80:
            return n, pos
        sh += 7
        if sh > 21:
            raise MQTTException(0, "bad remaining length")
    return None


def parse(buf, pos=0):
    """Split one packet off buf[pos:]: (first_byte, body, next_pos), or None if incomplete."""
    r = dec_len(buf, pos + 1) if pos < len(buf) else None
    if r is None or r[0] + r[1] > len(buf):
        return None
    return buf[pos], memoryview(buf)[r[1]:r[1] + r[0]], r[0] + r[1]


def decode_connack(body):
    """(session_present, return_code)"""
    if len(body) != 2:
        raise MQTTException(0, "bad CONNACK")
    return body[0] & 1, body[1]


def decode_puback(body):
    """packet id"""
    if len(body) != 2:
        raise MQTTException(0, "bad PUBACK")
    return body[0] << 8 | body[1]


def decode_suback(body):
    """(packet id, granted QoS codes as bytes; 0x80 = refused)"""
    if len(body) < 3:
        raise MQTTException(0, "bad SUBACK")
    return body[0] << 8 | body[1], bytes(body[2:])


def decode_publish(first, body):
    """(topic, msg, qos, retain, pid) of an incoming PUBLISH; pid is 0 for QoS 0."""
    qos = first >> 1 & 3
    p = 2 + (body[0] << 8 | body[1])
    if p + (2 if qos else 0) > len(body):
        raise MQTTException(0, "bad PUBLISH")
    topic = bytes(body[2:p])
    pid = 0
    if qos:
        pid = body[p] << 8 | body[p + 1]
        p += 2
    return topic, bytes(body[p:]), qos, first & 1, pid


def _again(e):
    # EAGAIN on plain sockets; CPython's non-blocking TLS raises SSLWantRead/WriteError instead
    return e.errno in _AGAIN or type(e).__name__.startswith("SSLWant")


# ---- client --------------------------------------------------------------------------------

class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None,
                 max_packet=4096, timeout_ms=5000):
        self.client_id = client_id
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.ssl = ssl  # an SSLContext-like object with wrap_socket(sock, server_hostname=)
        self.max_packet = max_packet  # larger incoming packets are read and discarded
        self.timeout_ms = timeout_ms  # for a stuck write and for connect()'s CONNACK wait
        self.cb = None
        self.on_puback = None  # f(pid) when a QoS 1 publish is acknowledged
        self.lw = None
        self.sock = None
        self.pid = 0
        self.connected = False  # CONNACK accepted
        self.session_present = 0
        self.inflight = set()  # QoS 1 publish ids without PUBACK yet
        self.pings = 0  # PINGREQs without PINGRESP yet
        self.rx = 0  # packets received: liveness for the link's keepalive
        self.dropped = 0  # oversized packets discarded
        self._connecting = False
        self._pending = None
        self._addr = None
        self._b1 = bytearray(1)
        self._m1 = memoryview(self._b1)
        self._small = memoryview(bytearray(16))  # body of acks and short publishes, reused
        self._st = 0

    def set_callback(self, f):
        """f(topic, msg) for each incoming PUBLISH."""
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        assert 0 <= qos <= 2 and topic
        self.lw = (topic, msg, retain, qos)

    def _next_pid(self):
        self.pid = self.pid % 65535 + 1  # 1..65535; 0 is not a valid packet id
        return self.pid

    # -- socket plumbing --

    def _use(self, sock):
        """Adopt a connected (or connecting) non-blocking socket or a stream-like test double."""
        self.sock = sock
        # MicroPython sockets (also TLS ones) have readinto/write; CPython sockets recv_into/send
        self._rd = getattr(sock, "readinto", None) or sock.recv_into
        self._wr = getattr(sock, "write", None) or sock.send
        self._poll = None
        self._st = 0
        self.connected = False
        self.inflight = set()
        self.pings = 0

    def _wait(self, events, ms):
        if self._poll is None:
            self._poll = select.poll()
        self._poll.register(self.sock, events)  # re-registering just changes the mask
        r = self._poll.poll(ms)
        return r[0][1] if r else 0

    def _send(self, buf):
        mv = memoryview(buf)
        n = 0
        t0 = None
        while n < len(mv):
            try:
                k = self._wr(mv[n:])
            except OSError as e:
                if not _again(e):
                    raise
                k = 0
            if k:
                n += k
                continue
            # send buffer full: wait a little, but give up (the stream is then unusable)
            if t0 is None:
                t0 = ticks_ms()
            elif ticks_diff(ticks_ms(), t0) > self.timeout_ms:
                raise OSError(errno.ETIMEDOUT)
            self._wait(POLLOUT, 20)

    def _fill(self, mv):
        try:
            k = self._rd(mv)
        except OSError as e:
            if _again(e):
                return 0
            raise
        if k is None:  # MicroPython: no data on a non-blocking stream
            return 0
        if k == 0:
            raise OSError(errno.ECONNRESET)  # broker closed the connection
        return k

    # -- receiving: incremental so a packet may arrive over several calls --

    def _step(self):
        """Read what is available; handle at most one whole packet.
        Returns its type, 0 for a discarded oversized packet, None if nothing complete yet."""
        if self._connecting:
            ev = self._wait(POLLOUT, 0)
            if ev & (POLLERR | POLLHUP):
                err = errno.ECONNREFUSED
                try:
                    err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or err
                except Exception:  # MicroPython has no getsockopt
                    pass
                raise OSError(err)
            if not ev & POLLOUT:
                return None
            self._connecting = False
            self._send(self._pending)
            self._pending = None
        while True:
            if self._st < 2:  # fixed header byte, then remaining-length bytes
                if not self._fill(self._m1):
                    return None
                b = self._b1[0]
                if self._st == 0:
                    self._hdr = b
                    self._n = self._sh = 0
                    self._st = 1
                    continue
                self._n |= (b & 0x7F) << self._sh
                if b & 0x80:
                    self._sh += 7
                    if self._sh > 21:
                        raise MQTTException(0, "bad remaining length")
                    continue
                n = self._n
                self._got = 0
                self._st = 2
                if n > self.max_packet:
                    self._body = None
                elif n <= len(self._small):
                    self._body = self._small
                else:
                    self._body = memoryview(bytearray(n))
            n = self._n
            if self._got < n:
                body = self._body
                if body is None:  # discarding: read into the small buffer
                    k = self._fill(self._small[:min(len(self._small), n - self._got)])
                else:
                    k = self._fill(body[self._got:n])
                if not k:
                    return None
                self._got += k
                continue
            self._st = 0
            if self._body is None:
                self.dropped += 1
                return 0
            self.rx += 1
            body = self._body[:n]
            self._body = None
            return self._handle(self._hdr, body)

    def _handle(self, first, body):
        t = first & 0xF0
        if t == PUBLISH:
            topic, msg, qos, _, pid = decode_publish(first, body)
            if qos > 1:
                raise MQTTException(0, "QoS 2 not supported")
            if self.cb:
                self.cb(topic, msg)
            if qos:  # acknowledge after delivery: at-least-once
                self._send(puback_pkt(pid))
        elif t == PUBACK:
            pid = decode_puback(body)
            if pid in self.inflight:
                self.inflight.remove(pid)
                if self.on_puback:
                    self.on_puback(pid)
        elif t == CONNACK:
            sp, rc = decode_connack(body)
            if rc:
                raise MQTTException(rc)
            self.connected = True
            self.session_present = sp
        elif t == SUBACK:
            if 0x80 in decode_suback(body)[1]:
                raise MQTTException(0x80)
        elif t == PINGRESP:
            if self.pings:
                self.pings -= 1
        return t

    # -- umqtt.simple API --

    def begin_connect(self, clean_session=True):
        """Open the TCP connection without blocking and queue CONNECT; CONNACK arrives through
        check_msg()/wait_msg() and sets .connected (a refusal raises MQTTException)."""
        self.close()
        if self._addr is None:
            self._addr = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0]
        ai = self._addr
        s = socket.socket(ai[0], ai[1], ai[2])
        try:
            connecting = False
            if self.ssl:  # TLS handshake is blocking (bounded by timeout_ms)
                s.settimeout(self.timeout_ms / 1000)
                s.connect(ai[-1])
                s = self.ssl.wrap_socket(s, server_hostname=self.server)
                s.setblocking(False)
            else:
                s.setblocking(False)
                try:
                    s.connect(ai[-1])
                except OSError as e:
                    if e.errno not in _INPROGRESS:
                        raise
                    connecting = True
        except Exception:
            s.close()
            self._addr = None  # resolve again next time
            raise
        self._use(s)
        self._pending = connect_pkt(self.client_id, self.keepalive, clean_session, self.user,
                                    self.pswd, self.lw)
        self._connecting = connecting  # CONNECT goes out once the socket is writable
        if not connecting:
            self._send(self._pending)
            self._pending = None

    def connect(self, clean_session=True, timeout_ms=None):
        """Blocking connect; returns session_present. Raises MQTTException(rc) if refused."""
        to = self.timeout_ms if timeout_ms is None else timeout_ms
        try:
            self.begin_connect(clean_session)
            t0 = ticks_ms()
            while not self.connected:
                left = to - ticks_diff(ticks_ms(), t0)
                if left <= 0:
                    raise OSError(errno.ETIMEDOUT)
                self.wait_msg(left)
        except Exception:
            self.close()
            raise
        return self.session_present

    def close(self):
        """Drop the socket without DISCONNECT (the broker then sends the last will)."""
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self._poll = None
        self.connected = self._connecting = False
        self._st = 0

    def disconnect(self):
        try:
            self._send(DISCONNECT)
        except OSError:
            pass
        self.close()

    def ping(self):
        self._send(PINGREQ)
        self.pings += 1

    def publish(self, topic, msg, retain=False, qos=0):
        """Send without waiting. Returns the packet id for QoS 1 (tracked in .inflight), else None."""
        msg = _b(msg)
        pid = self._next_pid() if qos else 0
        h = publish_hdr(topic, len(msg), qos, retain, pid)
        if len(msg) <= 256:
            h += msg  # one write: avoids Nagle + delayed-ACK stalls on a split packet
            self._send(h)
        else:
            self._send(h)
            self._send(msg)  # no copy of a large payload
        if qos:
            self.inflight.add(pid)
            return pid

    def subscribe(self, topic, qos=0):
        """Send SUBSCRIBE without waiting; returns its packet id. A refusal raises MQTTException(0x80)
        from a later check_msg()/wait_msg()."""
        if qos not in (0, 1):
            raise ValueError("qos")
        pid = self._next_pid()
        self._send(subscribe_pkt(pid, topic, qos))
        return pid

    def wait_msg(self, timeout_ms=-1):
        """Block until one packet is handled (returns its type) or timeout_ms passes (None)."""
        t0 = ticks_ms()
        while True:
            t = self._step()
            if t is not None:
                return t
            left = -1
            if timeout_ms >= 0:
                left = timeout_ms - ticks_diff(ticks_ms(), t0)
                if left <= 0:
                    return None
            self._wait(POLLOUT if self._connecting else POLLIN, left)

    def check_msg(self, max_packets=8):
        """Handle packets already received (at most max_packets), never waiting.
        Returns the type of the last packet handled or None."""
        r = None
        for _ in range(max_packets):
            t = self._step()
            if t is None:
                break
            r = t
        return r
