"""The controller's market loop on the ledger: it clears each interval once its gate has closed
and settles it once its reading grace is over, both as operator-signed transactions
(docs/LEDGER.md §3.3) that every validator re-executes with the same market contract.

It keeps no state of its own. What is due is read from the ledger: `market/unsettled` (every
interval with an order or a reading that is not settled yet), each interval's status, and the
time of the last final block — chain time, not the controller's clock, because chain time is what
the validators check. An interval is acted on only once a final block is past its deadline, so
no order or reading can still join it, and the loop computes exactly what the validators will:
the same inputs (`gridhive.ledger.rules`), the same contract, the hash of the result in the tx.
A restarted loop therefore repeats nothing and skips nothing; a resubmitted identical tx is a
`duplicate`. Gateways submit orders and reading attestations themselves (docs/GATEWAY.md).
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Callable, Iterable, NamedTuple

from gridhive.ledger.client import LedgerClient, LedgerError
from gridhive.ledger.codec import hash_value
from gridhive.ledger.crypto import SigningKey
from gridhive.ledger.rules import clearing_inputs, gate_closure_ms, settlement_inputs, settlement_opens_ms
from gridhive.ledger.state import chain_params
from gridhive.ledger.tx import make_tx

from .contract import ChainContract, MarketContract
from .model import Order
from .settlement import IntervalSettlement

log = logging.getLogger(__name__)


class LedgerMarket:
    """The community's market as one validator's API shows it: the chain's parameters and contract,
    and the market's records read back as the market core's objects."""

    def __init__(self, client: LedgerClient, contract: MarketContract = MarketContract()):
        self.client = client
        genesis = client.genesis()
        self.chain_id: str = genesis["chain_id"]
        self.operator: str = genesis["operator"]
        self.params = chain_params(genesis)
        self.contract: ChainContract = contract.for_chain(self.params, genesis.get("feeders", {}))

    @property
    def interval_s(self) -> int:
        return self.params["interval_s"]

    def unsettled(self) -> list[int]:
        return self.client.state("market", "unsettled") or []

    def last_settled(self) -> int | None:
        return self.client.state("market", "last_settled")

    def interval(self, interval_start_s: int) -> dict | None:
        return self.client.state("intervals", str(interval_start_s))

    def trades(self, interval: dict) -> list[dict]:
        """The interval's trade records, each with its "id"."""
        return [{"id": tid, **self.client.state("trades", tid)} for tid in interval["trades"]]

    def orders(self, interval_start_s: int) -> list[Order]:
        _, records = clearing_inputs(self.client.state, interval_start_s)
        return self.contract.orders(interval_start_s, records)

    def expected_clearing(self, interval_start_s: int) -> dict:
        members, orders = clearing_inputs(self.client.state, interval_start_s)
        return self.contract.clear(members, interval_start_s, orders)

    def expected_settlement(self, interval_start_s: int) -> dict:
        members, result, readings = settlement_inputs(self.client.state, interval_start_s)
        return self.contract.settle(members, interval_start_s, result, readings)

    def intervals(self, since_s: int, until_s: int) -> Iterable[tuple[int, dict]]:
        """(start, record) of every interval with a record that starts in [since_s, until_s)."""
        first = since_s + (-since_s) % self.interval_s
        for start in range(first, until_s, self.interval_s):
            interval = self.interval(start)
            if interval is not None:
                yield start, interval

    def settlement(self, interval_start_s: int, interval: dict) -> IntervalSettlement:
        """A settled interval as the market core's settlement (for statements)."""
        return self.contract.interval_settlement(interval_start_s, interval["settlement"], self.trades(interval))


class Due(NamedTuple):
    kind: str                # "clearing" or "settlement"
    interval_start_s: int


def due(unsettled: Iterable[int], status_of: Callable[[int], str], chain_time_ms: int, params: dict) -> list[Due]:
    """What the operator must submit, given the unsettled intervals, their status and the time of
    the last final block: a clearing once the gate has closed, a settlement once the grace is over.
    `status_of` is asked only about intervals whose gate has closed (the rest may be days ahead)."""
    out = []
    for start in unsettled:
        if chain_time_ms < gate_closure_ms(params, start):
            continue
        status = status_of(start)
        if status == "open":
            out.append(Due("clearing", start))
        elif status == "cleared" and chain_time_ms >= settlement_opens_ms(params, start):
            out.append(Due("settlement", start))
    return out


class MarketLoop:
    """Submits what is due as the operator; `tick(chain_time_ms)` returns a line per thing done."""

    def __init__(self, market: LedgerMarket, operator_key: SigningKey, final_timeout_s: float = 15.0):
        if operator_key.public_hex != market.operator:
            raise ValueError("operator key: not this chain's operator (genesis operator "
                             f"{market.operator[:16]}…, key {operator_key.public_hex[:16]}…)")
        self.market = market
        self.client = market.client
        self.key = operator_key
        self.final_timeout_s = final_timeout_s
        self.counts: Counter[str] = Counter()  # per kind: final, rejected:<reason>, not_final

    def tick(self, chain_time_ms: int) -> list[str]:
        m = self.market
        lines = []
        for kind, start in due(m.unsettled(), lambda s: m.interval(s)["status"], chain_time_ms, m.params):
            try:
                result = m.expected_clearing(start) if kind == "clearing" else m.expected_settlement(start)
            except ValueError as exc:       # the validators fail alike (invalid_result): nothing to submit
                self.counts[f"{kind}.invalid"] += 1
                lines.append(f"{kind} of {start} cannot be computed: {exc}")
                continue
            lines.append(self._submit(kind, start, result))
        return lines

    def _submit(self, kind: str, start: int, result: dict) -> str:
        nonce = self.client.account(self.key.public_hex)["nonce"]
        tx = make_tx(self.key, self.market.chain_id, kind, nonce,
                     {"interval_start_s": start, "result_hash": hash_value(result)})
        answer = self.client.submit(tx)
        if not answer["accepted"] and answer["reason"] != "duplicate":     # duplicate: sent before a restart
            self.counts[f"{kind}.rejected:{answer['reason']}"] += 1
            return f"{kind} of {start} rejected ({answer['reason']}); retried next block"
        try:
            where = self.client.wait_final(answer["tx_id"], self.final_timeout_s)
        except TimeoutError:
            # Dropped by the validators when it failed to apply (e.g. a mismatch): recomputed next block.
            self.counts[f"{kind}.not_final"] += 1
            return f"{kind} of {start} not final within {self.final_timeout_s:.0f} s; retried next block"
        self.counts[f"{kind}.final"] += 1
        summary = (f"{len(result['trades'])} trades, {sum(t['energy_wh'] for t in result['trades'])} Wh"
                   if kind == "clearing" else f"{len(result['transfers'])} transfers")
        return f"{kind} of {start}: {summary}, final at height {where['height']}"


def serve(address: str, operator_key: SigningKey, stop: threading.Event, poll_ms: int = 1_000,
          on_line: Callable[[str], None] = lambda line: log.info("market: %s", line)) -> Counter:
    """Follow the chain through the validator at `address` until `stop`: after every new final
    block (long poll), submit what is due. A validator that does not answer is retried."""
    client = LedgerClient(address, timeout_s=max(10.0, 2 * poll_ms / 1000))
    loop, height, chain_time_ms = None, 0, 0
    counts: Counter[str] = Counter()
    while not stop.is_set():
        try:
            if loop is None:
                loop = MarketLoop(LedgerMarket(client), operator_key)
                counts = loop.counts
                status = client.status()
                height, chain_time_ms = status["height"], status["last_block_time_ms"]
            for commit in client.commits(height + 1, wait_ms=poll_ms):
                height, chain_time_ms = commit["height"], commit["time_ms"]
            for line in loop.tick(chain_time_ms):
                on_line(line)
        except (OSError, LedgerError, TimeoutError) as exc:
            counts["ledger_unreachable"] += 1
            log.warning("market: validator %s: %s; retrying", address, exc)
            stop.wait(poll_ms / 1000)
    client.close()
    return counts
