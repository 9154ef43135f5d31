"""Relay commands: a signed `cmd` to the node, then wait for its `reply` with the same cid.

The node accepts a command only for its current boot and with a cid above the last one it took
in that boot (docs/PROTOCOL.md). The gateway learns the boot from the node's status and newest
messages, and takes cids from a per-node counter in the database, so they keep rising across
gateway restarts as well.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Callable

from ghnode import wire

from .config import MAX_RELAYS, Registry
from .ingest import NodeTrack
from .metrics import GatewayMetrics
from .storage import Storage

ACTIONS = ("on", "off", "toggle")


class CommandError(Exception):
    """A command that could not be carried out; `status` is the HTTP status it maps to."""
    status = 500

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result


class UnknownNode(CommandError):
    status = 404


class BadCommand(CommandError):
    status = 422


class NodeNotReady(CommandError):
    status = 409


class LinkDown(CommandError):
    status = 503


class CommandTimeout(CommandError):
    status = 504


class CommandRefused(CommandError):
    status = 409


@dataclass(frozen=True)
class CommandResult:
    node: str
    relay: int
    cid: int
    ok: bool
    state: str
    reason: str | None
    retry_after_ms: int | None
    elapsed_ms: int

    def as_dict(self) -> dict:
        return asdict(self)


def build_cmd(node: str, boot: int, cid: int, relay: int, action: str) -> dict:
    return {"v": wire.VERSION, "t": "cmd", "node": node, "boot": boot, "cid": cid, "relay": relay, "action": action}


class RelayCommands:
    def __init__(self, *, registry: Registry, tracks: dict[str, NodeTrack], storage: Storage,
                 publish: Callable[[str, bytes], bool], metrics: GatewayMetrics, timeout_s: float):
        self.registry, self.tracks, self.storage = registry, tracks, storage
        self.publish, self.metrics, self.timeout_s = publish, metrics, timeout_s
        self._waiting: dict[tuple[str, int], asyncio.Future] = {}

    async def switch(self, node: str, relay: int, action: str, timeout_s: float | None = None) -> CommandResult:
        """Switch `relay` of `node` and return the node's reply; raises a CommandError."""
        try:
            return await self._switch(node, relay, action, timeout_s or self.timeout_s)
        except CommandError as e:
            self.metrics.commands.labels(type(e).__name__).inc()
            raise

    async def _switch(self, node: str, relay: int, action: str, timeout_s: float) -> CommandResult:
        entry = self.registry.get(node)
        if entry is None:
            raise UnknownNode(f"no node {node!r} in this gateway's registry")
        if action not in ACTIONS:
            raise BadCommand(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if entry.relays and relay not in entry.relays:
            raise BadCommand(f"node {node} has relays {sorted(entry.relays)}, not {relay}")
        if not 0 <= relay < MAX_RELAYS:
            raise BadCommand(f"relay must be 0-{MAX_RELAYS - 1}, got {relay}")
        track = self.tracks.get(node)
        if track is None or track.boot is None:
            raise NodeNotReady(f"node {node} has not reported since it was registered, so its boot id "
                               "is unknown; wait for its first message")
        cid = self.storage.next_cid(node)
        payload = wire.encode(build_cmd(node, track.boot, cid, relay, action), entry.secret)
        future = asyncio.get_running_loop().create_future()
        self._waiting[(node, cid)] = future
        started = time.monotonic()
        try:
            if not self.publish(node, payload):
                raise LinkDown("the gateway is not connected to its MQTT broker; try again shortly")
            reply = await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            seen = track.last_seen_ms
            ago = f"{(time.time() * 1000 - seen) / 1000:.0f} s ago" if seen else "never"
            raise CommandTimeout(f"node {node} did not reply to command {cid} (relay {relay} {action}) "
                                 f"within {timeout_s:g} s; its last message arrived {ago}, "
                                 f"status {'online' if track.online else 'offline or unknown'}") from None
        finally:
            self._waiting.pop((node, cid), None)
        elapsed = time.monotonic() - started
        self.metrics.command_s.observe(elapsed)
        result = CommandResult(node=node, relay=reply["relay"], cid=cid, ok=reply["ok"], state=reply["state"],
                               reason=reply.get("reason"), retry_after_ms=reply.get("retry_after_ms"),
                               elapsed_ms=int(elapsed * 1000))
        if not result.ok:
            raise CommandRefused(f"node {node} refused: {result.reason}", result.as_dict())
        self.metrics.commands.labels("ok").inc()
        return result

    def on_reply(self, node: str, reply: dict) -> None:
        """A stored `reply` from a node: wake the caller waiting for that cid, if any."""
        future = self._waiting.get((node, reply["cid"]))
        if future is not None and not future.done():
            future.set_result(reply)
