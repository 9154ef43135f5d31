"""The application state machine: genesis, transactions, blocks, app hash, snapshots
(LEDGER.md §2–§5). Deterministic and integer-only; no clock, no I/O."""
from .codec import CodecError, digest, encode, encode_unchecked, hash_value, is_hex
from .evidence import check_evidence
from .messages import MsgError
from .rules import (RESULT_KEYS, TRADE_KEYS, TRANSFER_KEYS, MarketRules, clearing_inputs, gate_closure_ms,
                    new_interval, settlement_inputs, settlement_opens_ms)
from .tx import TxError, _nat, cert_valid, check_tx_sized, is_household, network_fields_ok
from .valset import ValidatorSet

DEFAULT_PARAMS = {
    "interval_s": 900,
    "gate_closure_s": 300,
    "reading_grace_s": 600,
    "feed_in_minor_per_kwh": 400,
    "retail_minor_per_kwh": 2075,
    "max_orders_per_interval": 4,
    "max_reading_wh": 10_000_000,
    "max_tx_bytes": 65_536,
    "max_block_txs": 10_000,
    "max_block_bytes": 8 * 1024 * 1024,
    "max_evidence_per_block": 16,
    "evidence_max_age_heights": 1_000,
    "snapshot_interval_heights": 1_000,
    "minor_per_major": 10_000,
    "order_horizon_s": 172_800,
    # the community's market (gridhive.market.MarketConfig; the contract checks the values)
    "mechanism": "uniform",
    "price_rule": "midpoint",
    "k_permille": 500,
    "fee_same_feeder_minor_per_kwh": 0,
    "fee_cross_feeder_minor_per_kwh": 0,
}
_ZERO_ALLOWED = {"gate_closure_s", "reading_grace_s", "feed_in_minor_per_kwh", "k_permille",
                 "fee_same_feeder_minor_per_kwh", "fee_cross_feeder_minor_per_kwh"}
TABLES = ("validators", "vproposals", "accounts", "members", "member_keys", "gateways", "readings",
          "orders", "intervals", "trades", "evidence", "market")
HEADER_KEYS = {"chain_id", "height", "time_ms", "proposer", "prev_hash", "txs_hash", "evidence_hash",
               "validators_hash", "app_hash", "snapshot_hash"}
MAX_VALIDATOR_POWER = 1000
_BLOCK_KEYS_BYTES = len('{"evidence":,"header":,"txs":}')     # canonical(block) less its three values
_DELETED = object()


class BlockError(ValueError):
    """An invalid block; `reason` names the failed §4 rule."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Overlay:
    """Copy-on-write writes over the committed tables. Values are never mutated in place:
    handlers read, build a new value and `put` it, so a failed child leaves its parent untouched."""

    __slots__ = ("_tables", "_parent", "writes")

    def __init__(self, tables: dict, parent: "Overlay | None" = None):
        self._tables = tables
        self._parent = parent
        self.writes: dict[tuple[str, str], object] = {}

    def get(self, table: str, key: str, default=None):
        slot = (table, key)
        layer = self
        while layer is not None:
            if slot in layer.writes:
                value = layer.writes[slot]
                return default if value is _DELETED else value
            layer = layer._parent
        return self._tables[table].get(key, default)

    def put(self, table: str, key: str, value) -> None:
        self.writes[(table, key)] = value

    def delete(self, table: str, key: str) -> None:
        self.writes[(table, key)] = _DELETED

    def table(self, table: str) -> dict:
        """The whole table as seen through this overlay; for small tables (validators)."""
        layers = []
        layer = self
        while layer is not None:
            layers.append(layer)
            layer = layer._parent
        out = dict(self._tables[table])
        for layer in reversed(layers):
            _apply_writes({table: out}, {slot: v for slot, v in layer.writes.items() if slot[0] == table})
        return out

    def child(self) -> "Overlay":
        return Overlay(self._tables, self)

    def merge_up(self) -> None:
        self._parent.writes.update(self.writes)

    def changes(self) -> dict:
        out: dict[str, dict] = {}
        for (table, key), value in self.writes.items():
            out.setdefault(table, {})[key] = None if value is _DELETED else value
        return out


def _apply_writes(tables: dict, writes: dict) -> None:
    for (table, key), value in writes.items():
        if value is _DELETED:
            tables[table].pop(key, None)
        else:
            tables[table][key] = value


def genesis_tables(genesis: dict) -> dict:
    tables = {name: {} for name in TABLES}
    tables["validators"] = dict(genesis["validators"])
    tables["accounts"] = {pk: {"nonce": 0, "balance_minor": b} for pk, b in genesis.get("accounts", {}).items()}
    for household, m in sorted(genesis.get("members", {}).items()):
        tables["members"][household] = {**m, "cert_id": "", "tx": ""}
        tables["member_keys"][m["key"]] = household
        tables["gateways"].setdefault(m["gateway"], []).append(household)
    return tables


def check_genesis(genesis) -> None:
    """Fail fast, naming the bad key."""
    if type(genesis) is not dict:
        raise ValueError("genesis: not an object")
    for key, ok in (("chain_id", lambda v: type(v) is str and 0 < len(v) <= 64),
                    ("genesis_time_ms", lambda v: type(v) is int and v >= 0),
                    ("operator", lambda v: is_hex(v, 64)),
                    ("validators", lambda v: type(v) is dict and v and all(
                        is_hex(k, 64) and type(p) is int and 1 <= p <= MAX_VALIDATOR_POWER for k, p in v.items())),
                    ("accounts", lambda v: type(v) is dict and all(
                        is_hex(k, 64) and type(b) is int and b >= 0 for k, b in v.items())),
                    ("members", lambda v: type(v) is dict and len({m.get("key") for m in v.values()}) == len(v) and all(
                        is_household(h) and type(m) is dict and network_fields_ok(m, _GENESIS_MEMBER_KEYS)
                        and is_hex(m["key"], 64) and is_hex(m["gateway"], 64) and m["role"] in ("prosumer", "consumer")
                        for h, m in v.items())),
                    ("feeders", lambda v: type(v) is dict and all(
                        is_household(f) and type(limits) is dict and network_fields_ok(limits, set())
                        and "feeder" not in limits for f, limits in v.items())),
                    ("params", lambda v: type(v) is dict)):
        if key not in genesis and key in ("accounts", "members", "feeders", "params"):
            continue
        if key not in genesis or not ok(genesis[key]):
            raise ValueError(f"genesis: bad or missing {key!r}")
    for name, value in genesis.get("params", {}).items():
        if not _param_ok(name, value):
            raise ValueError(f"genesis: params: bad {name!r}: {value!r}")
    encode(genesis)


_GENESIS_MEMBER_KEYS = {"key", "gateway", "role"}


def _param_ok(name: str, value) -> bool:
    """A known param of its default's type: a short string, or an int > 0 (>= 0 where zero means
    something). The market contract checks the market's values (`MarketRules.for_chain`)."""
    default = DEFAULT_PARAMS.get(name)
    if type(default) is str:
        return type(value) is str and 0 < len(value) <= 32
    return default is not None and type(value) is int and value >= (0 if name in _ZERO_ALLOWED else 1)


def chain_params(genesis: dict) -> dict:
    """The chain's parameters: the genesis's, over the defaults."""
    return {**DEFAULT_PARAMS, **genesis.get("params", {})}


class State:
    """Committed state after `height` blocks. `build()`/`execute()` produce a `PendingBlock`
    on a copy-on-write overlay; `commit()` makes one of them the new committed state."""

    def __init__(self, genesis: dict, rules: MarketRules):
        check_genesis(genesis)
        self.chain_id: str = genesis["chain_id"]
        self.operator: str = genesis["operator"]
        self.params = chain_params(genesis)
        self.rules = rules.for_chain(self.params, genesis.get("feeders", {}))      # ValueError names the param
        reserved = self.rules.reserved_accounts.intersection(genesis.get("members", {}))
        if reserved:
            raise ValueError(f"genesis: members: {sorted(reserved)} are reserved account names")
        self.genesis_hash = hash_value(genesis)
        self.tables = genesis_tables(genesis)
        self.height = 0
        self.app_hash = hash_value(self.tables)
        self.last_block_hash = self.genesis_hash
        self.last_block_time_ms: int = genesis["genesis_time_ms"]
        self._validators = ValidatorSet(self.tables["validators"])

    # -- reading ------------------------------------------------------------------------------
    def get(self, table: str, key: str, default=None):
        return self.tables[table].get(key, default)

    def validators(self) -> ValidatorSet:
        """The set that decides block height + 1 (§6.5)."""
        return self._validators

    def nonce_of(self, pubkey: str) -> int:
        return self.tables["accounts"].get(pubkey, {"nonce": 0})["nonce"]

    def is_authorized(self, view, tx: dict) -> bool:
        sender = tx["sender"]
        return (sender == self.operator or view.get("validators", sender) is not None
                or view.get("member_keys", sender) is not None or view.get("gateways", sender) is not None
                or (tx["type"] == "admit" and sender == tx["body"]["cert"]["key"]))

    def full_hash(self) -> str:
        return hash_value(self.tables)

    # -- blocks -------------------------------------------------------------------------------
    def build(self, time_ms: int, proposer: str) -> "PendingBlock":
        """Start a block at height + 1; the proposer adds txs and evidence, then calls `seal()`."""
        return PendingBlock(self, time_ms, proposer)

    def execute(self, block, decoded: bool = False, checked=None, block_bytes: bytes | None = None) -> "PendingBlock":
        """Re-execute a received block (§4 rules 1–7); raises BlockError. `decoded`: the block
        came out of `decode` (or the node's own store), so every value is ledger JSON already.
        `checked(tx) -> (id, size) | None`: txs this node already checked (its mempool's).
        `block_bytes`: the block's canonical encoding, if at hand (its txs are hashed from it)."""
        if type(block) is not dict or set(block) != {"header", "txs", "evidence"}:
            raise BlockError("malformed", "block keys")
        header, txs, evidence = block["header"], block["txs"], block["evidence"]
        if type(header) is not dict or set(header) != HEADER_KEYS or type(txs) is not list or type(evidence) is not list:
            raise BlockError("malformed", "header or lists")
        p = self.params
        if header["chain_id"] != self.chain_id:
            raise BlockError("wrong_chain")
        if header["height"] != self.height + 1 or header["prev_hash"] != self.last_block_hash:
            raise BlockError("wrong_parent", f"height {header['height']!r}")
        if header["validators_hash"] != self._validators.hash or header["proposer"] not in self._validators:
            raise BlockError("wrong_validators")
        if type(header["time_ms"]) is not int or header["time_ms"] <= self.last_block_time_ms:
            raise BlockError("time_not_increasing")
        if len(txs) > p["max_block_txs"] or len(evidence) > p["max_evidence_per_block"]:
            raise BlockError("too_many_items")
        if not decoded:
            try:
                encode(block)                           # the type walk: every value is ledger JSON
            except CodecError as exc:
                raise BlockError("malformed", str(exc)) from None
        evidence_bytes = encode_unchecked(evidence)
        txs_bytes = _txs_bytes(block_bytes, evidence_bytes, header) if block_bytes else None
        if txs_bytes is None:
            txs_bytes = encode_unchecked(txs)
        if len(txs_bytes) + len(evidence_bytes) + len(encode_unchecked(header)) + _BLOCK_KEYS_BYTES > p["max_block_bytes"]:
            raise BlockError("oversized")
        if header["txs_hash"] != digest(txs_bytes) or header["evidence_hash"] != digest(evidence_bytes):
            raise BlockError("bad_body_hash")
        pending = PendingBlock(self, header["time_ms"], header["proposer"])
        for tx in txs:
            try:
                pending.add_tx(tx, decoded=True, checked=checked)    # the block as a whole was checked above
            except TxError as exc:
                raise BlockError("bad_tx", exc.reason) from None
        for ev in evidence:
            try:
                pending.add_evidence(ev)
            except (TxError, MsgError) as exc:
                raise BlockError("bad_evidence", exc.reason) from None
        sealed = pending.seal(txs_hash=header["txs_hash"])
        if sealed["header"] != header:
            raise BlockError("app_hash_mismatch")
        return pending

    def commit(self, pending: "PendingBlock") -> None:
        if pending.block is None or pending.height != self.height + 1:
            raise ValueError("commit needs a sealed block for the next height")
        _apply_writes(self.tables, pending.view.writes)
        header = pending.block["header"]
        self.height = pending.height
        self.app_hash = header["app_hash"]
        self.last_block_hash = hash_value(header)
        self.last_block_time_ms = header["time_ms"]
        if any(table == "validators" for table, _ in pending.view.writes):
            self._validators = ValidatorSet(self.tables["validators"])

    # -- snapshots (§5.3) ---------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The state as a snapshot (§5.3). It shares the live tables: encode it before the next commit."""
        return {"height": self.height, "app_hash": self.app_hash, "block_hash": self.last_block_hash,
                "time_ms": self.last_block_time_ms, "tables": self.tables}

    @classmethod
    def from_snapshot(cls, genesis: dict, rules: MarketRules, snapshot: dict, header: dict) -> "State":
        """State at `header`'s height from a snapshot, if it matches that final header."""
        if (header["height"] != snapshot["height"] or header["snapshot_hash"] != hash_value(snapshot["tables"])
                or header["app_hash"] != snapshot["app_hash"] or hash_value(header) != snapshot["block_hash"]
                or header["time_ms"] != snapshot["time_ms"]):
            raise BlockError("bad_snapshot")
        state = cls(genesis, rules)
        state.tables = {name: dict(snapshot["tables"][name]) for name in TABLES}
        state.height, state.app_hash = snapshot["height"], snapshot["app_hash"]
        state.last_block_hash, state.last_block_time_ms = snapshot["block_hash"], snapshot["time_ms"]
        state._validators = ValidatorSet(state.tables["validators"])
        return state


class PendingBlock:
    """A block being built or re-executed on an overlay of the committed state."""

    def __init__(self, state: State, time_ms: int, proposer: str):
        self.state = state
        self.height = state.height + 1
        self.time_ms = time_ms
        self.proposer = proposer
        self.view = Overlay(state.tables)
        self.txs: list[dict] = []
        self.tx_ids: list[str] = []
        self.evidence: list[dict] = []
        self.size_bytes = 0
        self.block: dict | None = None

    def add_tx(self, tx, decoded: bool = False, checked=None) -> str:
        """Apply one transaction atomically; returns its id or raises TxError (state untouched).
        `decoded`, `checked`: as in `State.execute`."""
        p = self.state.params
        known = checked(tx) if checked else None
        tid, size = known or check_tx_sized(tx, self.state.chain_id, p["max_tx_bytes"], decoded)[:2]
        if len(self.txs) >= p["max_block_txs"] or self.size_bytes + size > p["max_block_bytes"] - 65_536:
            raise TxError("block_full")
        view = self.view.child()
        _apply_tx(self.state, view, tx, tid, self.time_ms, self.height)
        view.merge_up()
        self.txs.append(tx)
        self.tx_ids.append(tid)
        self.size_bytes += size
        return tid

    def add_evidence(self, ev) -> None:
        """Record evidence and propose the offender's removal (§7.2); raises MsgError/TxError."""
        if len(self.evidence) >= self.state.params["max_evidence_per_block"]:
            raise TxError("block_full")
        info = check_evidence(ev, self.state.chain_id)
        view = self.view.child()
        if view.get("validators", info.offender) is None:
            raise TxError("not_validator")
        if not (0 <= self.height - info.height <= self.state.params["evidence_max_age_heights"]):
            raise TxError("evidence_age")
        if view.get("evidence", info.key) is not None:
            raise TxError("duplicate")
        view.put("evidence", info.key, {"id": info.id, "kind": ev["kind"], "height": self.height})
        slot = "remove:" + info.offender
        prop = view.get("vproposals", slot, {"power": 0, "voters": [], "evidence": []})
        view.put("vproposals", slot, {**prop, "evidence": [*prop["evidence"], info.id]})
        view.merge_up()
        self.evidence.append(ev)

    def seal(self, txs_hash: str | None = None) -> dict:
        """Compute the header (app hash chain, snapshot hash) and return the block. Every value
        in it was checked on the way in, so it is hashed without another type walk; `txs_hash`:
        already computed by the caller over the same txs."""
        s = self.state
        changes = self.view.changes()
        app_hash = digest(encode_unchecked({"height": self.height, "prev": s.app_hash, "changes": changes}))
        snapshot_hash = ""
        if self.height % s.params["snapshot_interval_heights"] == 0:
            tables = {name: dict(t) for name, t in s.tables.items()}
            _apply_writes(tables, self.view.writes)
            snapshot_hash = digest(encode_unchecked(tables))
        header = {"chain_id": s.chain_id, "height": self.height, "time_ms": self.time_ms, "proposer": self.proposer,
                  "prev_hash": s.last_block_hash, "txs_hash": txs_hash or digest(encode_unchecked(self.txs)),
                  "evidence_hash": hash_value(self.evidence), "validators_hash": s.validators().hash,
                  "app_hash": app_hash, "snapshot_hash": snapshot_hash}
        self.block = {"header": header, "txs": self.txs, "evidence": self.evidence}
        return self.block


def _txs_bytes(block_bytes: bytes, evidence_bytes: bytes, header: dict) -> bytes | None:
    """The txs' canonical bytes inside a block's canonical bytes: "txs" is the block's last key."""
    head = b'{"evidence":' + evidence_bytes + b',"header":' + encode_unchecked(header) + b',"txs":'
    if block_bytes.startswith(head) and block_bytes.endswith(b"}"):
        return block_bytes[len(head):-1]
    return None


# -- transaction handlers (§3.3) ---------------------------------------------------------------
def _apply_tx(state: State, view: Overlay, tx: dict, tid: str, time_ms: int, height: int) -> None:
    sender = tx["sender"]
    nonce = view.get("accounts", sender, {"nonce": 0})["nonce"]
    if tx["nonce"] < nonce:
        raise TxError("nonce_too_low", f"{tx['nonce']} < {nonce}")
    if tx["nonce"] > nonce:
        raise TxError("nonce_gap", f"{tx['nonce']} > {nonce}")
    if not state.is_authorized(view, tx):
        raise TxError("unauthorized")
    _HANDLERS[tx["type"]](state, view, tx, tid, time_ms)
    account = view.get("accounts", sender, {"nonce": 0, "balance_minor": 0})
    view.put("accounts", sender, {**account, "nonce": nonce + 1})


def _admit(state, view, tx, tid, time_ms):
    body = tx["body"]
    cert = body["cert"]
    if tx["sender"] not in (state.operator, cert["key"]):
        raise TxError("unauthorized")
    if cert["chain_id"] != state.chain_id:
        raise TxError("wrong_chain", "certificate")
    if not cert_valid(body, state.operator):
        raise TxError("bad_certificate")
    if cert["household"] in state.rules.reserved_accounts:
        raise TxError("reserved_name")
    if view.get("members", cert["household"]) is not None:
        raise TxError("already_member")
    if view.get("member_keys", cert["key"]) is not None:
        raise TxError("key_in_use")
    record = {k: v for k, v in cert.items() if k not in ("chain_id", "household")}    # key, gateway, role, network
    view.put("members", cert["household"], {**record, "cert_id": hash_value(cert), "tx": tid})
    view.put("member_keys", cert["key"], cert["household"])
    view.put("gateways", cert["gateway"], [*view.get("gateways", cert["gateway"], []), cert["household"]])


def _validator_vote(state, view, tx, tid, time_ms):
    body, sender = tx["body"], tx["sender"]
    action, target = body["action"], body["validator"]
    if view.get("validators", sender) is None:
        raise TxError("not_validator")
    is_validator = view.get("validators", target) is not None
    if action == "add" and (is_validator or not 1 <= body["power"] <= MAX_VALIDATOR_POWER):
        raise TxError("invalid_vote", "target already a validator or bad power")
    if action == "remove" and (not is_validator or body["power"] != 0):
        raise TxError("invalid_vote", "target not a validator or power != 0")
    slot = f"{action}:{target}"
    prop = view.get("vproposals", slot, {"power": body["power"], "voters": [], "evidence": []})
    if sender in prop["voters"]:
        raise TxError("already_voted")
    voters = sorted([*prop["voters"], sender])
    current = view.table("validators")
    in_favour = sum(current.get(v, 0) for v in voters)
    if 2 * in_favour <= sum(current.values()):
        view.put("vproposals", slot, {**prop, "power": body["power"], "voters": voters})
        return
    if action == "remove" and len(current) == 1:
        raise TxError("invalid_vote", "would remove the last validator")
    view.delete("vproposals", slot)
    if action == "add":
        view.put("validators", target, body["power"])
    else:
        view.delete("validators", target)


def _interval(view, start: int) -> dict:
    """The interval's record; a new one joins `market/unsettled`, the list the market loop works from."""
    interval = view.get("intervals", str(start))
    if interval is None:
        interval = new_interval()
        view.put("market", "unsettled", sorted([*(view.get("market", "unsettled") or []), start]))
    return interval


def _reading(state, view, tx, tid, time_ms):
    body, p = tx["body"], state.params
    member = view.get("members", body["household"])
    if member is None:
        raise TxError("unknown_member")
    if member["gateway"] != tx["sender"]:
        raise TxError("unauthorized", "not the household's gateway")
    start = body["interval_start_s"]
    if start % p["interval_s"]:
        raise TxError("unaligned_interval")
    if time_ms < (start + p["interval_s"]) * 1000:
        raise TxError("interval_not_ended")
    if time_ms >= settlement_opens_ms(p, start):
        raise TxError("reading_late")
    if max(body["import_wh"], body["export_wh"]) > p["max_reading_wh"]:
        raise TxError("out_of_range")
    key = f"{body['household']}/{start}"
    if view.get("readings", key) is not None:
        raise TxError("duplicate_reading")
    view.put("readings", key, {"import_wh": body["import_wh"], "export_wh": body["export_wh"],
                               "gateway": tx["sender"], "tx": tid})
    interval = _interval(view, start)
    view.put("intervals", str(start), {**interval, "readings": [*interval["readings"], body["household"]]})


def _order(state, view, tx, tid, time_ms):
    body, p = tx["body"], state.params
    household = view.get("member_keys", tx["sender"])
    if household is None:
        raise TxError("unknown_member")
    if body["side"] == "sell" and view.get("members", household)["role"] != "prosumer":
        raise TxError("unauthorized", "only prosumers sell")
    start = body["interval_start_s"]
    if start % p["interval_s"]:
        raise TxError("unaligned_interval")
    if time_ms >= gate_closure_ms(p, start):
        raise TxError("gate_closed")
    if start * 1000 > time_ms + p["order_horizon_s"] * 1000:
        raise TxError("beyond_horizon")
    if body["energy_wh"] > p["max_reading_wh"] or not (
            p["feed_in_minor_per_kwh"] <= body["price_minor_per_kwh"] <= p["retail_minor_per_kwh"]):
        raise TxError("out_of_range")
    interval = _interval(view, start)
    if interval["status"] != "open":
        raise TxError("gate_closed")
    mine = interval["ordered"].get(household, {"side": body["side"], "orders": 0})
    if mine["side"] != body["side"]:
        raise TxError("side_conflict")          # the market's rule: one side per household and interval
    if mine["orders"] >= p["max_orders_per_interval"]:
        raise TxError("too_many_orders")
    view.put("orders", tid, {"household": household, "interval_start_s": start, "side": body["side"],
                             "energy_wh": body["energy_wh"], "price_minor_per_kwh": body["price_minor_per_kwh"],
                             "ts_ms": time_ms})
    view.put("intervals", str(start), {**interval, "orders": [*interval["orders"], tid], "ordered": {
        **interval["ordered"], household: {"side": body["side"], "orders": mine["orders"] + 1}}})


def _check_clearing_result(result, orders: dict, start: int) -> None:
    """Guard against faulty rules: the market's shape, each trade between a bid and an offer of this
    interval from different households at a price within both limits, each order's energy sold
    at most once."""
    if (type(result) is not dict or set(result) != RESULT_KEYS or type(result["trades"]) is not list
            or result["interval_start_ms"] != start * 1000 or not _nat(result["curtailed_wh"])
            or type(result["mechanism"]) is not str
            or not (result["clearing_price_minor_per_kwh"] is None or _nat(result["clearing_price_minor_per_kwh"]))):
        raise TxError("invalid_result", "shape")
    used_wh: dict[str, int] = {}
    for t in result["trades"]:
        if type(t) is not dict or set(t) != TRADE_KEYS:
            raise TxError("invalid_result", "trade shape")
        buy, sell = orders.get(t["bid_id"]), orders.get(t["offer_id"])
        if (buy is None or sell is None or buy["side"] != "buy" or sell["side"] != "sell" or t["kind"] != "order"
                or (t["buyer_id"], t["seller_id"]) != (buy["household"], sell["household"])
                or buy["household"] == sell["household"] or type(t["energy_wh"]) is not int or t["energy_wh"] < 1
                or not _nat(t["fee_minor_per_kwh"]) or t["bid_price_minor_per_kwh"] != buy["price_minor_per_kwh"]
                or t["offer_price_minor_per_kwh"] != sell["price_minor_per_kwh"]
                or type(t["price_minor_per_kwh"]) is not int
                or not sell["price_minor_per_kwh"] <= t["price_minor_per_kwh"] <= buy["price_minor_per_kwh"]):
            raise TxError("invalid_result", "trade")
        for oid in (t["bid_id"], t["offer_id"]):
            used_wh[oid] = used_wh.get(oid, 0) + t["energy_wh"]
            if used_wh[oid] > orders[oid]["energy_wh"]:
                raise TxError("invalid_result", "order oversold")


def _run_rules(fn, *args) -> dict:
    try:
        return fn(*args)
    except ValueError as exc:                   # deterministic: every validator fails alike
        raise TxError("invalid_result", str(exc)[:200]) from None


def _result_hash(result) -> str:
    try:
        return hash_value(result)
    except CodecError:                          # not ledger JSON (a float, a bool…): faulty rules
        raise TxError("invalid_result", "not ledger JSON") from None


def _clearing(state, view, tx, tid, time_ms):
    body, p = tx["body"], state.params
    if tx["sender"] != state.operator:
        raise TxError("unauthorized", "operator only")
    start = body["interval_start_s"]
    if start % p["interval_s"]:
        raise TxError("unaligned_interval")
    if time_ms < gate_closure_ms(p, start):
        raise TxError("gate_open")
    interval = _interval(view, start)
    if interval["status"] != "open":
        raise TxError("already_cleared")
    members, orders = clearing_inputs(view.get, start)
    expected = _run_rules(state.rules.clear, members, start, orders)
    _check_clearing_result(expected, {o["id"]: o for o in orders}, start)
    if body["result_hash"] != _result_hash(expected):
        raise TxError("clearing_mismatch")
    trade_ids = []
    for i, t in enumerate(expected["trades"]):
        trade_ids.append(f"{start}/{i}")
        view.put("trades", trade_ids[-1], {**t, "interval_start_s": start, "clearing_tx": tid, "status": "cleared",
                                           "settlement_tx": "", "paid_minor": 0, "fee_minor": 0})
    summary = {k: v for k, v in expected.items() if k != "trades"}
    view.put("intervals", str(start), {**interval, "status": "cleared", "trades": trade_ids, "clearing_tx": tid,
                                       "clearing": summary})


def _settlement(state, view, tx, tid, time_ms):
    body, p = tx["body"], state.params
    if tx["sender"] != state.operator:
        raise TxError("unauthorized", "operator only")
    start = body["interval_start_s"]
    interval = view.get("intervals", str(start))
    if interval is None or interval["status"] != "cleared":
        raise TxError("not_cleared")
    if time_ms < settlement_opens_ms(p, start):
        raise TxError("interval_not_ended")
    members, result, readings = settlement_inputs(view.get, start)
    expected = _run_rules(state.rules.settle, members, start, result, readings)
    accounts = {h: m["key"] for h, m in members.items()}
    accounts.update((name, name) for name in state.rules.reserved_accounts)
    trades = [view.get("trades", trade_id) for trade_id in interval["trades"]]
    deltas, paid = _check_settlement(expected, accounts, trades, set(readings), start)
    if body["result_hash"] != _result_hash(expected):
        raise TxError("settlement_mismatch")
    # Atomic: every balance and trade below is written in this tx's overlay, or none is.
    for account in sorted(deltas):
        money_minor, energy_wh = deltas[account]
        record = view.get("accounts", account, {"nonce": 0, "balance_minor": 0})
        view.put("accounts", account, {**record, "balance_minor": record["balance_minor"] + money_minor,
                                       "energy_wh": record.get("energy_wh", 0) + energy_wh})
    for trade_id, trade, (paid_minor, fee_minor) in zip(interval["trades"], trades, paid):
        view.put("trades", trade_id, {**trade, "status": "settled", "settlement_tx": tid, "paid_minor": paid_minor,
                                      "fee_minor": fee_minor})
    view.put("intervals", str(start), {**interval, "status": "settled", "settlement_tx": tid, "settlement": expected})
    view.put("market", "unsettled", [s for s in view.get("market", "unsettled") if s != start])
    view.put("market", "last_settled", max(start, view.get("market", "last_settled") or 0))


def _check_settlement(result, accounts: dict, trades: list, metered: set, start: int):
    """Guard against faulty rules: the market's shape; every party an account of this settlement;
    energy and money legs non-negative; each amount the nearest minor unit of the exact one; every
    trade settled exactly once, as cleared (its p2p transfer, then its grid fee if any). Returns the
    balance changes {account: [money_minor, energy_wh]} and (paid, fee) minor units per trade."""
    if (type(result) is not dict or set(result) != {"metered_net_wh", "transfers"}
            or type(result["transfers"]) is not list or type(result["metered_net_wh"]) is not dict
            or set(result["metered_net_wh"]) != metered
            or not all(type(wh) is int for wh in result["metered_net_wh"].values())):
        raise TxError("invalid_result", "settlement shape")
    deltas: dict[str, list[int]] = {}
    paid = [[None, 0] for _ in trades]
    n_p2p = 0
    for t in result["transfers"]:
        if (type(t) is not dict or set(t) != TRANSFER_KEYS or t["interval_start_ms"] != start * 1000
                or not (_nat(t["energy_wh"]) and _nat(t["amount_milli_minor"]) and _nat(t["amount_minor"]))
                or abs(t["amount_minor"] * 1000 - t["amount_milli_minor"]) > 500
                or t["payer"] not in accounts or t["payee"] not in accounts or t["payer"] == t["payee"]
                or (t["energy_wh"] > 0) != (t["energy_from"] in accounts and t["energy_to"] in accounts
                                            and t["energy_from"] != t["energy_to"])
                or (t["energy_wh"] == 0 and (t["energy_from"], t["energy_to"]) != ("", ""))):
            raise TxError("invalid_result", "transfer")
        if t["kind"] == "p2p":
            if n_p2p >= len(trades):
                raise TxError("invalid_result", "more p2p transfers than trades")
            trade = trades[n_p2p]
            if (t["energy_from"], t["energy_to"], t["energy_wh"], t["payer"], t["payee"]) != (
                    trade["seller_id"], trade["buyer_id"], trade["energy_wh"], trade["buyer_id"], trade["seller_id"]):
                raise TxError("invalid_result", "p2p transfer differs from its trade")
            paid[n_p2p][0] = t["amount_minor"]
            n_p2p, last_ref = n_p2p + 1, t["ref"]
        elif t["kind"] == "grid_fee":
            if not n_p2p or t["ref"] != last_ref or t["energy_wh"] or paid[n_p2p - 1][1]:
                raise TxError("invalid_result", "grid fee without its trade")
            paid[n_p2p - 1][1] = t["amount_minor"]
        elif t["kind"] not in ("shortfall", "surplus"):
            raise TxError("invalid_result", f"transfer kind {str(t['kind'])[:32]}")
        for party, money_minor, energy_wh in ((t["payer"], -t["amount_minor"], 0), (t["payee"], t["amount_minor"], 0),
                                              (t["energy_from"], 0, -t["energy_wh"]),
                                              (t["energy_to"], 0, t["energy_wh"])):
            if money_minor or energy_wh:
                delta = deltas.setdefault(accounts[party], [0, 0])
                delta[0] += money_minor
                delta[1] += energy_wh
    if n_p2p != len(trades):
        raise TxError("invalid_result", "a trade without its p2p transfer")
    return deltas, paid


def _transfer(state, view, tx, tid, time_ms):
    body, sender = tx["body"], tx["sender"]
    if body["to"] == sender:
        raise TxError("self_transfer")
    src = view.get("accounts", sender, {"nonce": 0, "balance_minor": 0})
    if src["balance_minor"] < body["amount_minor"]:
        raise TxError("insufficient_balance")
    view.put("accounts", sender, {**src, "balance_minor": src["balance_minor"] - body["amount_minor"]})
    dst = view.get("accounts", body["to"], {"nonce": 0, "balance_minor": 0})
    view.put("accounts", body["to"], {**dst, "balance_minor": dst["balance_minor"] + body["amount_minor"]})


_HANDLERS = {"admit": _admit, "validator_vote": _validator_vote, "reading": _reading, "order": _order,
             "clearing": _clearing, "settlement": _settlement, "transfer": _transfer}
