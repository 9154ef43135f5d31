"""`gridhive bench ledger-path`: the CPU one validator spends per transaction on each step of its
path, in one process on one core (LEDGER.md §17). The cluster benchmark (`bench ledger`) says
how fast a chain of validator processes is; this one says where a validator's time goes, so a
change to one step can be measured by itself. On this VM the speed of a core itself drifts (one
libsodium verification took 50–86 µs in five consecutive idle runs), so compare a step with
`verify_us` of the same run, or medians of several runs, rather than single absolute figures.

Two nodes of a 4-validator chain, pure cores (no network): A takes the transfers in as a client
would; B receives them as gossip (`on_message` with the envelopes A would send), then A's proposal
of them, executes it, finalizes it and writes it to a real SQLite store (synchronous=FULL). The
signature cache is emptied before each step that verifies, so every verification is paid, as in a
validator that has not seen the tx. Figures are µs per tx of process CPU time, summed over
`blocks` blocks of `txs_per_block` transfers: `gossip_admission_us` (of which `verify_us`, one
Ed25519 verification timed alone), `proposal_parse_us`, `execute_us`, `finalize_us`, `store_us`
and their sum `total_us`.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from gridhive.bench import StepClock
from gridhive.market.contract import MarketContract

from . import crypto
from .consensus import block_hash
from .crypto import SigningKey, verify
from .mempool import MempoolConfig
from .messages import parse, proposal_msg, sign_with, tx_msg
from .node import Node, NodeConfig
from .store import Store
from .tx import TX_DOMAIN, make_tx

CHAIN_ID = "ledger-path-bench"
BLOCK_MS = 1_000


def _genesis(validators: list[SigningKey], clients: list[SigningKey], operator: SigningKey) -> dict:
    return {"chain_id": CHAIN_ID, "genesis_time_ms": 0, "operator": operator.public_hex,
            "validators": {k.public_hex: 1 for k in validators},
            "accounts": {c.public_hex: 10**9 for c in clients},
            "members": {f"h{i}": {"key": c.public_hex, "gateway": operator.public_hex, "role": "prosumer"}
                        for i, c in enumerate(clients)}}


def run(txs_per_block: int = 500, blocks: int = 6, clients: int = 2_000) -> dict:
    validators = [SigningKey.derive(f"{CHAIN_ID}/validator/{i}") for i in range(4)]
    members = [SigningKey.derive(f"{CHAIN_ID}/client/{i}") for i in range(clients)]
    operator = SigningKey.derive(f"{CHAIN_ID}/operator")
    genesis = _genesis(validators, members, operator)
    config = NodeConfig(mempool=MempoolConfig(max_txs=max(50_000, 2 * txs_per_block)))
    a = Node(genesis, validators[0], MarketContract(), config)
    b = Node(genesis, validators[1], MarketContract(), config)
    clock = StepClock(("gossip_admission", "proposal_parse", "execute", "finalize", "store"))
    timed = clock.timed
    final_txs = 0

    with tempfile.TemporaryDirectory(prefix="gridhive-ledger-path-") as tmp:
        store = Store(Path(tmp) / "ledger.sqlite3")
        for n in range(blocks):
            first = n * txs_per_block
            txs = [make_tx(members[j % clients], CHAIN_ID, "transfer", j // clients,
                           {"to": operator.public_hex, "amount_minor": 1})
                   for j in range(first, first + txs_per_block)]
            for tx in txs:
                a.submit_tx(tx, n * BLOCK_MS)
            envelopes = [tx_msg(tx) for tx in txs]
            crypto._VERIFIED.clear()
            timed("gossip_admission",
                  lambda: [b.on_message(validators[0].public_hex, data, n * BLOCK_MS) for data in envelopes])
            height = a.state.height + 1
            block = a.propose_block(height, (n + 1) * BLOCK_MS)
            bhash = block_hash(block)
            proposal = sign_with(validators[0], {"chain_id": CHAIN_ID, "height": height, "round": 0,
                                                 "block_hash": bhash, "pol_round": -1,
                                                 "proposer": validators[0].public_hex})
            data = proposal_msg(proposal, block)
            # the node's own path for a proposal: parsed, its block's bytes kept for execution and storage
            env = timed("proposal_parse", lambda: parse(data, b.max_msg_bytes))
            timed("proposal_parse", lambda: b._remember_block_bytes(env, data))
            received = env["block"]
            if timed("execute", lambda: b.block_error(received)) is not None:
                raise RuntimeError("the benchmark's block did not execute")
            a.block_error(block)
            a.finalize(block, [], (n + 1) * BLOCK_MS)
            timed("finalize", lambda: b.finalize(received, [], (n + 1) * BLOCK_MS))
            timed("store", lambda: (store.put_block(height, bhash, received, [], b.final_tx_ids[height],
                                                    b.block_bytes(bhash)), store.flush()))
            final_txs += len(received["txs"])
        store.close()
    if final_txs != blocks * txs_per_block:
        raise RuntimeError(f"{final_txs} of {blocks * txs_per_block} txs reached the block")
    signed = TX_DOMAIN.encode() + b"\n" + b"x" * 300
    key = members[0]
    sig = key.sign(signed)
    rounds = 500
    start = time.process_time()
    for _ in range(rounds):
        crypto._VERIFIED.clear()
        verify(key.public_hex, signed, sig)
    figures = clock.us_per(final_txs, total_of=clock.steps)
    figures["verify_us"] = round((time.process_time() - start) / rounds * 1e6, 1)
    figures["txs"] = final_txs
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(run()))
