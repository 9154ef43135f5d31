"""LEDGER.md §14 (store, persistence order, snapshots) and §16 (configuration), in process."""
import asyncio
import re
import sqlite3

import pytest

from gridhive.ledger.actions import Broadcast, CommitBlock, PersistSigned
from gridhive.ledger.codec import decode
from gridhive.ledger.config import ConfigError, load
from gridhive.ledger.messages import parse
from gridhive.ledger.service import Validator
from gridhive.ledger.store import Store, StoreError
from gridhive.ledger.testnet import generate

FAST_SOLO = {"block_period_ms": 50, "empty_block_interval_ms": 50}


def solo(tmp_path, **params):
    """A one-validator chain: it alone is a quorum, so it commits without peers."""
    net = generate(tmp_path / "net", 1, consensus=FAST_SOLO, api="unix", params=params or None)
    return net, net.nodes[0]


def run_for(validator: Validator, seconds: float) -> None:
    async def main():
        task = asyncio.get_running_loop().create_task(validator.run())
        await asyncio.sleep(seconds)
        validator.stop()
        assert await task == 0
    asyncio.run(main())


def test_a_signed_record_and_a_block_are_on_disk_before_anything_is_sent(tmp_path):
    """§12/§14: persist actions are flushed (fsync'ed) before the next send."""
    _, node = solo(tmp_path)
    v = Validator(load(node.config))
    disk = sqlite3.connect(node.dir / "data" / "ledger.sqlite3")
    seen = []

    class Probe:                      # a peer link that looks at the disk when asked to send
        def send(self, data):
            row = disk.execute("SELECT value FROM meta WHERE key = 'signed_record'").fetchone()
            height = disk.execute("SELECT COALESCE(MAX(height), 0) FROM blocks").fetchone()[0]
            seen.append((data, decode(row[0], 1 << 20)["round"] if row else None, height))

    v.links["p" * 64] = Probe()
    block = v.node.propose_block(1, v.node.state.last_block_time_ms + 1)
    v.node.final_tx_ids[1] = []                   # as finalize() leaves it for the service
    record = {"height": 1, "round": 7, "step": 2, "msg": {}, "lock": None}

    async def main():
        v._apply([PersistSigned(record), Broadcast(b"vote"),
                  CommitBlock(1, block, [{"round": 0, "validator": v.pubkey}]), Broadcast(b"next")])
    asyncio.run(main())
    assert seen == [(b"vote", 7, 0), (b"next", 7, 1)]


def test_restart_resumes_from_the_latest_snapshot_and_replays_only_later_blocks(tmp_path):
    _, node = solo(tmp_path, snapshot_interval_heights=5)
    config = load(node.config)
    v = Validator(config)
    run_for(v, 1.5)
    height, app_hash = v.node.height, v.node.state.app_hash
    assert height >= 7
    store = Store(config.data_dir / "ledger.sqlite3")
    snapshot, header = store.latest_snapshot()
    assert snapshot["height"] == header["height"] == height // 5 * 5
    replayed = list(store.blocks_after(snapshot["height"]))
    assert [b["header"]["height"] for b in replayed] == list(range(snapshot["height"] + 1, height + 1))
    store.close()
    again = Validator(config)                      # snapshot + the blocks after it
    assert (again.node.height, again.node.state.app_hash) == (height, app_hash)
    run_for(again, 0.5)
    assert again.node.height > height


def test_stored_blocks_are_served_as_canonical_decision_envelopes(tmp_path):
    _, node = solo(tmp_path)
    config = load(node.config)
    v = Validator(config)
    run_for(v, 0.8)
    store = Store(config.data_dir / "ledger.sqlite3")
    envelopes = store.decisions(1, 3)
    assert len(envelopes) == 3
    for h, data in enumerate(envelopes, start=1):
        env = parse(data, 1 << 24)                 # the receiver's own check: canonical, right shape
        assert env["kind"] == "decision" and env["block"]["header"]["height"] == h


def test_the_signed_record_and_its_lock_survive_a_reopen(tmp_path):
    """§8.1: the lock (block and proof) is restored exactly; the block is stored once per lock."""
    _, node = solo(tmp_path)
    v = Validator(load(node.config))
    block = v.node.propose_block(1, v.node.state.last_block_time_ms + 1)
    store = Store(tmp_path / "db.sqlite3")
    for step in (2, 3):
        record = {"height": 1, "round": 0, "step": step, "msg": {"step": step},
                  "lock": {"height": 1, "round": 0, "block": block, "pol": [{"v": 1}]}}
        store.put_signed(record)
        store.flush()
    store.close()
    assert Store(tmp_path / "db.sqlite3").signed_record() == record


def test_a_data_dir_refuses_another_chain(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    store.bind_genesis("a" * 64)
    with pytest.raises(StoreError):
        store.bind_genesis("b" * 64)


@pytest.mark.parametrize("edit, named", [
    (lambda t: re.sub(r'listen = ".*"', 'listen = "localhost"', t), "listen"),
    (lambda t: t.replace("block_period_ms = 50", "block_period_ms = -1"), "block_period_ms"),
    (lambda t: t.replace("block_period_ms = 50", "blok_period_ms = 50"), "blok_period_ms"),
    (lambda t: t + "\n[surprise]\n", "surprise"),
    (lambda t: t.replace('key_file = "validator.key"', 'key_file = "missing.key"'), "key_file"),
])
def test_a_bad_config_fails_fast_naming_the_key(tmp_path, edit, named):
    _, node = solo(tmp_path)
    node.config.write_text(edit(node.config.read_text()))
    with pytest.raises(ConfigError) as exc:
        load(node.config)
    assert named in str(exc.value)


def test_environment_overrides_the_validator_section(tmp_path):
    _, node = solo(tmp_path)
    config = load(node.config, environ={"GRIDHIVE_LEDGER_LISTEN": "127.0.0.1:1234"})
    assert config.listen == ("127.0.0.1", 1234)
