"""A small world for ledger tests: operator, 4 validators, 3 households, helpers to sign and
commit blocks straight on a State (no consensus)."""
from gridhive.ledger.crypto import SigningKey
from gridhive.market.contract import MarketContract
from gridhive.ledger.state import State
from gridhive.ledger.tx import TxError, make_tx

GENESIS_MS = 1_699_999_200_000        # aligned to 15 min
INTERVAL_S = 1_700_001_000            # an interval 30 min after genesis
CHAIN = "gridhive-test"


class World:
    def __init__(self, rules=None, params=None, n_validators=4, n_members=3):
        """Households h0… (h2 a consumer, the others prosumers), each with its own gateway."""
        self.operator = SigningKey.derive("operator")
        self.validators = [SigningKey.derive(f"validator{i}") for i in range(n_validators)]
        self.members = {f"h{i}": SigningKey.derive(f"member{i}") for i in range(n_members)}
        self.gateways = {f"h{i}": SigningKey.derive(f"gateway{i}") for i in range(n_members)}
        self.genesis = {
            "chain_id": CHAIN, "genesis_time_ms": GENESIS_MS, "operator": self.operator.public_hex,
            "validators": {k.public_hex: 1 for k in self.validators},
            "accounts": {self.operator.public_hex: 10**9,
                         **{k.public_hex: 1_000_000 for k in self.members.values()}},
            "members": {h: {"key": k.public_hex, "gateway": self.gateways[h].public_hex,
                            "role": "consumer" if h == "h2" else "prosumer"} for h, k in self.members.items()},
            "params": params or {},
        }
        self.rules = rules or MarketContract()
        self.state = State(self.genesis, self.rules)
        self.time_ms = GENESIS_MS

    def tx(self, key, tx_type, body, nonce=None, chain_id=CHAIN):
        nonce = self.state.nonce_of(key.public_hex) if nonce is None else nonce
        return make_tx(key, chain_id, tx_type, nonce, body)

    def next_time(self, time_ms=None):
        self.time_ms = max(self.time_ms + 1, time_ms or 0)
        return self.time_ms

    def block(self, txs=(), time_ms=None, evidence=(), proposer=None):
        """Build and seal a block (raises TxError if a tx fails), without committing it."""
        pending = self.state.build(self.next_time(time_ms), (proposer or self.validators[0]).public_hex)
        for tx in txs:
            pending.add_tx(tx)
        for ev in evidence:
            pending.add_evidence(ev)
        pending.seal()
        return pending

    def commit(self, txs=(), time_ms=None, evidence=()):
        pending = self.block(txs, time_ms, evidence)
        self.state.commit(pending)
        return pending.block

    def apply(self, tx, time_ms=None):
        """Commit a block with just `tx`; return the TxError reason (nothing committed) or None."""
        try:
            self.commit([tx], time_ms)
        except TxError as exc:
            return exc.reason
        return None

