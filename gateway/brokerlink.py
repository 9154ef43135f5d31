"""The gateway's session with its local broker: an asyncio MQTT 5 (or 3.1.1) client, no threads.

Why not paho here (paho still carries the uplink, gateway.mqtt): paho reads one packet at a time
with several recv calls, builds a message and an MQTT 5 properties object per packet, calls back
from its own thread, and writes every manual PUBACK on its own. At thousands of node messages a
second that was about 40 % of the gateway's CPU. This client parses every packet of a socket read
in one pass and hands the PUBLISHes to the service in one call; everything queued during one turn
of the event loop (the PUBACKs of a committed batch, the acks to the nodes) leaves in one write.

The session is what the gateway's delivery guarantee rests on (docs/GATEWAY.md):
- persistent (clean start off; MQTT 5 session expiry 7 days): what arrives while the gateway is
  down waits in the broker;
- manual PUBACK (MQTT 5): `ack()` is called only after the message's transaction has committed, so
  a gateway killed mid-batch gets the rest again. A PUBACK goes out only on the connection that
  delivered the message (`generation`): after a reconnect the broker redelivers, and a stale
  packet id could name another message. MQTT 3.1.1 (brokers without MQTT 5, like the demo's amqtt)
  acknowledges on receipt, as the broker's in-flight window for 3.1.1 clients is small.
- our own QoS 1 publishes stay within the broker's Receive Maximum (Mosquitto: 20), wait in order
  beyond it, and are sent again (DUP) after a reconnect until the broker has acknowledged them.
- reconnect with backoff 1 s doubling to 30 s; PINGREQ every keepalive/2, the connection dropped
  when a PINGRESP is a keepalive late; connection failures reported like the uplink's
  (gridhive.mqtt_security).

The packet codec is the module-level pure functions below (MQTT 5 / 3.1.1, QoS 0 and 1 only); the
variable length integers are the node client's (ghnode.mqtt).
"""
from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from typing import Callable, NamedTuple

from ghnode.mqtt import MQTTException, dec_len, enc_len
from gridhive.mqtt_security import ConnectFailure, FailureLog, Options, describe_connack, describe_exception

log = logging.getLogger(__name__)

# Packet types (the high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # MQTT 5: reason 0 (normal: the will is not published) may be left out
SESSION_EXPIRY_S = 7 * 86400
CONNECT_TIMEOUT_S = 10.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 1.0, 30.0
_PROP_RECEIVE_MAXIMUM = 0x21


class ProtocolError(Exception):
    """Bytes from the broker that are not the MQTT we speak: the connection is dropped."""


class Received(NamedTuple):
    """One PUBLISH from the broker."""
    topic: str
    payload: bytes
    qos: int
    retain: bool
    pid: int  # packet id, 0 for QoS 0
    generation: int  # which connection delivered it: its PUBACK is valid on that connection only


# --- codec (pure) -------------------------------------------------------------------------------

def read_varint(buf, pos: int) -> tuple[int, int] | None:
    """(value, next position) of the variable byte integer at buf[pos], or None if it is incomplete."""
    try:
        return dec_len(buf, pos)
    except MQTTException:
        raise ProtocolError("a variable length integer longer than 4 bytes") from None


def _str16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + enc_len(len(body)) + body


def connect_packet(client_id: str, keepalive_s: int, *, mqtt5: bool, clean_start: bool,
                   user: str | None = None, password: str | None = None,
                   will: tuple[str, bytes, int, bool] | None = None, session_expiry_s: int = 0,
                   receive_maximum: int = 65535) -> bytes:
    flags = 0x02 if clean_start else 0
    payload = _str16(client_id.encode())
    if will:
        topic, message, qos, retain = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += (b"\x00" if mqtt5 else b"") + _str16(topic.encode()) + _str16(message)  # no will properties
    if user:
        flags |= 0x80
        payload += _str16(user.encode())
        if password:
            flags |= 0x40
            payload += _str16(password.encode())
    header = b"\x00\x04MQTT" + bytes((5 if mqtt5 else 4, flags)) + struct.pack("!H", keepalive_s)
    if mqtt5:
        props = b"\x11" + struct.pack("!I", session_expiry_s) + b"\x21" + struct.pack("!H", receive_maximum)
        header += enc_len(len(props)) + props
    return _packet(0x10, header + payload)


def subscribe_packet(pid: int, subscriptions, *, mqtt5: bool) -> bytes:
    """One SUBSCRIBE for every (filter, qos); MQTT 5 sets no-local: we never hear our own publishes."""
    body = struct.pack("!H", pid) + (b"\x00" if mqtt5 else b"")
    for topic, qos in subscriptions:
        body += _str16(topic.encode()) + bytes((qos | (0x04 if mqtt5 else 0),))
    return _packet(0x82, body)


def publish_packet(topic: str, payload: bytes, qos: int, retain: bool, pid: int, *, mqtt5: bool,
                   dup: bool = False) -> bytes:
    variable = _str16(topic.encode()) + (struct.pack("!H", pid) if qos else b"") + (b"\x00" if mqtt5 else b"")
    first = 0x30 | (0x08 if dup else 0) | qos << 1 | (1 if retain else 0)
    return bytes((first,)) + enc_len(len(variable) + len(payload)) + variable + payload


def puback_packet(pid: int) -> bytes:
    return struct.pack("!BBH", 0x40, 2, pid)  # MQTT 5: no reason code means success


def read_packets(buf: bytearray) -> tuple[list[tuple[int, int, memoryview]], int]:
    """Split the complete packets off the front of buf: ([(type, flags, body), ...], bytes used)."""
    packets = []
    view = memoryview(buf)
    pos, end = 0, len(buf)
    while end - pos >= 2:
        length = read_varint(buf, pos + 1)
        if length is None or length[1] + length[0] > end:
            break
        first, (size, start) = buf[pos], length
        packets.append((first >> 4, first & 0x0F, view[start:start + size]))
        pos = start + size
    return packets, pos


def decode_publish(flags: int, body: memoryview, *, mqtt5: bool) -> tuple[str, bytes, int, bool, int]:
    """(topic, payload, qos, retain, pid) of a PUBLISH."""
    qos = flags >> 1 & 3
    if qos > 1:
        raise ProtocolError(f"a QoS {qos} PUBLISH (we subscribe at QoS 1 at most)")
    if len(body) < 2:
        raise ProtocolError("a PUBLISH without a topic")
    pos = 2 + (body[0] << 8 | body[1])
    topic = bytes(body[2:pos]).decode("utf-8", "replace")
    pid = 0
    if qos:
        if len(body) < pos + 2:
            raise ProtocolError("a QoS 1 PUBLISH without a packet id")
        pid = body[pos] << 8 | body[pos + 1]
        pos += 2
    if mqtt5:
        props = read_varint(body, pos)
        if props is None:
            raise ProtocolError("a PUBLISH with truncated properties")
        pos = props[1] + props[0]  # no property we asked for (no topic aliases) changes the meaning
    if pos > len(body):
        raise ProtocolError("a PUBLISH shorter than its header")
    return topic, bytes(body[pos:]), qos, bool(flags & 1), pid


def decode_connack(body: memoryview, *, mqtt5: bool) -> tuple[bool, int, int]:
    """(session present, reason code (0 = accepted), the broker's Receive Maximum)."""
    if len(body) < 2:
        raise ProtocolError("a CONNACK shorter than 2 bytes")
    receive_maximum = 65535
    if mqtt5 and len(body) > 2:
        props = read_varint(body, 2)
        if props is None:
            raise ProtocolError("a CONNACK with truncated properties")
        pos, end = props[1], props[1] + props[0]
        while pos < end:  # find Receive Maximum; skip the others by their MQTT 5 encodings
            ident = body[pos]
            pos += 1
            if ident == _PROP_RECEIVE_MAXIMUM:
                receive_maximum = body[pos] << 8 | body[pos + 1]
            pos += _property_size(ident, body, pos)
    return bool(body[0] & 1), body[1], receive_maximum


def _property_size(ident: int, body, pos: int) -> int:
    if ident in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):  # byte
        return 1
    if ident in (0x13, 0x21, 0x22, 0x23):  # two-byte integer
        return 2
    if ident in (0x02, 0x11, 0x18, 0x27):  # four-byte integer
        return 4
    if ident == 0x0B:  # variable byte integer
        return read_varint(body, pos)[1] - pos
    if ident in (0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F):  # string or binary data
        return 2 + (body[pos] << 8 | body[pos + 1])
    if ident == 0x26:  # user property: a string pair
        first = 2 + (body[pos] << 8 | body[pos + 1])
        return first + 2 + (body[pos + first] << 8 | body[pos + first + 1])
    raise ProtocolError(f"unknown MQTT 5 property 0x{ident:02x}")


# --- the link -----------------------------------------------------------------------------------

class BrokerLink:
    def __init__(self, *, name: str, host: str, port: int, client_id: str, user: str | None = None,
                 password: str | None = None, keepalive_s: int = 30, subscriptions: tuple[tuple[str, int], ...] = (),
                 mqtt5: bool = True, will: tuple[str, bytes, int, bool] | None = None,
                 on_messages: Callable[[list[Received]], None] | None = None,
                 on_connect: Callable[[], None] | None = None,
                 on_disconnect: Callable[[], None] | None = None,
                 on_connect_failed: Callable[[ConnectFailure], None] | None = None,
                 options: Options = Options()):
        self.name, self.host, self.port, self.client_id = name, host, port, client_id
        self.user, self.password, self.keepalive_s = user, password, keepalive_s
        self.subscriptions, self.mqtt5, self.will, self.options = subscriptions, mqtt5, will, options
        self.manual_ack = mqtt5
        self._on_messages, self._on_connect, self._on_disconnect = on_messages, on_connect, on_disconnect
        self._on_connect_failed = on_connect_failed
        self.failures = FailureLog(log, name)
        self.connected = False
        self.generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._protocol: _Protocol | None = None
        self._out = bytearray()  # for the current connection, written at the end of the loop turn
        self._write_scheduled = False
        self._unacked: dict[int, bytes] = {}  # our QoS 1 publishes not yet PUBACKed: pid -> packet
        self._waiting: deque[tuple[str, bytes, bool]] = deque()  # beyond the broker's Receive Maximum
        self._send_quota = 65535
        self._last_pid = 0
        self._subscribe_pid = 0  # while the SUBSCRIBE is unanswered: ids are shared with publishes
        self._ping_sent: float | None = None
        self._closing = False
        self._paused = False
        self._refusals_logged: set[int] = set()

    # --- API -----------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task = loop.create_task(self._run())

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> bool:
        """Queue a message; False when the link is down (the caller keeps it and retries)."""
        if not self.connected:
            return False
        if isinstance(payload, str):
            payload = payload.encode()
        if qos == 0:
            self._queue(publish_packet(topic, payload, 0, retain, 0, mqtt5=self.mqtt5))
        elif len(self._unacked) < self._send_quota and not self._waiting:
            self._send(topic, payload, retain)
        else:
            self._waiting.append((topic, payload, retain))
        return True

    def ack(self, message: Received) -> None:
        """PUBACK a QoS 1 message once it is stored, unless the connection that delivered it is gone."""
        if self.manual_ack and message.qos and message.generation == self.generation and self.connected:
            self._queue(puback_packet(message.pid))

    def pause_reading(self) -> None:
        """Stop reading from the broker (TCP holds it back) until resume_reading()."""
        self._paused = True
        if self._protocol is not None:
            self._protocol.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self._protocol is not None:
            self._protocol.transport.resume_reading()
        self._paused = False

    @property
    def unacked(self) -> int:
        """Our QoS 1 publishes the broker has not acknowledged yet, waiting ones included."""
        return len(self._unacked) + len(self._waiting)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Wait (up to timeout_s) until the broker has acknowledged our publishes, then DISCONNECT."""
        self._closing = True
        deadline = time.monotonic() + timeout_s
        while self.connected and self.unacked and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.connected:
            self._queue(DISCONNECT_PACKET)
            self._write()
            self._protocol.transport.close()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # --- connection ----------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RECONNECT_MIN_S
        while not self._closing:
            if await self._session():
                delay = RECONNECT_MIN_S
            else:
                delay = min(RECONNECT_MAX_S, delay * 2)
            if not self._closing:
                await asyncio.sleep(delay)

    async def _session(self) -> bool:
        """One connection, from connect to loss; True if the broker accepted it."""
        server = f"{self.host}:{self.port}"
        try:
            _, protocol = await asyncio.wait_for(
                self._loop.create_connection(lambda: _Protocol(self), self.host, self.port), CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as e:
            self._failed(describe_exception(e, server, self.options))
            return False
        protocol.transport.write(connect_packet(
            self.client_id, self.keepalive_s, mqtt5=self.mqtt5, clean_start=False, user=self.user,
            password=self.password, will=self.will, session_expiry_s=SESSION_EXPIRY_S))
        try:
            code = await asyncio.wait_for(asyncio.shield(protocol.connack), CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as e:
            protocol.transport.abort()
            self._failed(describe_exception(e, server, self.options))
            return False
        if code:
            protocol.transport.abort()
            self._failed(describe_connack(code, server, self.user, self.options))
            return False
        try:
            while not protocol.lost.done():
                await asyncio.wait([protocol.lost], timeout=self.keepalive_s / 2)
                if protocol.lost.done():
                    break
                if self._ping_sent is not None and time.monotonic() - self._ping_sent > self.keepalive_s:
                    log.warning("%s: no PINGRESP from %s for %d s; reconnecting", self.name, server, self.keepalive_s)
                    protocol.transport.abort()
                    break
                if self._ping_sent is None:
                    self._ping_sent = time.monotonic()
                self._queue(PINGREQ_PACKET)
            await protocol.lost
        finally:
            if self._protocol is protocol:
                self._down(protocol)
        return True

    def _failed(self, failure: ConnectFailure) -> None:
        self.failures.failed(failure)
        if self._on_connect_failed:
            self._on_connect_failed(failure)

    def _up(self, protocol: _Protocol, receive_maximum: int) -> None:
        # Runs as the CONNACK is read, before any PUBLISH that follows it in the same read.
        self.generation += 1
        self._protocol, self._out, self._ping_sent = protocol, bytearray(), None
        if self._paused:
            protocol.transport.pause_reading()
        self._send_quota = max(1, receive_maximum)
        self._subscribe_pid = self._free_pid()
        self._queue(subscribe_packet(self._subscribe_pid, self.subscriptions, mqtt5=self.mqtt5))
        for pid, packet in self._unacked.items():  # the broker may not have them: again, marked DUP
            self._queue(bytes((packet[0] | 0x08,)) + packet[1:])
        self._send_waiting()
        self.connected = True
        self.failures.connected()
        log.info("%s: connected to %s:%d", self.name, self.host, self.port)
        if self._on_connect:
            self._on_connect()

    def _down(self, protocol: _Protocol) -> None:
        self._protocol = None
        self.generation += 1  # acks for what the old connection delivered must not go out
        self._out = bytearray()  # PUBACKs for the old connection; our publishes are in _unacked
        was_connected, self.connected = self.connected, False
        if was_connected and not self._closing:
            log.warning("%s: lost %s:%d (%s); reconnecting", self.name, self.host, self.port,
                        protocol.lost.result() or "closed by the broker")
        if self._on_disconnect:
            self._on_disconnect()

    # --- sending -------------------------------------------------------------------------------

    def _free_pid(self) -> int:
        pid = self._last_pid
        while True:  # ends: fewer than 65535 are in use (the send quota is at most that)
            pid = pid % 65535 + 1
            if pid not in self._unacked and pid != self._subscribe_pid:
                self._last_pid = pid
                return pid

    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        pid = self._free_pid()
        packet = publish_packet(topic, payload, 1, retain, pid, mqtt5=self.mqtt5)
        self._unacked[pid] = packet
        self._queue(packet)

    def _send_waiting(self) -> None:
        while self._waiting and len(self._unacked) < self._send_quota:
            self._send(*self._waiting.popleft())

    def _queue(self, packet: bytes) -> None:
        self._out += packet
        if not self._write_scheduled:
            self._write_scheduled = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._write_scheduled = False
        if self._out and self._protocol is not None:
            self._protocol.transport.write(bytes(self._out))
        self._out = bytearray()

    # --- receiving -----------------------------------------------------------------------------

    def _received(self, protocol: _Protocol, packets: list[tuple[int, int, memoryview]]) -> None:
        batch = []
        for kind, flags, body in packets:
            if kind == PUBLISH:
                topic, payload, qos, retain, pid = decode_publish(flags, body, mqtt5=self.mqtt5)
                if qos and not self.manual_ack:
                    self._queue(puback_packet(pid))
                batch.append(Received(topic, payload, qos, retain, pid, self.generation))
            elif kind == PUBACK:
                self._puback(body)
            elif kind == PINGRESP:
                self._ping_sent = None
            elif kind == SUBACK:
                self._suback(body)
            elif kind == CONNACK and not protocol.connack.done():
                _, code, receive_maximum = decode_connack(body, mqtt5=self.mqtt5)
                if not code:
                    self._up(protocol, receive_maximum)
                protocol.connack.set_result(code)
            elif kind == DISCONNECT:  # MQTT 5: the broker says why (0x8b: it is shutting down)
                log.warning("%s: the broker closed the session (reason 0x%02x)", self.name, body[0] if len(body) else 0)
                protocol.transport.abort()
                break
            else:
                raise ProtocolError(f"unexpected packet type {kind}")
        if batch and self._on_messages:
            self._on_messages(batch)

    def _puback(self, body: memoryview) -> None:
        if len(body) < 2:
            raise ProtocolError("a PUBACK without a packet id")
        self._unacked.pop(body[0] << 8 | body[1], None)
        reason = body[2] if len(body) > 2 else 0
        if reason >= 0x80 and reason not in self._refusals_logged:
            self._refusals_logged.add(reason)  # e.g. 0x87 not authorized: the ACL, logged once
            log.warning("%s: the broker refused a publish (reason 0x%02x)", self.name, reason)
        self._send_waiting()

    @property
    def subscribed(self) -> bool:
        """Connected and the broker has answered our SUBSCRIBE: from now on it delivers to us (and,
        with a persistent session, keeps what arrives while we are away)."""
        return self.connected and not self._subscribe_pid

    def _suback(self, body: memoryview) -> None:
        self._subscribe_pid = 0
        codes = bytes(body[2:])
        if self.mqtt5:
            props = read_varint(body, 2)
            codes = bytes(body[props[1] + props[0]:]) if props else b""
        refused = [topic for (topic, _), code in zip(self.subscriptions, codes) if code >= 0x80]
        if refused:
            log.error("%s: the broker refused the subscriptions %s (check its ACL for %s)", self.name,
                      ", ".join(refused), self.user)


class _Protocol(asyncio.Protocol):
    def __init__(self, link: BrokerLink):
        self.link = link
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future = loop.create_future()  # the CONNACK's reason code
        self.lost: asyncio.Future = loop.create_future()  # the reason the connection ended

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            packets, used = read_packets(self.buffer)
            try:
                self.link._received(self, packets)
            finally:
                del packets  # release the memoryviews into the buffer before it is resized
            del self.buffer[:used]
        except ProtocolError as e:
            log.error("%s: %s; dropping the connection", self.link.name, e)
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connack.done():
            self.connack.set_exception(exc or ConnectionError("the broker closed the connection"))
            self.connack.exception()  # retrieved: no "never retrieved" warning when nobody waits
        if not self.lost.done():
            self.lost.set_result(str(exc) if exc else None)
