"""The node's link to its gateway's broker: Wi-Fi, MQTT session, keepalive, backoff, resubscribe.

Everything is driven by poll(now_ms) from the app's main loop; nothing in here sleeps or waits
on the network for long (TCP connect is non-blocking, reads take only what has arrived).
Time comes in as now_ms (time.ticks_ms() on the board, any int clock in tests), so the
schedule is testable without sleeping.
"""
import random

from . import mqtt

try:
    from time import ticks_diff
except ImportError:  # CPython
    def ticks_diff(a, b):
        return a - b

DOWN, CONNECTING, UP, CLOSED = 0, 1, 2, 3


def backoff_ms(attempt, base_ms=1000, cap_ms=60000, r=0.5):
    """Full-jitter delay before retry `attempt` (0-based): r * min(cap, base * 2**attempt),
    r uniform in [0, 1). Jitter spreads a fleet's reconnects after a broker restart."""
    d = base_ms
    while attempt > 0 and d < cap_ms:  # doubling loop: no big ints on the board
        d <<= 1
        attempt -= 1
    return int(r * min(d, cap_ms))


def _rand():
    return random.getrandbits(24) / 16777216


def _call(x):
    return x() if callable(x) else x


class Link:
    """Keeps one MQTT session up. birth/will are bytes or callables returning bytes (called at
    each connect, so the app can sign fresh payloads); both go retained to gh/<node_id>/status."""

    def __init__(self, node_id, server, port=1883, wifi=None, birth=b"online", will=b"offline",
                 keepalive_s=30, backoff_base_ms=1000, backoff_cap_ms=60000, rand=None,
                 connect_timeout_ms=5000, max_inflight=16, user=None, password=None, ssl=None,
                 client_id=None, client_factory=None):
        self.node_id = node_id
        self.status_topic = "gh/%s/status" % node_id
        self.wifi = wifi
        self.birth = birth
        self.will = will
        self.keepalive_ms = keepalive_s * 1000
        self.base_ms = backoff_base_ms
        self.cap_ms = backoff_cap_ms
        self.rand = rand or _rand
        self.connect_timeout_ms = connect_timeout_ms
        self.max_inflight = max_inflight
        make = client_factory or mqtt.MQTTClient
        self.client = make(client_id or node_id, server, port, user, password, keepalive_s, ssl)
        self.client.set_callback(self._deliver)
        self.client.on_puback = self._acked
        self.on_message = None  # f(topic: bytes, msg: bytes)
        self.on_puback = None  # f(pid) when a QoS 1 publish is acknowledged
        self.on_up = None  # f() after each (re)connect, birth sent and subscriptions renewed
        self.on_down = None  # f(reason) when an up session is lost; unacked pids are lost too
        self.topics = []  # (topic, qos), renewed after every reconnect (clean sessions)
        self.state = DOWN
        self.attempt = 0  # backoff exponent; reset by a successful connect
        self.retry_in_ms = 0  # delay chosen for the next attempt
        self.last_error = None
        # counters
        self.connects = self.disconnects = self.attempts = self.failures = 0
        self.ping_timeouts = self.pings = self.errors = self.sub_refused = 0
        self._now = 0
        self._t = None  # start of the current wait (DOWN) or attempt (CONNECTING); None = now
        self._wifi_wait = False

    @property
    def up(self):
        return self.state == UP

    def counters(self):
        return {"connects": self.connects, "disconnects": self.disconnects,
                "attempts": self.attempts, "failures": self.failures, "pings": self.pings,
                "ping_timeouts": self.ping_timeouts, "errors": self.errors,
                "sub_refused": self.sub_refused, "inflight": len(self.client.inflight),
                "dropped": getattr(self.client, "dropped", 0)}

    def rssi(self):
        return self.wifi.rssi() if self.wifi else None

    @property
    def inflight(self):
        return self.client.inflight

    def subscribe(self, topic, qos=1):
        """Register a subscription; sent now if up and again after every reconnect."""
        self.topics.append((topic, qos))
        if self.state == UP:
            try:
                self.client.subscribe(topic, qos)
                self._last_tx = self._now
            except OSError as e:
                self._drop(e)

    def publish(self, topic, payload, qos=1, retain=False):
        """Returns the packet id (QoS 1) or True (QoS 0) once written; False when down or when
        max_inflight QoS 1 messages await PUBACK (the caller keeps the record and retries)."""
        if self.state != UP or (qos and len(self.client.inflight) >= self.max_inflight):
            return False
        try:
            pid = self.client.publish(topic, payload, retain, qos)
        except OSError as e:
            self._drop(e)
            return False
        self._last_tx = self._now
        return pid if qos else True

    def poll(self, now_ms):
        """Drive connect, receive, keepalive and reconnect. Call often from the main loop."""
        self._now = now_ms
        st = self.state
        if st == UP:
            if self.wifi and not self.wifi.isconnected():
                self._drop("wifi lost")
                return
            try:
                self._service(now_ms)
            except mqtt.MQTTException as e:
                if e.code == 0x80:  # ACL refused a topic: keep the session, telemetry still flows
                    self.sub_refused += 1
                    self.last_error = e
                else:
                    self._drop(e)
            except OSError as e:
                self._drop(e)
        elif st == CONNECTING:
            c = self.client
            try:
                c.check_msg()
                if not c.connected and ticks_diff(now_ms, self._t) >= self.connect_timeout_ms:
                    raise OSError(110)  # ETIMEDOUT: TCP connect or CONNACK too slow
            except (OSError, mqtt.MQTTException) as e:  # refused: MQTTException(rc)
                self._fail(e)
                return
            if c.connected:
                try:
                    self._connected(now_ms)
                except OSError as e:
                    self._drop(e)
        elif st == DOWN:
            w = self.wifi
            if self._wifi_wait and w.isconnected():
                self._t = None  # Wi-Fi came back: try now rather than at the end of the backoff
            if self._t is None or ticks_diff(now_ms, self._t) >= self.retry_in_ms:
                self._attempt(now_ms)

    def close(self):
        """Graceful stop: publish the will payload ourselves (the broker drops the will on
        DISCONNECT), then DISCONNECT. poll() does nothing afterwards."""
        if self.state == UP:
            try:
                self.client.publish(self.status_topic, _call(self.will), True, 1)
            except OSError:
                pass
            self.client.disconnect()
        else:
            self.client.close()
        self.state = CLOSED

    # -- internals --

    def _deliver(self, topic, msg):
        if self.on_message:
            try:
                self.on_message(topic, msg)
            except Exception as e:  # a bad handler must not take the link down
                self.errors += 1
                self.last_error = e

    def _acked(self, pid):
        if self.on_puback:
            self.on_puback(pid)

    def _attempt(self, now):
        self.attempts += 1
        w = self.wifi
        if w and not w.isconnected():
            w.connect()  # non-blocking on the ESP32; association continues in the background
            self._wifi_wait = True
            self._schedule(now, "wifi down")
            return
        self._wifi_wait = False
        c = self.client
        c.set_last_will(self.status_topic, _call(self.will), True, 1)
        try:
            c.begin_connect(True)
        except OSError as e:
            self._fail(e)
            return
        self.state = CONNECTING
        self._t = now

    def _connected(self, now):
        c = self.client
        self.state = UP
        self.connects += 1
        self.attempt = 0
        self._last_tx = self._last_rx = now
        self._rx = c.rx
        c.publish(self.status_topic, _call(self.birth), True, 1)
        for topic, qos in self.topics:
            c.subscribe(topic, qos)
        if self.on_up:
            self.on_up()

    def _service(self, now):
        c = self.client
        c.check_msg()
        if self.state != UP:  # a callback closed the link
            return
        if c.rx != self._rx:
            self._rx = c.rx
            self._last_rx = now
        ka = self.keepalive_ms
        if not ka:
            return
        if c.pings:
            if ticks_diff(now, self._ping_t) >= ka:
                self.ping_timeouts += 1
                raise OSError(110)  # no PINGRESP within keepalive: half-open connection
        elif ticks_diff(now, self._last_tx) >= ka // 2 or ticks_diff(now, self._last_rx) >= ka // 2:
            # idle either way: the ping both satisfies the broker's keepalive and proves the
            # path back to us works (QoS 0 traffic alone would not notice a dead broker)
            c.ping()
            self.pings += 1
            self._ping_t = self._last_tx = now

    def _schedule(self, now, reason):
        self.last_error = reason
        self.retry_in_ms = backoff_ms(self.attempt, self.base_ms, self.cap_ms, self.rand())
        self.attempt += 1
        self._t = now

    def _fail(self, e):
        self.client.close()
        self.failures += 1
        self.state = DOWN
        self._schedule(self._now, e)

    def _drop(self, reason):
        self.client.close()  # no DISCONNECT: the broker publishes our will
        self.disconnects += 1
        self.state = DOWN
        self._schedule(self._now, reason)
        if self.on_down:
            self.on_down(reason)
