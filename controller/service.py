"""ControllerService: gateway uplinks from MQTT into the database, acknowledged after commit.

One asyncio task reads MQTT and validates; one writer task commits. Batches that arrive while a commit
runs are grouped into the next transaction (one fsync for many batches), then every gateway gets one
ack message naming the gseqs just committed — new ones and duplicates alike, so a gateway whose ack
was lost is released by its resend. Database calls run on one dedicated thread (a connection is used
by one thread only).

The broker connection may be TLS (a context from gridhive.mqtt_security) with a user name and
password. A connection that fails (wrong CA, wrong password, broker away) is counted by reason
(`connect_failed:<reason>`), logged once with what to check, and retried with backoff.
"""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from gridhive.mqtt_security import ConnectFailure, FailureLog, Options, describe_connack, describe_exception

from .store import open_store
from .uplink import UplinkError, ack_payload, parse_status, parse_topic, parse_uplink, topic

log = logging.getLogger(__name__)

SUBSCRIPTIONS = [("ghc/+/up", 1), ("ghc/+/status", 1)]
MAX_QUEUED = 10_000      # parsed messages waiting for the writer; beyond this they are dropped unacked
MAX_GROUP = 64           # batches per transaction
# What a connection failure message tells the operator to check: `gridhive ctl serve` options.
OPTIONS = Options(ca_file="--ca-file", insecure="--tls-insecure", credentials="--user / --password",
                  client_cert="--cert-file / --key-file")


class Rejections:
    """Counts refused inputs by reason. The first of each reason is logged at WARNING with its detail,
    later ones at DEBUG, so a flood of bad payloads cannot flood the log; the counts keep the totals."""

    def __init__(self, logger):
        self.counts = Counter()
        self.logger = logger

    def __call__(self, reason, detail=""):
        first = reason not in self.counts
        self.counts[reason] += 1
        self.logger.log(logging.WARNING if first else logging.DEBUG, "rejected (%s): %s", reason, detail)


class ControllerService:
    def __init__(self, db_url, host="127.0.0.1", port=1883, client_id="gridhive-controller", clock=time.time,
                 user=None, password=None, tls=None):
        """`tls`: an ssl.SSLContext (gridhive.mqtt_security.tls_context) for a TLS broker, else plain TCP."""
        self.db_url = db_url
        self.host, self.port = host, port
        self.client_id = client_id
        self.user, self.password, self.tls = user, password, tls
        self.failures = FailureLog(log, "broker")
        self.clock = clock
        self.stats = Counter()   # batches/items stored and duplicate, acks sent, statuses, reconnects
        self.reject = Rejections(log)
        self.ready = asyncio.Event()  # set while subscribed
        self._queue = asyncio.Queue(MAX_QUEUED)
        self._db = ThreadPoolExecutor(1, thread_name_prefix="controller-db")
        self._store = None
        self._acks_in_flight = set()

    def counters(self):
        return dict(self.stats) | {"rejected:" + k: v for k, v in self.reject.counts.items()}

    async def _in_db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def run(self, stop=None):
        """Serve until `stop` (an asyncio.Event) is set."""
        stop = stop or asyncio.Event()
        self._store = await self._in_db(open_store, self.db_url)
        sessions = asyncio.create_task(self._sessions())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({sessions, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sessions, stopping):
                task.cancel()
            await asyncio.gather(sessions, stopping, return_exceptions=True)
            await self._in_db(self._store.close)
            self._db.shutdown()
        if sessions.done() and not sessions.cancelled() and sessions.exception():
            raise sessions.exception()

    async def _sessions(self):
        failures = 0
        while True:
            connected = False
            try:
                # A persistent session: while the controller restarts, the broker queues QoS 1 uplinks.
                # TCP_NODELAY: an ack is one small packet; Nagle would hold it for the previous one's
                # TCP ACK (up to 40 ms of delayed ACK) on every hop.
                async with aiomqtt.Client(self.host, self.port, identifier=self.client_id, clean_session=False,
                                          keepalive=30, username=self.user, password=self.password,
                                          tls_context=self.tls,
                                          socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]) as client:
                    connected = True
                    self.failures.connected()
                    failures = 0
                    client.pending_calls_threshold = MAX_GROUP  # acks in flight after a large group are normal
                    await client.subscribe(SUBSCRIPTIONS)
                    self.ready.set()
                    log.info("subscribed to %s on %s:%d", ", ".join(t for t, _ in SUBSCRIPTIONS), self.host, self.port)
                    tasks = {asyncio.create_task(self._reader(client)), asyncio.create_task(self._writer(client))}
                    try:
                        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for task in tasks:
                            task.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
                    for task in done:
                        task.result()  # MqttError: reconnect below; anything else is a bug: let run() fail
            except aiomqtt.MqttError as e:
                if connected:
                    self.stats["broker_disconnects"] += 1
                    log.warning("broker %s:%d: %s", self.host, self.port, e)
                else:
                    failure = self._connect_failure(e)
                    self.stats["connect_failed:" + failure.reason] += 1
                    self.failures.failed(failure)
            self.ready.clear()
            failures += 1
            # Full-jitter backoff, as on the nodes.
            await asyncio.sleep(random.uniform(0, min(30.0, 0.5 * 2 ** failures)))

    def _connect_failure(self, e: aiomqtt.MqttError) -> ConnectFailure:
        server = f"{self.host}:{self.port}"
        if isinstance(e, MqttConnectError):
            return describe_connack(e.rc, server, self.user, OPTIONS)
        if isinstance(e.__context__, OSError):  # aiomqtt re-raises socket and TLS errors `from None`
            return describe_exception(e.__context__, server, OPTIONS)
        return ConnectFailure("mqtt_error", f"cannot connect to {server}: {e}")

    async def _reader(self, client):
        async for message in client.messages:
            self._on_message(message.topic.value, message.payload)
        raise aiomqtt.MqttError("the broker closed the connection")

    def _on_message(self, topic_name, payload):
        parsed = parse_topic(topic_name)
        if parsed is None or parsed[1] not in ("up", "status"):
            self.reject("bad_topic", topic_name)
            return
        gw, kind = parsed
        try:
            if kind == "up":
                obj = parse_uplink(gw, payload)
                for index, reason in obj.rejected:
                    self.reject(reason, f"{topic_name} gseq {obj.gseq} item {index}")
            else:
                obj = parse_status(gw, payload)
                if obj is None:  # a cleared retained status
                    return
        except UplinkError as e:
            self.reject(e.reason, f"{topic_name}: {e}")
            return
        try:
            self._queue.put_nowait((kind, obj))
        except asyncio.QueueFull:
            self.reject("queue_full", f"{topic_name}: the gateway will resend")

    async def _writer(self, client):
        while True:
            group = [await self._queue.get()]
            while len(group) < MAX_GROUP and not self._queue.empty():
                group.append(self._queue.get_nowait())
            uplinks = []
            for kind, obj in group:
                if kind == "up":
                    uplinks.append(obj)
                    continue
                await self._commit(client, uplinks)  # keep the order of batches and statuses
                uplinks = []
                await self._apply_status(obj)
            await self._commit(client, uplinks)

    async def _apply_status(self, status):
        try:
            await self._in_db(self._store.apply_status, status, int(self.clock() * 1000))
            self.stats["statuses"] += 1
        except Exception as e:
            self.reject("db_error", f"status of {status.gw}: {e}")

    async def _commit(self, client, uplinks):
        if not uplinks:
            return
        received_ms = int(self.clock() * 1000)
        try:
            results = await self._in_db(self._store.commit_batches, uplinks, received_ms)
        except Exception:
            # One batch the database refuses must not hold back the others: try them one by one. What
            # still fails is not acknowledged, so its gateway resends it.
            results = []
            for up in uplinks:
                try:
                    results += await self._in_db(self._store.commit_batches, [up], received_ms)
                except Exception as e:
                    self.reject("db_error", f"{up.gw} gseq {up.gseq}: {e}")
        acks = defaultdict(list)
        for r in results:
            acks[r.gw].append(r.gseq)
            self.stats["batches_duplicate" if r.duplicate else "batches_stored"] += 1
            self.stats["items_stored"] += r.stored
            self.stats["items_duplicate"] += r.duplicates
        for gw, gseqs in acks.items():
            # Not awaited: publish() returns at the broker's PUBACK, and the next commit need not wait.
            task = asyncio.create_task(self._ack(client, gw, gseqs))
            self._acks_in_flight.add(task)
            task.add_done_callback(self._acks_in_flight.discard)

    async def _ack(self, client, gw, gseqs):
        try:
            await client.publish(topic(gw, "ack"), ack_payload(gw, gseqs), qos=1)
            self.stats["acks_sent"] += len(gseqs)
        except aiomqtt.MqttError as e:  # the session is going down; the gateway resends, we re-ack
            log.warning("ack to %s not sent: %s", gw, e)
