"""ghnode.mqtt and ghnode.link against a real mosquitto (CPython runs the same firmware files)."""
import queue
import time

import paho.mqtt.client as paho
import pytest

from ghnode import link, mqtt
from ghnode.hal_sim import WiFi

pytestmark = pytest.mark.broker


def now_ms():
    return int(time.monotonic() * 1000)


def until(cond, timeout_s=5.0, poll=None):
    """Spin (driving poll(now_ms) if given) until cond() is true; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if poll:
            poll(now_ms())
        if cond():
            return
        time.sleep(0.005)
    raise AssertionError("condition not met in %.1f s" % timeout_s)


def pump(client, cond, timeout_s=5.0):
    until(cond, timeout_s, poll=lambda _t: client.check_msg())


class Watcher:
    """A paho-mqtt 2.x subscriber collecting (topic, payload, retain)."""

    def __init__(self, broker, topic):
        self.q = queue.Queue()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, m.payload, m.retain))
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()

    def get(self, timeout_s=5.0):
        return self.q.get(timeout=timeout_s)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def watchers():
    made = []
    yield lambda broker, topic: made.append(Watcher(broker, topic)) or made[-1]
    for w in made:
        w.close()


def test_connect_subscribe_publish_to_self_qos0_and_qos1(mosquitto):
    c = mqtt.MQTTClient("n-self", mosquitto.host, mosquitto.port, keepalive=30)
    got, acked = [], []
    c.set_callback(lambda t, m: got.append((t, m)))
    c.on_puback = acked.append
    assert c.connect() == 0
    sub = c.subscribe(b"gh/n-self/#", 1)
    pump(c, lambda: c.rx >= 2)  # CONNACK + SUBACK
    assert c.publish(b"gh/n-self/a", b"zero") is None
    pids = [c.publish(b"gh/n-self/b", b"one-%d" % i, qos=1) for i in range(5)]
    assert sub not in pids and len(c.inflight) == 5  # all five in flight at once
    pump(c, lambda: len(got) == 6 and not c.inflight)
    assert sorted(acked) == sorted(pids)
    assert got[0] == (b"gh/n-self/a", b"zero")
    assert got[1:] == [(b"gh/n-self/b", b"one-%d" % i) for i in range(5)]
    big = bytes(range(256)) * 20  # 5 KiB: multi-segment read and unsplit write path
    c.max_packet = 8192
    c.publish(b"gh/n-self/big", big, qos=1)
    pump(c, lambda: len(got) == 7 and not c.inflight)
    assert got[-1] == (b"gh/n-self/big", big)
    c.disconnect()


def test_check_msg_never_blocks_when_idle(mosquitto):
    c = mqtt.MQTTClient("n-idle", mosquitto.host, mosquitto.port)
    c.connect()
    t0 = time.monotonic()
    for _ in range(200):
        assert c.check_msg() is None
    assert time.monotonic() - t0 < 0.2
    assert c.wait_msg(50) is None  # bounded wait returns None on timeout
    c.disconnect()


def test_connack_refusal_raises_with_return_code(mosquitto):
    # [MQTT-3.1.3-8]: an empty client id with CleanSession=0 must be refused with code 2
    c = mqtt.MQTTClient("", mosquitto.host, mosquitto.port)
    e = pytest.raises(mqtt.MQTTException, c.connect, False).value
    assert e.code == 2 and c.sock is None


def test_connect_to_closed_port_raises_oserror(mosquitto):
    mosquitto.stop()
    c = mqtt.MQTTClient("n-x", mosquitto.host, mosquitto.port)
    with pytest.raises(OSError):
        c.connect(timeout_ms=2000)


def test_retained_birth_then_will_when_socket_dies(mosquitto, watchers):
    lk = link.Link("n-lwt", mosquitto.host, mosquitto.port, wifi=WiFi(), birth=b"online:sig",
                   will=b"offline:sig", keepalive_s=30)
    until(lambda: lk.up, poll=lk.poll)
    w = watchers(mosquitto, "gh/n-lwt/status")
    assert w.get() == ("gh/n-lwt/status", b"online:sig", True)  # retained birth
    lk.client.sock.close()  # socket dies without DISCONNECT
    assert w.get() == ("gh/n-lwt/status", b"offline:sig", False)  # live will delivery
    late = watchers(mosquitto, "gh/n-lwt/status")
    assert late.get() == ("gh/n-lwt/status", b"offline:sig", True)  # and it is retained
    until(lambda: lk.up and lk.connects == 2, poll=lk.poll)  # link notices, comes back
    assert w.get() == ("gh/n-lwt/status", b"online:sig", False)
    lk.close()


def test_graceful_close_leaves_offline_retained(mosquitto, watchers):
    lk = link.Link("n-bye", mosquitto.host, mosquitto.port, wifi=WiFi())
    until(lambda: lk.up, poll=lk.poll)
    lk.close()
    w = watchers(mosquitto, "gh/n-bye/status")
    assert w.get() == ("gh/n-bye/status", b"offline", True)


def test_pings_keep_session_alive_past_keepalive(mosquitto):
    # A silent client with keepalive 1 s as the control: the broker hangs up on it (mosquitto
    # 2.0 checks keepalives every few seconds), while the link with the same keepalive stays up.
    quiet = mqtt.MQTTClient("n-quiet", mosquitto.host, mosquitto.port, keepalive=1)
    quiet.connect()
    lk = link.Link("n-ping", mosquitto.host, mosquitto.port, wifi=WiFi(), keepalive_s=1)
    until(lambda: lk.up, poll=lk.poll)
    t0 = time.monotonic()
    quiet_dropped_at = None
    while time.monotonic() - t0 < 12:
        lk.poll(now_ms())
        if quiet_dropped_at is None:
            try:
                quiet.check_msg()
            except OSError:
                quiet_dropped_at = time.monotonic()
                quiet.close()
        elif time.monotonic() - quiet_dropped_at > 1.0:
            break
        time.sleep(0.01)
    assert quiet_dropped_at is not None, "broker never enforced the keepalive on the control"
    assert lk.up and lk.connects == 1 and lk.disconnects == 0
    assert lk.pings >= 5 and lk.ping_timeouts == 0 and lk.client.pings <= 1
    lk.close()


def test_broker_restart_backoff_reconnect_and_resubscribe(mosquitto, watchers):
    lk = link.Link("n-rs", mosquitto.host, mosquitto.port, wifi=WiFi(), keepalive_s=5,
                   backoff_base_ms=50, backoff_cap_ms=400, connect_timeout_ms=1000)
    got = []
    lk.on_message = lambda t, m: got.append((t, m))
    lk.subscribe("gh/n-rs/cmd")
    until(lambda: lk.up, poll=lk.poll)
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    pub.publish("gh/n-rs/cmd", b"before", qos=1).wait_for_publish(5)
    until(lambda: got, poll=lk.poll)
    pub.loop_stop()

    mosquitto.stop()
    until(lambda: not lk.up, timeout_s=3, poll=lk.poll)
    assert lk.disconnects == 1
    assert lk.publish("gh/n-rs/m", b"x") is False  # down: refuses, does not raise
    a0 = lk.attempts
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:  # broker down 2 s: backoff capped at 400 ms
        t = time.monotonic()
        lk.poll(now_ms())
        assert time.monotonic() - t < 0.05  # poll never stalls the main loop
        time.sleep(0.005)
    assert not lk.up and 4 <= lk.attempts - a0 <= 80 and lk.failures >= 4

    mosquitto.start()
    until(lambda: lk.up, timeout_s=3, poll=lk.poll)
    assert lk.connects == 2
    until(lambda: lk.client.rx >= 3, poll=lk.poll)  # CONNACK, PUBACK(birth), SUBACK
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    pub.publish("gh/n-rs/cmd", b"after", qos=1).wait_for_publish(5)
    until(lambda: len(got) == 2, poll=lk.poll)
    assert got == [(b"gh/n-rs/cmd", b"before"), (b"gh/n-rs/cmd", b"after")]
    pub.loop_stop()
    pub.disconnect()
    lk.close()
