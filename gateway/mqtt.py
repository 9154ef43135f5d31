"""A paho-mqtt 2.x client for the gateway's asyncio services.

paho runs its network loop in its own thread (connect, reconnect with backoff, keepalive,
QoS 1 retries) and this class hands what it receives to the event loop in batches: one wake-up
per burst, not one per message. `publish` and `ack` may be called from the loop; paho guards its
outgoing queue with locks.

MQTT 5 with a persistent session (`clean_start=False` and a session expiry) plus manual acks
lets the broker keep and redeliver what the gateway has not yet committed: a message is PUBACKed
only after it is stored, so a gateway killed mid-batch gets the rest again when it reconnects.
MQTT 3.1.1 (`mqtt5=False`) is for brokers without MQTT 5, such as the demo's embedded amqtt.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import threading
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gridhive.mqtt_security import ConnectFailure, FailureLog, Options, describe_connack, describe_exception

log = logging.getLogger(__name__)

# Messages handed to the loop per callback: a burst of thousands is worked off in slices, so
# timers, HTTP requests and the watchdog ping get their turn in between.
DRAIN_MAX = 200


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    generation: int  # which connection delivered it: an ack is only valid on that connection


class MqttLink:
    def __init__(self, *, name: str, host: str, port: int, client_id: str, user: str | None = None,
                 password: str | None = None, keepalive_s: int = 30, tls: ssl.SSLContext | None = None,
                 subscriptions: tuple[tuple[str, int], ...] = (), persistent: bool = False,
                 mqtt5: bool = True, receive_maximum: int = 65535, manual_ack: bool = False,
                 will: tuple[str, bytes, int, bool] | None = None,
                 on_messages: Callable[[list[Incoming]], None] | None = None,
                 on_connect: Callable[[], None] | None = None,
                 on_disconnect: Callable[[], None] | None = None,
                 on_connect_failed: Callable[[ConnectFailure], None] | None = None,
                 options: Options = Options()):
        self.name = name
        self.host, self.port, self.keepalive_s = host, port, keepalive_s
        self.user, self.options = user, options
        self._on_connect_failed = on_connect_failed
        self.failures = FailureLog(log, name)
        self.subscriptions = subscriptions
        self.persistent, self.mqtt5 = persistent, mqtt5
        self.receive_maximum = receive_maximum
        self._on_messages, self._on_connect, self._on_disconnect = on_messages, on_connect, on_disconnect
        self.connected = False
        self.generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: list[Incoming] = []
        self._lock = threading.Lock()
        if mqtt5:
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                            manual_ack=manual_ack)
        else:
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                            clean_session=not persistent, manual_ack=manual_ack)
        if user:
            c.username_pw_set(user, password or None)
        if tls is not None:
            c.tls_set_context(tls)
        if will:
            c.will_set(*will)
        c.reconnect_delay_set(1, 30)
        c.max_inflight_messages_set(100)
        c.on_connect = self._connected
        c.on_connect_fail = self._connect_failed
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        self.client = c

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = self.receive_maximum
            if self.persistent:
                props.SessionExpiryInterval = 7 * 86400
            self.client.connect_async(self.host, self.port, self.keepalive_s, clean_start=not self.persistent,
                                      properties=props)
        else:
            self.client.connect_async(self.host, self.port, self.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> bool:
        """Queue a message; False when the link is down (the caller keeps it and retries)."""
        if not self.connected:
            return False
        return self.client.publish(topic, payload, qos=qos, retain=retain).rc == paho.MQTT_ERR_SUCCESS

    def ack(self, message: Incoming) -> None:
        """PUBACK a QoS 1 message, unless the connection that delivered it is gone (the broker
        redelivers it on the new one, and a stale packet id could name another message)."""
        if message.qos == 1 and message.generation == self.generation and self.connected:
            self.client.ack(message.mid, 1)

    # --- paho thread -> event loop ----------------------------------------------------------

    def _connected(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            failure = describe_connack(reason, f"{self.host}:{self.port}", self.user, self.options)
            self._loop.call_soon_threadsafe(self._failed, failure)
            return
        # Bumped on this thread, before any message of the new connection is read.
        self.generation += 1
        for topic, qos in self.subscriptions:
            if self.mqtt5:
                # no_local: never hear our own publications (acks, commands) back on a wildcard.
                client.subscribe(topic, options=SubscribeOptions(qos=qos, noLocal=True))
            else:
                client.subscribe(topic, qos)
        self._loop.call_soon_threadsafe(self._up)

    def _connect_failed(self, client, userdata):
        # paho calls this inside its `except OSError` around the connect: the error is the one
        # being handled (socket, DNS or the TLS handshake).
        failure = describe_exception(sys.exc_info()[1], f"{self.host}:{self.port}", self.options)
        self._loop.call_soon_threadsafe(self._failed, failure)

    def _disconnected(self, client, userdata, flags, reason, properties):
        self.generation += 1  # acks for what the old connection delivered must not go out
        self._loop.call_soon_threadsafe(self._down, str(reason))

    def _message(self, client, userdata, m):
        item = Incoming(m.topic, m.payload, m.qos, m.retain, m.mid, self.generation)
        with self._lock:
            self._inbox.append(item)
            first = len(self._inbox) == 1
        if first:
            self._loop.call_soon_threadsafe(self._drain)

    def _failed(self, failure: ConnectFailure):
        self.failures.failed(failure)
        if self._on_connect_failed:
            self._on_connect_failed(failure)

    def _up(self):
        self.connected = True
        self.failures.connected()
        log.info("%s: connected to %s:%d", self.name, self.host, self.port)
        if self._on_connect:
            self._on_connect()

    def _down(self, reason: str):
        if self.connected:
            log.warning("%s: lost %s:%d (%s); reconnecting", self.name, self.host, self.port, reason)
        self.connected = False
        if self._on_disconnect:
            self._on_disconnect()

    def _drain(self):
        with self._lock:
            batch, self._inbox = self._inbox[:DRAIN_MAX], self._inbox[DRAIN_MAX:]
            if self._inbox:
                self._loop.call_soon(self._drain)
        if batch and self._on_messages:
            self._on_messages(batch)
