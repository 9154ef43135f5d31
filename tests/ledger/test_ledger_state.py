"""LEDGER.md §3 (transaction rules), §4 (block validity), §5 (state, app hash, snapshots), §7.2, §11."""
import copy

import pytest

from ledger_world import CHAIN, INTERVAL_S, World
from gridhive.ledger.codec import hash_value
from gridhive.ledger.crypto import SigningKey
from gridhive.ledger.evidence import make_evidence
from gridhive.ledger.messages import make_vote
from gridhive.ledger.provenance import provenance
from gridhive.ledger.rules import clearing_inputs, settlement_inputs
from gridhive.ledger.state import BlockError, State, check_genesis
from gridhive.ledger.tx import TxError, make_cert, make_tx
from gridhive.market.contract import MarketContract

GATE_MS = (INTERVAL_S - 300) * 1000          # gate closure of INTERVAL_S
END_MS = (INTERVAL_S + 900) * 1000           # interval end
SETTLE_MS = END_MS + 600 * 1000              # end of the reading grace


def order(w, h, side, energy_wh, price, start=INTERVAL_S):
    return w.tx(w.members[h], "order", {"interval_start_s": start, "side": side, "energy_wh": energy_wh,
                                        "price_minor_per_kwh": price})


def reading(w, h, import_wh, export_wh, start=INTERVAL_S):
    return w.tx(w.gateways[h], "reading", {"household": h, "interval_start_s": start, "import_wh": import_wh,
                                           "export_wh": export_wh})


def clear(w, start=INTERVAL_S):
    """The clearing the validators will compute, from the same inputs (as the market loop does)."""
    members, orders = clearing_inputs(w.state.get, start)
    return w.state.rules.clear(members, start, orders)


def clearing_tx(w, result, start=INTERVAL_S):
    return w.tx(w.operator, "clearing", {"interval_start_s": start, "result_hash": hash_value(result)})


def settle_tx(w, start=INTERVAL_S):
    members, result, readings = settlement_inputs(w.state.get, start)
    expected = w.state.rules.settle(members, start, result, readings)
    return w.tx(w.operator, "settlement", {"interval_start_s": start, "result_hash": hash_value(expected)})


def balance(w, key):
    return w.state.get("accounts", key.public_hex)["balance_minor"]


def account(w, name):
    """(balance_minor, energy_wh) of an account, zeros if it has none yet."""
    record = w.state.get("accounts", name) or {}
    return record.get("balance_minor", 0), record.get("energy_wh", 0)


# -- §2 genesis ---------------------------------------------------------------------------------
@pytest.mark.parametrize("key, bad", [("chain_id", ""), ("operator", "xyz"), ("validators", {}),
                                      ("params", {"interval_s": 0}), ("params", {"nope": 1})])
def test_genesis_fails_fast_naming_the_key(world, key, bad):
    with pytest.raises(ValueError, match=key):
        check_genesis({**world.genesis, key: bad})


@pytest.mark.parametrize("params, named", [
    ({"mechanism": 1}, "mechanism"), ({"k_permille": -1}, "k_permille"), ({"interval_s": 0}, "interval_s"),
    ({"interval_s": 7}, "interval_s"),                                  # the market's: must divide one hour
    ({"mechanism": "lottery"}, "mechanism"), ({"k_permille": 1001}, "k_permille"),
    ({"feed_in_minor_per_kwh": 3000}, "retail_minor_per_kwh")])
def test_the_market_params_are_checked_at_genesis(world, params, named):
    with pytest.raises(ValueError, match=named):
        State({**world.genesis, "params": params}, MarketContract())


def test_genesis_members_and_feeders_may_carry_network_fields(world):
    members = {**world.genesis["members"], "h0": {**world.genesis["members"]["h0"], "feeder": "f1",
                                                  "max_export_w": 5_000}}
    state = State({**world.genesis, "members": members, "feeders": {"f1": {"max_export_w": 20_000}}}, MarketContract())
    assert state.get("members", "h0")["feeder"] == "f1"
    assert state.rules.feeders[0].max_export_w == 20_000
    for bad in ({"members": {**members, "h1": {**members["h1"], "feeder": "F 1"}}},
                {"feeders": {"f1": {"max_export_w": -1}}}, {"feeders": {"f1": {"feeder": "x"}}},
                {"members": {**members, "utility": {**members["h1"], "key": "cd" * 32}}}):
        with pytest.raises(ValueError):
            State({**world.genesis, **bad}, MarketContract())


# -- §3.2 replay protection and authorisation ----------------------------------------------------
def test_replayed_transfer_is_rejected_and_applied_once(world):
    a, b = world.members["h0"], world.members["h1"]
    tx = world.tx(a, "transfer", {"to": b.public_hex, "amount_minor": 100})
    assert world.apply(tx) is None
    assert world.apply(tx) == "nonce_too_low"
    assert (balance(world, a), balance(world, b)) == (999_900, 1_000_100)
    assert world.state.nonce_of(a.public_hex) == 1


def test_nonce_gap_and_wrong_chain_rejected(world):
    a, b = world.members["h0"], world.members["h1"]
    assert world.apply(world.tx(a, "transfer", {"to": b.public_hex, "amount_minor": 1}, nonce=5)) == "nonce_gap"
    assert world.apply(world.tx(a, "transfer", {"to": b.public_hex, "amount_minor": 1}, chain_id="x")) == "wrong_chain"


def test_strangers_are_unauthorized(world):
    stranger = SigningKey.derive("stranger")
    assert world.apply(world.tx(stranger, "transfer", {"to": "ab" * 32, "amount_minor": 1})) == "unauthorized"


def test_transfer_needs_balance(world):
    a, b = world.members["h0"], world.members["h1"]
    assert world.apply(world.tx(a, "transfer", {"to": b.public_hex, "amount_minor": 10**7})) == "insufficient_balance"
    assert world.apply(world.tx(a, "transfer", {"to": a.public_hex, "amount_minor": 1})) == "self_transfer"


# -- §3.3 admit ---------------------------------------------------------------------------------
def test_admission_with_operator_certificate(world):
    new, gw = SigningKey.derive("new"), SigningKey.derive("newgw")
    body = make_cert(world.operator, CHAIN, "h9", new.public_hex, gw.public_hex, "consumer")
    assert world.apply(world.tx(new, "admit", body)) is None
    member = world.state.get("members", "h9")
    assert member["key"] == new.public_hex and member["cert_id"] == hash_value(body["cert"])
    assert world.state.get("member_keys", new.public_hex) == "h9"
    assert world.state.get("gateways", gw.public_hex) == ["h9"]
    # now a member: may transact
    assert world.apply(world.tx(world.members["h0"], "transfer", {"to": new.public_hex, "amount_minor": 5})) is None
    assert world.apply(world.tx(new, "transfer", {"to": world.members["h0"].public_hex, "amount_minor": 5})) is None


@pytest.mark.parametrize("case, reason", [
    ("forged", "bad_certificate"), ("other_chain", "wrong_chain"), ("taken_household", "already_member"),
    ("taken_key", "key_in_use"), ("wrong_sender", "unauthorized")])
def test_admission_rejections(world, case, reason):
    new, gw = SigningKey.derive("new"), SigningKey.derive("newgw")
    signer = SigningKey.derive("not-operator") if case == "forged" else world.operator
    household = "h0" if case == "taken_household" else "h9"
    key = world.members["h1"].public_hex if case == "taken_key" else new.public_hex
    body = make_cert(signer, "x" if case == "other_chain" else CHAIN, household, key, gw.public_hex)
    sender = world.members["h1"] if case in ("taken_key", "wrong_sender") else new
    if case == "taken_key":
        sender = world.operator
    assert world.apply(world.tx(sender, "admit", body)) == reason


# -- §3.3 readings, orders --------------------------------------------------------------------------
def test_reading_only_from_the_households_gateway_once_within_the_grace(world):
    world.next_time(END_MS - 10)
    assert world.apply(reading(world, "h0", 10, 500)) == "interval_not_ended"
    assert world.apply(world.tx(world.gateways["h1"], "reading", {
        "household": "h0", "interval_start_s": INTERVAL_S, "import_wh": 1, "export_wh": 1})) == "unauthorized"
    assert world.apply(reading(world, "h0", 10, 500), END_MS) is None
    assert world.apply(reading(world, "h0", 10, 999)) == "duplicate_reading"
    assert world.apply(reading(world, "h0", 1, 1, start=INTERVAL_S + 1)) == "unaligned_interval"
    assert world.state.get("readings", f"h0/{INTERVAL_S}")["export_wh"] == 500
    assert world.state.get("intervals", str(INTERVAL_S))["readings"] == ["h0"]
    assert world.state.get("market", "unsettled") == [INTERVAL_S]      # the market loop's work list
    assert world.apply(reading(world, "h1", 600, 0), SETTLE_MS) == "reading_late"    # grace over


def test_orders_respect_gate_prices_roles_sides_horizon_and_caps(world):
    assert world.apply(order(world, "h0", "sell", 1000, 399)) == "out_of_range"        # below feed-in
    assert world.apply(order(world, "h0", "sell", 1000, 2076)) == "out_of_range"       # above retail
    assert world.apply(order(world, "h2", "sell", 1000, 500)) == "unauthorized"        # consumer
    far = INTERVAL_S + 3 * 86_400
    assert world.apply(order(world, "h1", "buy", 100, 1000, start=far)) == "beyond_horizon"
    block = world.commit([order(world, "h1", "buy", 100, 1000)])
    for _ in range(3):
        assert world.apply(order(world, "h1", "buy", 100, 1000)) is None
    assert world.apply(order(world, "h1", "buy", 100, 1000)) == "too_many_orders"
    assert world.apply(order(world, "h1", "sell", 100, 1000)) == "side_conflict"      # one side per interval
    record = world.state.get("orders", world.state.get("intervals", str(INTERVAL_S))["orders"][0])
    assert record["ts_ms"] == block["header"]["time_ms"]        # time of entry: the block that took it
    world.next_time(GATE_MS)
    assert world.apply(order(world, "h0", "sell", 1000, 500)) == "gate_closed"


# -- §3.3 clearing and settlement ------------------------------------------------------------------
def market(w):
    """h0 sells 1000 Wh at 500, h1 buys 600 Wh at 1500 and h2 buys 800 Wh at 1000."""
    for tx in (order(w, "h0", "sell", 1000, 500), order(w, "h1", "buy", 600, 1500), order(w, "h2", "buy", 800, 1000)):
        assert w.apply(tx) is None


def test_clearing_is_the_markets_re_executed_and_a_mismatch_rejected(world):
    market(world)
    result = clear(world)
    # the uniform-price auction: 600 + 400 Wh, all at the marginal pair's midpoint (1000 + 500) / 2
    assert [(t["energy_wh"], t["price_minor_per_kwh"]) for t in result["trades"]] == [(600, 750), (400, 750)]
    assert world.apply(clearing_tx(world, result)) == "gate_open"
    world.next_time(GATE_MS)
    forged = copy.deepcopy(result)
    forged["trades"][0]["price_minor_per_kwh"] += 1
    assert world.apply(clearing_tx(world, forged)) == "clearing_mismatch"
    assert world.apply(world.tx(world.members["h0"], "clearing",
                                {"interval_start_s": INTERVAL_S, "result_hash": hash_value(result)})) == "unauthorized"
    assert world.apply(clearing_tx(world, result)) is None
    interval = world.state.get("intervals", str(INTERVAL_S))
    assert interval["status"] == "cleared" and interval["clearing"]["clearing_price_minor_per_kwh"] == 750
    trade = world.state.get("trades", f"{INTERVAL_S}/0")
    assert (trade["buyer_id"], trade["seller_id"], trade["energy_wh"], trade["status"]) == ("h1", "h0", 600, "cleared")
    assert trade["bid_id"] in interval["orders"] and trade["clearing_tx"] == interval["clearing_tx"]
    assert world.apply(clearing_tx(world, result)) == "already_cleared"
    assert world.apply(order(world, "h1", "buy", 1, 1000)) == "gate_closed"


class FaultyContract(MarketContract):
    """A contract whose clearing is altered by `fault(trades) -> trades`."""

    def __init__(self, fault):
        self.fault = fault

    def for_chain(self, params, feeders):
        chain = super().for_chain(params, feeders)
        honest = chain.clear

        def clear(members, start, orders):
            result = honest(members, start, orders)
            return {**result, "trades": self.fault(result["trades"])}
        chain.clear = clear
        return chain


@pytest.mark.parametrize("fault", [
    lambda trades: trades + trades[:1],                                            # sells a kWh twice
    lambda trades: [{**trades[0], "price_minor_per_kwh": 1600}, *trades[1:]],       # above the bid's limit
    lambda trades: [{**trades[0], "offer_price_minor_per_kwh": 500.0}, *trades[1:]],   # a float
    lambda trades: [{**trades[0], "buyer_id": "h2"}, *trades[1:]]])                # not the bid's household
def test_a_faulty_rule_is_refused_by_the_guard(fault):
    w = World(rules=FaultyContract(fault))
    market(w)
    w.next_time(GATE_MS)
    # the guard runs before the hash is compared, so whatever hash the operator signed
    tx = w.tx(w.operator, "clearing", {"interval_start_s": INTERVAL_S, "result_hash": "00" * 32})
    assert w.apply(tx) == "invalid_result"


def test_network_fields_of_a_certificate_place_the_member_and_limit_its_trades():
    w = World(params={"fee_same_feeder_minor_per_kwh": 10, "fee_cross_feeder_minor_per_kwh": 40})
    new, gw = SigningKey.derive("new"), SigningKey.derive("newgw")
    body = make_cert(w.operator, CHAIN, "h9", new.public_hex, gw.public_hex, "consumer", feeder="f2",
                     max_import_w=1_000)
    assert w.apply(w.tx(new, "admit", body)) is None
    assert w.state.get("members", "h9")["feeder"] == "f2" and w.state.get("members", "h9")["max_import_w"] == 1_000
    assert w.apply(order(w, "h0", "sell", 1000, 500)) is None
    assert w.apply(w.tx(new, "order", {"interval_start_s": INTERVAL_S, "side": "buy", "energy_wh": 600,
                                       "price_minor_per_kwh": 1500})) is None
    (trade,) = clear(w)["trades"]
    # 1 kW held over 15 min is 250 Wh; the trade crosses feeders (main -> f2), so the higher fee
    assert (trade["energy_wh"], trade["fee_minor_per_kwh"]) == (250, 40) and clear(w)["curtailed_wh"] == 350
    bad = make_cert(w.operator, CHAIN, "utility", SigningKey.derive("u").public_hex, gw.public_hex)
    assert w.apply(w.tx(w.operator, "admit", bad)) == "reserved_name"


def cleared_market(w):
    market(w)
    w.next_time(GATE_MS)
    assert w.apply(clearing_tx(w, clear(w))) is None


FEES = {"fee_same_feeder_minor_per_kwh": 31}


def test_settlement_applies_every_transfer_atomically_and_conserves_money_and_energy():
    w = World(params=FEES)
    cleared_market(w)
    w.next_time(END_MS)
    # h0 sold 1000 Wh but exported 700; h1 imported the 600 it bought; h2 bought 400 and imported 800
    for tx in (reading(w, "h0", 0, 700), reading(w, "h1", 600, 0), reading(w, "h2", 800, 0)):
        assert w.apply(tx) is None
    assert w.apply(settle_tx(w)) == "interval_not_ended"
    w.next_time(SETTLE_MS)
    accounts = [*(k.public_hex for k in w.members.values()), "utility", "dso", "escrow"]
    before = {a: account(w, a) for a in accounts}
    bad = settle_tx(w)
    bad = make_tx(w.operator, CHAIN, "settlement", bad["nonce"], {**bad["body"], "result_hash": "00" * 32})
    assert w.apply(bad) == "settlement_mismatch"
    assert w.apply(settle_tx(w)) is None
    after = {a: account(w, a) for a in accounts}
    money = {a: after[a][0] - before[a][0] for a in accounts}
    energy = {a: after[a][1] - before[a][1] for a in accounts}
    h0, h1, h2 = (w.members[h].public_hex for h in ("h0", "h1", "h2"))
    # by hand, in minor units: p2p 600 Wh x 750 = 450 and 400 x 750 = 300; fees 600 x 31 = 18.6 -> 19 and
    # 400 x 31 = 12.4 -> 12; shortfalls at retail 2075: h0 300 Wh = 622.5 -> 622 (half to even), h2 400 = 830
    assert money == {h0: 450 + 300 - 622, h1: -450 - 19, h2: -300 - 12 - 830, "utility": 622 + 830, "dso": 19 + 12,
                     "escrow": 0}
    assert energy == {h0: -700, h1: 600, h2: 800, "utility": -700, "dso": 0, "escrow": 0}   # = meters
    assert sum(money.values()) == 0 and sum(energy.values()) == 0
    t0, t1 = w.state.get("trades", f"{INTERVAL_S}/0"), w.state.get("trades", f"{INTERVAL_S}/1")
    assert (t0["status"], t0["paid_minor"], t0["fee_minor"]) == ("settled", 450, 19)
    assert (t1["status"], t1["paid_minor"], t1["fee_minor"]) == ("settled", 300, 12)
    interval = w.state.get("intervals", str(INTERVAL_S))
    assert interval["status"] == "settled" and interval["settlement"]["metered_net_wh"] == {"h0": 700, "h1": -600,
                                                                                           "h2": -800}
    assert w.state.get("market", "unsettled") == [] and w.state.get("market", "last_settled") == INTERVAL_S
    assert w.apply(settle_tx(w)) == "not_cleared"                       # settles once


def test_a_member_without_funds_still_settles_and_owes_the_difference(world):
    cleared_market(world)
    h2 = world.members["h2"]
    assert world.apply(world.tx(h2, "transfer", {"to": world.operator.public_hex, "amount_minor": 1_000_000})) is None
    world.next_time(END_MS)
    for tx in (reading(world, "h0", 0, 1000), reading(world, "h1", 600, 0), reading(world, "h2", 400, 0)):
        world.apply(tx)
    world.next_time(SETTLE_MS)
    assert world.apply(settle_tx(world)) is None
    assert account(world, h2.public_hex)[0] == -300                   # energy delivered: the debt is on chain
    assert world.apply(world.tx(h2, "transfer", {"to": world.operator.public_hex, "amount_minor": 1})) \
        == "insufficient_balance"                                        # a debtor cannot pay others


def test_an_interval_without_orders_settles_its_readings_with_the_utility(world):
    world.next_time(END_MS)
    assert world.apply(reading(world, "h0", 0, 400)) is None
    world.next_time(SETTLE_MS)
    assert world.apply(clearing_tx(world, clear(world))) is None       # an empty book
    assert world.apply(settle_tx(world)) is None
    (transfer,) = world.state.get("intervals", str(INTERVAL_S))["settlement"]["transfers"]
    assert (transfer["kind"], transfer["payer"], transfer["payee"], transfer["amount_minor"]) == (
        "surplus", "utility", "h0", 160)                                # 400 Wh at feed-in 400


def test_provenance_follows_references_to_readings_orders_clearing_settlement(world):
    cleared_market(world)
    world.next_time(END_MS)
    for tx in (reading(world, "h0", 0, 900), reading(world, "h1", 600, 0), reading(world, "h2", 400, 0)):
        world.apply(tx)
    world.next_time(SETTLE_MS)
    world.apply(settle_tx(world))
    p = provenance(world.state, f"{INTERVAL_S}/0")
    interval = world.state.get("intervals", str(INTERVAL_S))
    assert p["seller"]["household"] == "h0" and p["buyer"]["household"] == "h1"
    assert p["seller"]["order"]["side"] == "sell" and p["buyer"]["order"]["side"] == "buy"
    seller_reading = p["seller"]["reading"]
    assert seller_reading["export_wh"] == 900 and seller_reading["gateway"] == world.gateways["h0"].public_hex
    assert [(d["kind"], d["energy_wh"]) for d in p["seller"]["deviations"]] == [("shortfall", 100)]
    assert p["buyer"]["deviations"] == []
    assert p["clearing_tx"] == interval["clearing_tx"] and p["settlement_tx"] == interval["settlement_tx"]
    assert p["trade"]["status"] == "settled" and p["trade"]["paid_minor"] == 450
    assert set(p["txs"]) >= {interval["clearing_tx"], interval["settlement_tx"], p["seller"]["order"]["tx"],
                             p["buyer"]["reading"]["tx"]}
    assert provenance(world.state, "nope") is None


# -- §3.3 validator votes, §6.5 ------------------------------------------------------------------------
def test_validator_added_by_majority_and_effective_next_height(world):
    new = SigningKey.derive("new-validator")
    vote = {"action": "add", "validator": new.public_hex, "power": 1}
    v = world.validators
    assert world.apply(world.tx(world.members["h0"], "validator_vote", vote)) == "not_validator"
    assert world.apply(world.tx(v[0], "validator_vote", vote)) is None
    assert world.apply(world.tx(v[0], "validator_vote", vote)) == "already_voted"
    assert world.apply(world.tx(v[1], "validator_vote", vote)) is None
    assert new.public_hex not in world.state.validators()                         # 2 of 4 is not a majority
    pending = world.block([world.tx(v[2], "validator_vote", vote)])
    assert pending.block["header"]["validators_hash"] == world.state.validators().hash   # this block: old set
    world.state.commit(pending)
    assert new.public_hex in world.state.validators() and len(world.state.validators()) == 5
    assert world.state.get("vproposals", f"add:{new.public_hex}") is None


def test_removals_need_a_majority_and_never_empty_the_set():
    w = World(n_validators=1)
    only = w.validators[0]
    assert w.apply(w.tx(only, "validator_vote", {"action": "remove", "validator": only.public_hex, "power": 0})) \
        == "invalid_vote"


# -- §7.2 evidence --------------------------------------------------------------------------------
def test_evidence_is_recorded_once_and_proposes_removal(world):
    bad = world.validators[3]
    a = make_vote(bad, CHAIN, "prevote", 1, 0, "aa" * 32)
    b = make_vote(bad, CHAIN, "prevote", 1, 0, "")
    ev = make_evidence(a, b)
    world.commit(evidence=[ev])
    key = f"{bad.public_hex}:1:0:prevote"
    assert world.state.get("evidence", key)["kind"] == "duplicate_vote"
    prop = world.state.get("vproposals", f"remove:{bad.public_hex}")
    assert prop["evidence"] == [hash_value(ev)] and prop["voters"] == []
    with pytest.raises(TxError, match="duplicate"):
        world.block(evidence=[ev])
    with pytest.raises(Exception):
        world.block(evidence=[make_evidence(a, a)])
    for v in world.validators[:3]:
        assert world.apply(world.tx(v, "validator_vote", {"action": "remove", "validator": bad.public_hex,
                                                          "power": 0})) is None
        if bad.public_hex not in world.state.validators():
            break
    assert bad.public_hex not in world.state.validators()


# -- §4 block validity -----------------------------------------------------------------------------
def fresh_state(w):
    return State(w.genesis, w.rules)


def test_validators_re_execute_a_block_to_the_same_app_hash(world):
    txs = [world.tx(world.members["h0"], "transfer", {"to": world.members["h1"].public_hex, "amount_minor": 7})]
    block = world.commit(txs)
    other = fresh_state(world)
    other.commit(other.execute(block))
    assert other.app_hash == world.state.app_hash == block["header"]["app_hash"]
    assert other.full_hash() == world.state.full_hash()


@pytest.mark.parametrize("tamper, reason", [
    (lambda b: b["header"].update(height=5), "wrong_parent"),
    (lambda b: b["header"].update(prev_hash="00" * 32), "wrong_parent"),
    (lambda b: b["header"].update(chain_id="x"), "wrong_chain"),
    (lambda b: b["header"].update(time_ms=1), "time_not_increasing"),
    (lambda b: b["header"].update(proposer="ab" * 32), "wrong_validators"),
    (lambda b: b["header"].update(app_hash="00" * 32), "app_hash_mismatch"),
    (lambda b: b["txs"].append(b["txs"][0]), "bad_body_hash"),
    (lambda b: b.update(extra=1), "malformed"),
])
def test_invalid_blocks_are_rejected_with_the_rule_they_break(world, tamper, reason):
    txs = [world.tx(world.members["h0"], "transfer", {"to": world.members["h1"].public_hex, "amount_minor": 7})]
    block = copy.deepcopy(world.block(txs).block)
    tamper(block)
    with pytest.raises(BlockError) as exc:
        fresh_state(world).execute(block)
    assert exc.value.reason == reason


def test_a_block_with_a_failing_tx_is_invalid_as_a_whole(world):
    tx = world.tx(world.members["h0"], "transfer", {"to": world.members["h1"].public_hex, "amount_minor": 7})
    block = copy.deepcopy(world.block([tx]).block)
    block["txs"].append(tx)                                                        # the replay
    block["header"]["txs_hash"] = hash_value(block["txs"])
    with pytest.raises(BlockError) as exc:
        fresh_state(world).execute(block)
    assert (exc.value.reason, str(exc.value)) == ("bad_tx", "bad_tx: nonce_too_low")


def test_block_size_and_count_limits():
    w = World(params={"max_block_txs": 2})
    a, b = w.members["h0"], w.members["h1"]
    txs = [w.tx(a, "transfer", {"to": b.public_hex, "amount_minor": 1}, nonce=i) for i in range(3)]
    with pytest.raises(TxError, match="block_full"):
        w.block(txs)


def test_execution_never_touches_committed_state_until_commit(world):
    before = world.state.full_hash()
    tx = world.tx(world.members["h0"], "transfer", {"to": world.members["h1"].public_hex, "amount_minor": 7})
    pending = world.block([tx])
    bad = world.tx(world.members["h0"], "transfer", {"to": world.members["h1"].public_hex, "amount_minor": 10**9},
                   nonce=1)
    with pytest.raises(TxError):
        pending.add_tx(bad)
    assert world.state.full_hash() == before and world.state.height == 0
    world.state.commit(pending)
    assert world.state.full_hash() != before and world.state.nonce_of(world.members["h0"].public_hex) == 1


# -- §5.3 snapshots -------------------------------------------------------------------------------------
def test_snapshot_at_a_snapshot_height_restores_the_same_state():
    w = World(params={"snapshot_interval_heights": 2})
    a, b = w.members["h0"], w.members["h1"]
    w.commit([w.tx(a, "transfer", {"to": b.public_hex, "amount_minor": 3})])
    block = w.commit([w.tx(a, "transfer", {"to": b.public_hex, "amount_minor": 4})])
    assert block["header"]["snapshot_hash"] == w.state.full_hash()
    snap = copy.deepcopy(w.state.snapshot())
    restored = State.from_snapshot(w.genesis, w.rules, snap, block["header"])
    assert restored.full_hash() == w.state.full_hash() and restored.height == 2
    nxt = w.commit([w.tx(b, "transfer", {"to": a.public_hex, "amount_minor": 1})])
    restored.commit(restored.execute(nxt))
    assert restored.app_hash == w.state.app_hash
    snap["tables"]["accounts"][a.public_hex] = {"nonce": 0, "balance_minor": 10**9}
    with pytest.raises(BlockError, match="bad_snapshot"):
        State.from_snapshot(w.genesis, w.rules, snap, block["header"])
