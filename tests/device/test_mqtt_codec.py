"""MQTT packet codec, incremental receive and the link's connect/backoff/keepalive logic.

No sockets: runs unchanged on CPython and on the MicroPython WebAssembly port.
"""
from devtest import raises

from ghnode import link, mqtt
from ghnode.hal_sim import WiFi


# ---- remaining length ----------------------------------------------------------------------

LEN_VECTORS = [  # spec table 2.4 boundaries
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"),
    (268435455, b"\xff\xff\xff\x7f"),
]


def test_remaining_length_encodes_spec_boundaries():
    for n, enc in LEN_VECTORS:
        assert bytes(mqtt.enc_len(n)) == enc, n


def test_remaining_length_decodes_and_round_trips():
    for n, enc in LEN_VECTORS:
        assert mqtt.dec_len(enc) == (n, len(enc))
        assert mqtt.dec_len(b"\x99" + enc, 1) == (n, len(enc) + 1)
    for n in (1, 200, 321, 70000, 1000000):
        assert mqtt.dec_len(mqtt.enc_len(n)) == (n, len(mqtt.enc_len(n)))


def test_remaining_length_incomplete_and_malformed():
    assert mqtt.dec_len(b"") is None
    assert mqtt.dec_len(b"\x80") is None
    assert mqtt.dec_len(b"\xff\xff\xff") is None
    e = raises(mqtt.MQTTException, mqtt.dec_len, b"\xff\xff\xff\xff\x01")
    assert e.code == 0
    raises(ValueError, mqtt.enc_len, 268435456)
    raises(ValueError, mqtt.enc_len, -1)


# ---- encoders ------------------------------------------------------------------------------

def test_connect_minimal():
    p = mqtt.connect_pkt("c1", keepalive=30)
    assert bytes(p) == b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x1e\x00\x02c1"
    assert bytes(mqtt.connect_pkt(b"c1", 0, clean_session=False))[9] == 0


def test_connect_with_will_user_password():
    p = bytes(mqtt.connect_pkt("n", 60, True, "u", "pw", (b"gh/n/status", b"off", True, 1)))
    first, body, end = mqtt.parse(p)
    assert first == 0x10 and end == len(p)
    body = bytes(body)
    assert body[:7] == b"\x00\x04MQTT\x04"
    assert body[7] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, pw, will retain, qos1, will, clean
    assert body[8:10] == b"\x00\x3c"
    assert body[10:] == b"\x00\x01n\x00\x0bgh/n/status\x00\x03off\x00\x01u\x00\x02pw"
    raises(ValueError, mqtt.connect_pkt, "n", 0, True, None, "pw")


def test_publish_qos0_qos1_and_long_payload():
    assert bytes(mqtt.publish_pkt("a/b", b"hi")) == b"\x30\x07\x00\x03a/bhi"
    assert bytes(mqtt.publish_pkt(b"a/b", "hi", 1, True, 0x0102)) == b"\x33\x09\x00\x03a/b\x01\x02hi"
    assert bytes(mqtt.publish_pkt("t", b"", 0, False, 0, True))[0] == 0x38  # DUP flag
    payload = bytes(range(200))
    p = mqtt.publish_pkt("t", payload, 1, False, 9)
    assert bytes(p[:3]) == b"\x32\xcd\x01"  # 2+1+2+200 = 205 -> two length bytes
    assert bytes(mqtt.publish_hdr("t", 200, 1, False, 9)) == bytes(p[:-200])
    raises(ValueError, mqtt.publish_pkt, "t", b"", 2, False, 1)


def test_subscribe_ping_disconnect_puback():
    assert bytes(mqtt.subscribe_pkt(1, "a/b", 1)) == b"\x82\x08\x00\x01\x00\x03a/b\x01"
    assert mqtt.PINGREQ == b"\xc0\x00"
    assert mqtt.DISCONNECT == b"\xe0\x00"
    assert mqtt.puback_pkt(0x1234) == b"\x40\x02\x12\x34"


# ---- decoders ------------------------------------------------------------------------------

def test_decode_acks():
    assert mqtt.decode_connack(b"\x00\x00") == (0, 0)
    assert mqtt.decode_connack(b"\x01\x00") == (1, 0)
    assert mqtt.decode_connack(b"\x00\x05") == (0, 5)
    raises(mqtt.MQTTException, mqtt.decode_connack, b"\x00")
    assert mqtt.decode_puback(b"\xff\xfe") == 65534
    assert mqtt.decode_suback(b"\x00\x07\x01") == (7, b"\x01")
    assert mqtt.decode_suback(b"\x00\x08\x80") == (8, b"\x80")


def test_decode_publish_round_trip():
    for qos, retain, pid in ((0, False, 0), (1, True, 513)):
        p = mqtt.publish_pkt("gh/n1/cmd", b'{"relay":1}', qos, retain, pid)
        first, body, end = mqtt.parse(p)
        assert end == len(p)
        assert mqtt.decode_publish(first, body) == (b"gh/n1/cmd", b'{"relay":1}', qos, 1 if retain else 0, pid)
    raises(mqtt.MQTTException, mqtt.decode_publish, 0x32, b"\x00\x05ab")


def test_parse_splits_stream():
    stream = b"\x20\x02\x00\x00" + b"\xd0\x00" + bytes(mqtt.publish_pkt("t", b"x"))
    out = []
    pos = 0
    while True:
        r = mqtt.parse(stream, pos)
        if r is None:
            break
        out.append((r[0], bytes(r[1])))
        pos = r[2]
    assert out == [(0x20, b"\x00\x00"), (0xD0, b""), (0x30, b"\x00\x01tx")]
    assert mqtt.parse(stream[:3]) is None


def test_exception_carries_connack_code():
    e = mqtt.MQTTException(5)
    assert e.code == 5 and e.args[0] == 5 and "not authorized" in e.args[1]


# ---- client receive path over a fake stream --------------------------------------------------

class FakeSock:
    """A non-blocking stream: readinto returns None when empty, b'' queued means EOF."""

    def __init__(self):
        self.rx = []
        self.out = bytearray()
        self.closed = False

    def feed(self, data):
        self.rx.append(bytes(data))

    def readinto(self, mv):
        if not self.rx:
            return None
        c = self.rx[0]
        n = min(len(mv), len(c))
        for i in range(n):
            mv[i] = c[i]
        if n < len(c):
            self.rx[0] = c[n:]
        else:
            self.rx.pop(0)
        return n

    def write(self, mv):
        self.out += bytes(mv)
        return len(mv)

    def close(self):
        self.closed = True


def _client(**kw):
    c = mqtt.MQTTClient("n1", "127.0.0.1", **kw)
    s = FakeSock()
    c._use(s)
    return c, s


def test_client_connack_arrives_in_pieces():
    c, s = _client()
    s.feed(b"\x20")
    assert c.check_msg() is None and not c.connected
    s.feed(b"\x02\x00")
    assert c.check_msg() is None and not c.connected
    s.feed(b"\x00")
    assert c.check_msg() == mqtt.CONNACK and c.connected


def test_client_connack_refused_raises_code():
    c, s = _client()
    s.feed(b"\x20\x02\x00\x04")
    e = raises(mqtt.MQTTException, c.check_msg)
    assert e.code == 4 and not c.connected


def test_client_qos1_publishes_pipeline_and_pubacks_tracked():
    c, s = _client()
    s.feed(b"\x20\x02\x00\x00")
    c.check_msg()
    acked = []
    c.on_puback = acked.append
    pids = [c.publish("gh/n1/m", ("r%d" % i).encode(), False, 1) for i in range(3)]
    assert pids == [1, 2, 3] and c.inflight == {1, 2, 3}
    assert bytes(s.out) == b"".join(bytes(mqtt.publish_pkt("gh/n1/m", ("r%d" % i).encode(), 1, False, i + 1))
                                    for i in range(3))
    assert c.publish("t", b"q0") is None and c.inflight == {1, 2, 3}
    s.feed(mqtt.puback_pkt(2) + mqtt.puback_pkt(1))
    c.check_msg()
    assert acked == [2, 1] and c.inflight == {3}
    s.feed(mqtt.puback_pkt(99))  # unknown id: ignored
    c.check_msg()
    assert acked == [2, 1]


def test_client_packet_ids_wrap_and_skip_zero():
    c, s = _client()
    c.pid = 65534
    assert [c._next_pid() for _ in range(3)] == [65535, 1, 2]


def test_client_incoming_publish_qos1_is_delivered_and_acked():
    c, s = _client()
    got = []
    c.set_callback(lambda t, m: got.append((t, m)))
    big = bytes(range(100)) * 3  # larger than the reused small buffer
    s.feed(mqtt.publish_pkt("gh/n1/cmd", b"on", 1, False, 7) + mqtt.publish_pkt("x", big))
    assert c.check_msg() == mqtt.PUBLISH
    assert got == [(b"gh/n1/cmd", b"on"), (b"x", big)]
    assert bytes(s.out) == mqtt.puback_pkt(7)
    assert c.rx == 2


def test_client_ping_suback_and_oversized_drop():
    c, s = _client(max_packet=64)
    c.ping()
    assert bytes(s.out) == mqtt.PINGREQ and c.pings == 1
    got = []
    c.set_callback(lambda t, m: got.append(t))
    s.feed(mqtt.publish_pkt("big", bytes(500)) + b"\xd0\x00" + b"\x90\x03\x00\x01\x01")
    c.check_msg()
    assert c.dropped == 1 and got == [] and c.pings == 0
    s.feed(b"\x90\x03\x00\x02\x80")
    assert raises(mqtt.MQTTException, c.check_msg).code == 0x80


def test_client_eof_raises_oserror():
    c, s = _client()
    s.feed(b"")
    raises(OSError, c.check_msg)


# ---- link: backoff, connect, keepalive with a fake client and fake clock ----------------------

def test_backoff_full_jitter_schedule():
    assert [link.backoff_ms(a, 1000, 60000, 0.5) for a in range(9)] == \
        [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    assert link.backoff_ms(0, 1000, 60000, 0.0) == 0
    assert link.backoff_ms(200, 1000, 60000, 0.9999) == 59994
    assert link.backoff_ms(3, 100, 500, 0.5) == 250
    r = link._rand()
    assert 0 <= r < 1


class FakeClient:
    """Stands in for mqtt.MQTTClient: the test decides when connects fail or CONNACKs arrive."""

    def __init__(self, client_id, server, port, user, password, keepalive, ssl):
        self.client_id, self.keepalive = client_id, keepalive
        self.refuse = False  # begin_connect raises
        self.ack = True  # CONNACK arrives on the next check_msg
        self.pong = True  # PINGRESP arrives on the next check_msg
        self.dead = False  # check_msg raises OSError
        self.open = self.connected = False
        self.inflight = set()
        self.pings = self.rx = self.pid = 0
        self.connect_calls = 0
        self.sent = []
        self.cb = self.on_puback = self.lw = None

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.lw = (topic, msg, retain, qos)

    def begin_connect(self, clean_session=True):
        self.connect_calls += 1
        if self.refuse:
            raise OSError(111)
        self.open, self.connected, self.inflight, self.pings = True, False, set(), 0

    def check_msg(self):
        if self.dead:
            raise OSError(104)
        if self.open and not self.connected and self.ack:
            self.connected = True
            self.rx += 1
        if self.pings and self.pong:
            self.pings = 0
            self.rx += 1

    def publish(self, topic, msg, retain=False, qos=0):
        self.sent.append(("pub", topic, msg, retain, qos))
        if qos:
            self.pid += 1
            self.inflight.add(self.pid)
            return self.pid

    def subscribe(self, topic, qos=0):
        self.sent.append(("sub", topic, qos))

    def ping(self):
        self.pings += 1

    def close(self):
        self.open = self.connected = False

    def disconnect(self):
        self.sent.append(("disconnect",))
        self.close()


def _link(wifi=None, **kw):
    kw.setdefault("rand", lambda: 0.5)
    return link.Link("n1", "gw", wifi=wifi or WiFi(), client_factory=FakeClient, **kw)


def _run(lk, t0, t1, step=100, trace=None):
    t = t0
    while t < t1:
        before = lk.client.connect_calls
        lk.poll(t)
        if trace is not None and lk.client.connect_calls != before:
            trace.append(t)
        t += step
    return t


def test_link_backoff_while_broker_refuses():
    lk = _link()
    lk.client.refuse = True
    tries = []
    _run(lk, 0, 130000, trace=tries)
    # delays 500, 1000, 2000, 4000, 8000, 16000, then capped at 60000 * 0.5
    assert tries == [0, 500, 1500, 3500, 7500, 15500, 31500, 61500, 91500, 121500]
    assert not lk.up and lk.attempts == 10 and lk.failures == 10 and lk.connects == 0
    assert lk.publish("gh/n1/m", b"x") is False


def test_link_connects_with_birth_will_and_subscriptions():
    lk = _link(birth=lambda: b"online-signed", will=b"offline-signed")
    lk.subscribe("gh/n1/cmd")
    ups = []
    lk.on_up = lambda: ups.append(1)
    lk.poll(0)
    assert lk.state == link.CONNECTING and not lk.up
    lk.poll(10)
    assert lk.up and lk.connects == 1 and ups == [1]
    c = lk.client
    assert c.lw == ("gh/n1/status", b"offline-signed", True, 1)
    assert c.sent == [("pub", "gh/n1/status", b"online-signed", True, 1), ("sub", "gh/n1/cmd", 1)]
    assert lk.publish("gh/n1/m", b"r") == 2
    assert lk.publish("gh/n1/m", b"r", qos=0) is True
    lk.subscribe("gh/all/cmd", 0)
    assert c.sent[-1] == ("sub", "gh/all/cmd", 0)


def test_link_reconnects_and_resubscribes_after_drop():
    lk = _link(backoff_base_ms=1000)
    lk.subscribe("a")
    lk.subscribe("b", 0)
    downs = []
    lk.on_down = downs.append
    _run(lk, 0, 1000)
    assert lk.up
    lk.client.dead = True
    lk.poll(1000)
    assert not lk.up and lk.disconnects == 1 and len(downs) == 1
    assert lk.retry_in_ms == 500  # attempt counter was reset by the successful connect
    lk.client.dead = False
    lk.client.sent = []
    _run(lk, 1100, 3000)
    assert lk.up and lk.connects == 2
    assert [s for s in lk.client.sent if s[0] == "sub"] == [("sub", "a", 1), ("sub", "b", 0)]


def test_link_pings_on_schedule_and_drops_without_pingresp():
    lk = _link(keepalive_s=10)
    lk.poll(0)
    lk.poll(100)
    assert lk.up
    c = lk.client
    _run(lk, 200, 5100)
    assert lk.pings == 0
    lk.poll(5100)  # idle for keepalive/2
    assert lk.pings == 1
    _run(lk, 5200, 30000)  # PINGRESPs come back: stays up, pings every 5 s
    assert lk.up and lk.pings == 5 and lk.ping_timeouts == 0
    c.pong = False
    _run(lk, 30000, 40100)  # the unanswered ping goes out at 30100
    assert lk.up and lk.pings == 6 and lk.ping_timeouts == 0
    lk.poll(40100)  # keepalive (10 s) after it: give up
    assert not lk.up and lk.ping_timeouts == 1 and lk.disconnects == 1


def test_link_publish_traffic_alone_does_not_postpone_ping_forever():
    lk = _link(keepalive_s=10)
    lk.poll(0)
    lk.poll(100)
    c = lk.client
    c.pong = True
    for t in range(200, 6000, 100):
        lk.publish("m", b"x", qos=0)  # sends, but nothing comes back from the broker
        lk.poll(t)
    assert lk.pings == 1  # no inbound packet for keepalive/2 -> probe


def test_link_connack_timeout_counts_failure():
    lk = _link(connect_timeout_ms=2000)
    lk.client.ack = False
    lk.poll(0)
    _run(lk, 100, 2000)
    assert lk.state == link.CONNECTING
    lk.poll(2000)
    assert lk.state == link.DOWN and lk.failures == 1 and not lk.client.open


def test_link_inflight_limit_and_down_publish():
    lk = _link(max_inflight=2)
    assert lk.publish("m", b"x") is False
    lk.poll(0)
    lk.poll(100)
    assert lk.inflight == {1}  # the birth message
    assert lk.publish("m", b"1") == 2
    assert lk.publish("m", b"2") is False
    lk.client.inflight.discard(1)
    assert lk.publish("m", b"2") == 3
    assert lk.publish("m", b"x", qos=0) is True  # QoS 0 is not limited


def test_link_waits_for_wifi_then_connects_at_once():
    wifi = WiFi()
    wifi.up = False
    wifi.connect = lambda: setattr(wifi, "connects", wifi.connects + 1)  # association pending
    lk = _link(wifi=wifi)
    _run(lk, 0, 1400)
    assert wifi.connects == 2 and lk.client.connect_calls == 0  # at 0 and 500
    wifi.up = True
    lk.poll(1400)  # sooner than the next attempt (1500) would be
    assert lk.client.connect_calls == 1
    lk.poll(1500)
    assert lk.up
    wifi.up = False
    lk.poll(1600)
    assert not lk.up and lk.disconnects == 1


def test_link_handler_errors_are_counted_not_raised():
    lk = _link()
    lk.on_message = lambda t, m: 1 / 0
    lk.client.cb(b"t", b"m")
    assert lk.errors == 1


def test_link_close_publishes_will_payload_and_disconnects():
    lk = _link(will=b"bye")
    lk.poll(0)
    lk.poll(100)
    lk.close()
    assert lk.client.sent[-2:] == [("pub", "gh/n1/status", b"bye", True, 1), ("disconnect",)]
    lk.poll(10000)
    assert lk.state == link.CLOSED and lk.client.connect_calls == 1
