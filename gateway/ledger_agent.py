"""The gateway's ledger agent (`gridhive gateway agent`): puts its households on the market.

Two duties, each interval, through the gateway's own validator (its local API):
- **Attest** each household's metered import/export energy of every ended interval, signed with
  the gateway's ledger key: the numbers settlement uses. It waits `attest_delay_s` after the
  interval ends so that messages the nodes buffered across the boundary are in first, and must
  finish within the chain's `reading_grace_s`, after which the interval may be settled.
- **Order** for each household whose ledger key it holds: a bid for its expected shortfall or an
  offer of its expected surplus in the next interval whose gate is open, signed with the
  household's key. The expectation is a persistence forecast (the mean net energy of the last
  `history_intervals` metered intervals, their range as the spread), priced by the trading
  agent's documented confidence rule (gridhive.agent.strategy).

A separate process beside `gateway run`: it only reads the gateway's SQLite (WAL, so it never
blocks ingest) and keeps no state of its own. What it has done is read back from the ledger, so a
restart neither repeats nor skips anything. Decisions are pure functions (`due_readings`,
`next_orders`); `LedgerAgent` is the thin service that does the I/O.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gridhive.agent.strategy import Position, make_orders
from gridhive.ledger.client import LedgerClient, LedgerError
from gridhive.ledger.config import ConfigError as KeyFileError, load_key
from gridhive.ledger.crypto import SigningKey
from gridhive.ledger.state import chain_params
from gridhive.ledger.tx import make_tx
from gridhive.market import MarketConfig, Side
from gridhive.market.contract import market_config

from .config import ConfigError, GatewayConfig
from .energy import interval_start
from .storage import Storage

log = logging.getLogger(__name__)
LEDGER_SIDE = {Side.BID: "buy", Side.OFFER: "sell"}


@dataclass(frozen=True)
class Chain:
    """What the agent needs from the genesis: ids, the market timetable and the tariffs."""

    chain_id: str
    interval_ms: int
    gate_closure_ms: int
    reading_grace_ms: int
    market: MarketConfig

    @classmethod
    def from_genesis(cls, genesis: dict) -> "Chain":
        p = chain_params(genesis)
        return cls(genesis["chain_id"], p["interval_s"] * 1000, p["gate_closure_s"] * 1000,
                   p["reading_grace_s"] * 1000, market_config(p))


def due_readings(energy: dict[str, dict[int, tuple[int, int]]], now_ms: int, chain: Chain,
                 delay_ms: int) -> list[dict]:
    """Reading bodies for every household interval that ended at least `delay_ms` ago and is
    still within the chain's reading grace. Intervals without data are not attested: missing
    is not zero."""
    out = []
    for household in sorted(energy):
        for start_ms, (import_wh, export_wh) in sorted(energy[household].items()):
            end_ms = start_ms + chain.interval_ms
            if end_ms + delay_ms <= now_ms < end_ms + chain.reading_grace_ms:
                out.append({"household": household, "interval_start_s": start_ms // 1000,
                            "import_wh": import_wh, "export_wh": export_wh})
    return out


def next_open_interval_ms(now_ms: int, chain: Chain) -> int:
    """The first interval whose gate (start − gate closure) is still open at now_ms."""
    start = interval_start(now_ms, chain.interval_ms) + chain.interval_ms
    while now_ms >= start - chain.gate_closure_ms:
        start += chain.interval_ms
    return start


def next_orders(household: str, may_sell: bool, history: dict[int, tuple[int, int]], now_ms: int,
                chain: Chain, history_intervals: int) -> list[dict]:
    """Order bodies for the next open interval from a persistence forecast of the household's
    net import; none without metered history, and no offer from a household that may not sell."""
    ended = sorted(s for s in history if s + chain.interval_ms <= now_ms)[-history_intervals:]
    if not ended:
        return []
    net_wh = [history[s][0] - history[s][1] for s in ended]
    target_ms = next_open_interval_ms(now_ms, chain)
    position = Position(np.array([target_ms], np.int64), np.array([float(np.mean(net_wh))]),
                        np.array([float(max(net_wh) - min(net_wh))]))
    bodies = []
    for order in make_orders(household, position, chain.market, now_ms):
        if order.side == Side.OFFER and not may_sell:
            continue
        bodies.append({"interval_start_s": target_ms // 1000, "side": LEDGER_SIDE[order.side],
                       "energy_wh": order.energy_wh, "price_minor_per_kwh": order.price_minor_per_kwh})
    return bodies


class LedgerAgent:
    """One tick: attest what is due, order what is due, submit both; everything read from the ledger."""

    def __init__(self, cfg: GatewayConfig, client: LedgerClient, storage: Storage, chain: Chain,
                 gateway_key: SigningKey, member_keys: dict[str, SigningKey]):
        self.cfg = cfg
        self.client = client
        self.storage = storage
        self.chain = chain
        self.gateway_key = gateway_key
        self.member_keys = member_keys
        self.counts: Counter[str] = Counter()  # submitted / accepted / rejected:<reason> by tx type
        self._nonces: dict[str, int] = {}
        self._roles: dict[str, str] = {}

    def tick(self, now_ms: int) -> list[str]:
        lookback_ms = max(self.chain.reading_grace_ms,
                          self.cfg.ledger.history_intervals * self.chain.interval_ms) + self.chain.interval_ms
        energy = self.storage.household_energy(self.cfg.registry, now_ms - lookback_ms, now_ms)
        txs = [("reading", self.gateway_key, body)
               for body in due_readings(energy, now_ms, self.chain, self.cfg.ledger.attest_delay_s * 1000)
               if self.client.state("readings", f"{body['household']}/{body['interval_start_s']}") is None]
        target_s = next_open_interval_ms(now_ms, self.chain) // 1000
        ordered = self._households_ordered(target_s)
        for household, key in sorted(self.member_keys.items()):
            role = self._role(household)
            if role is None or household in ordered:
                continue
            txs += [("order", key, body) for body in next_orders(
                household, role == "prosumer", energy.get(household, {}), now_ms, self.chain,
                self.cfg.ledger.history_intervals)]
        return self._submit(txs)

    def _role(self, household: str) -> str | None:
        """The household's role once it is admitted (None before: nothing to do yet)."""
        if household not in self._roles:
            member = self.client.state("members", household)
            if member is None:
                return None
            if member["key"] != self.member_keys[household].public_hex:
                raise ConfigError(f"nodes.*.member_key_file ({household})",
                                  "is not the key the ledger admitted for this household")
            self._roles[household] = member["role"]
        return self._roles[household]

    def _households_ordered(self, interval_start_s: int) -> set[str]:
        interval = self.client.state("intervals", str(interval_start_s)) or {"ordered": {}}
        return set(interval["ordered"]) & set(self.member_keys)

    def _nonce(self, key: SigningKey) -> int:
        if key.public_hex not in self._nonces:
            self._nonces[key.public_hex] = self.client.account(key.public_hex)["nonce"]
        nonce = self._nonces[key.public_hex]
        self._nonces[key.public_hex] += 1
        return nonce

    def _submit(self, txs: list[tuple[str, SigningKey, dict]]) -> list[str]:
        if not txs:
            return []
        signed = [make_tx(key, self.chain.chain_id, kind, self._nonce(key), body) for kind, key, body in txs]
        results = self.client.submit_many(signed)
        lines, accepted = [], []
        for (kind, key, body), result in zip(txs, results):
            self.counts[f"{kind}.submitted"] += 1
            if result["accepted"]:
                self.counts[f"{kind}.accepted"] += 1
                accepted.append(result["tx_id"])
                lines.append(f"{kind} {json.dumps(body, sort_keys=True)}")
            else:
                self.counts[f"{kind}.rejected:{result['reason']}"] += 1
                lines.append(f"{kind} rejected ({result['reason']}): {json.dumps(body, sort_keys=True)}")
                self._nonces.pop(key.public_hex, None)  # its nonce was not used: re-read it next tick
        # Wait until they are final, so the next tick reads them back instead of sending them again.
        for tid in accepted:
            self.client.wait_final(tid, timeout_s=max(10.0, 2 * self.cfg.ledger.tick_s))
        return lines


def _agent_setup(cfg: GatewayConfig) -> tuple[Chain, SigningKey, dict[str, SigningKey]]:
    """Validate the [ledger] section and the households' key files; ConfigError names the key."""
    led = cfg.ledger
    for name in ("api", "genesis", "key_file"):
        if not led.values[name]:
            raise ConfigError(f"ledger.{name}", "required to run the ledger agent (docs/GATEWAY.md)")
    try:
        chain = Chain.from_genesis(json.loads(Path(led.genesis).read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError("ledger.genesis", f"not a readable genesis file: {exc}") from None
    if led.attest_delay_s * 1000 >= chain.reading_grace_ms:
        raise ConfigError("ledger.attest_delay_s", f"must be below the chain's reading grace "
                                                   f"({chain.reading_grace_ms // 1000} s)")
    if cfg.storage.interval_s * 1000 != chain.interval_ms:
        raise ConfigError("storage.interval_s", f"must equal the chain's interval ({chain.interval_ms // 1000} s)")
    try:
        gateway_key = load_key(Path(led.key_file))
        members: dict[str, SigningKey] = {}
        for entry in cfg.registry:
            if entry.member_key_file is None:
                continue
            key = load_key(entry.member_key_file)
            if members.setdefault(entry.household, key).public_hex != key.public_hex:
                raise ConfigError(f"nodes.{entry.node_id}.member_key_file",
                                  f"differs from another node's key for household {entry.household}")
    except (OSError, KeyFileError) as exc:
        raise ConfigError("ledger.key_file / nodes.*.member_key_file", str(exc)) from None
    return chain, gateway_key, members


def run_agent(cfg: GatewayConfig) -> int:
    """Tick until SIGTERM/SIGINT. A validator that does not answer is retried next tick."""
    chain, gateway_key, members = _agent_setup(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client = LedgerClient(cfg.ledger.api, timeout_s=10)
    storage = Storage(cfg.db_path, synchronous="NORMAL")
    agent = LedgerAgent(cfg, client, storage, chain, gateway_key, members)
    log.info("ledger agent for %s: %d households with keys, validator %s", cfg.gateway_id, len(members), cfg.ledger.api)
    try:
        while not stop.is_set():
            try:
                for line in agent.tick(int(time.time() * 1000)):
                    log.info("ledger: %s", line)
            except (OSError, LedgerError, TimeoutError) as exc:
                agent.counts["ledger_unreachable"] += 1
                log.warning("ledger: validator %s: %s; retrying in %.0f s", cfg.ledger.api, exc, cfg.ledger.tick_s)
            stop.wait(cfg.ledger.tick_s)
    finally:
        storage.close()
        client.close()
        log.info("ledger agent stopped: %s", dict(agent.counts))
    return 0
