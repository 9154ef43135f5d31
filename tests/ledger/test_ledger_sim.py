"""Safety and liveness of the whole core under a seeded, lossy, reordering network (LEDGER.md §6–§8).

Safety (checked in every run): no two different blocks final at one height anywhere, no honest
validator signs two different messages for one (height, round, step), no final block lost over a
restart, no node halts on a final block, no transaction applied twice."""
import random

import pytest

from gridhive.ledger.consensus import ConsensusConfig
from gridhive.ledger.sim import NetConfig, SimConfig, Simulation

LOSSY = NetConfig(drop_p=0.05, delay_min_ms=5, delay_max_ms=50)


def assert_safe(r):
    assert r.forks == [], "two blocks final at one height"
    assert r.double_signs == [], "an honest validator signed conflicting messages"
    assert r.lost_blocks == [], "a final block was lost over a restart"
    assert r.halts == []
    assert r.duplicate_txs == [], "a transaction was applied twice"


def run(**kw):
    sim = Simulation(SimConfig(**kw))
    return sim, sim.run()


@pytest.mark.parametrize("n", [4, 5, 6, 7])
@pytest.mark.parametrize("seed", [1, 2])
def test_healthy_lossy_network_commits_about_every_block_period(n, seed):
    _, r = run(n=n, seed=seed, duration_ms=12_000, net=LOSSY)
    assert_safe(r)
    assert min(r.heights) >= 9 and max(r.heights) - min(r.heights) <= 1
    assert r.txs_committed > 0 and r.replays_rejected > 0


@pytest.mark.parametrize("seed", range(5))
def test_2_2_partition_commits_nothing_and_progresses_once_healed(seed):
    start_ms, end_ms = 3_000, 10_000
    sim = Simulation(SimConfig(n=4, seed=seed, duration_ms=20_000, net=LOSSY))
    sim.partition(start_ms, end_ms, [{0, 1}, {2, 3}])
    r = sim.run()
    assert_safe(r)
    during = [h for h, t in r.first_commit_ms.items() if start_ms <= t < end_ms]
    # at most the height whose precommits were already cast when the partition began
    assert len(during) <= 1 and all(r.first_commit_ms[h] < start_ms + 1_500 for h in during)
    assert r.height_at(end_ms) >= r.height_at(start_ms)
    assert min(r.heights) >= r.height_at(end_ms) + 3


@pytest.mark.parametrize("n", [4, 5, 6, 7])
def test_f_validators_offline_keeps_it_live(n):
    f = (n - 1) // 3
    sim = Simulation(SimConfig(n=n, seed=n, duration_ms=25_000, net=LOSSY))
    offline = list(range(n - f, n))
    for i in offline:
        sim.crash(i, 500, None)
    r = sim.run()
    assert_safe(r)
    live = [h for i, h in enumerate(r.heights) if i not in offline]
    assert min(live) >= 8 and max(live) - min(live) <= 1
    assert all(r.heights[i] <= 1 for i in offline)


@pytest.mark.parametrize("n, byzantine, seed", [(4, (2,), 1), (4, (0,), 2), (7, (1, 5), 3), (7, (6,), 4)])
def test_an_equivocating_validator_is_caught_removed_and_never_breaks_safety(n, byzantine, seed):
    sim, r = run(n=n, seed=seed, duration_ms=25_000, byzantine=byzantine, net=LOSSY)
    assert_safe(r)
    offenders = {sim.nodes[i].key.public_hex for i in byzantine}
    assert offenders <= {key.split(":")[0] for key in r.evidence_keys}              # evidence on chain
    assert not offenders & set(r.validators_final)                                  # voted out (§7.2)
    assert len(r.validators_final) == n - len(byzantine)
    assert min(r.heights) >= 5


def test_clock_skew_within_the_bound_is_tolerated():
    bound = ConsensusConfig().max_clock_skew_ms
    skews = (-bound // 2, -bound // 4, 0, bound // 4, bound // 2)       # any two clocks within the bound
    _, r = run(n=5, seed=7, duration_ms=12_000, skew_ms=skews, net=NetConfig(delay_min_ms=5, delay_max_ms=50))
    assert_safe(r)
    assert r.max_round == 0                                             # every proposal accepted in round 0
    assert min(r.heights) >= 9


def test_a_clock_beyond_the_bound_cannot_push_block_time_ahead():
    bound = ConsensusConfig().max_clock_skew_ms
    _, r = run(n=4, seed=8, duration_ms=20_000, skew_ms=(0, 0, 0, 3 * bound), net=LOSSY)
    assert_safe(r)
    assert r.max_round >= 1                                             # its proposals got nil prevotes
    assert min(r.heights) >= 10
    times = [r.block_time_ms[h] for h in sorted(r.block_time_ms)]
    assert times == sorted(set(times))                                  # strictly increasing
    assert all(r.block_time_ms[h] <= r.first_commit_ms[h] + bound for h in r.block_time_ms)


@pytest.mark.parametrize("seed", range(10))
def test_crash_and_restart_at_random_points_never_forks_loses_or_double_signs(seed):
    rng = random.Random(seed)
    n = rng.randint(4, 7)
    sim = Simulation(SimConfig(n=n, seed=seed, duration_ms=30_000, net=LOSSY))
    for _ in range(10):
        sim.crash(rng.randrange(n), rng.randrange(500, 25_000), rng.randrange(50, 3_000))
    r = sim.run()
    assert_safe(r)
    assert r.restarts >= 5
    assert max(r.heights) >= 8


def test_replayed_transactions_are_rejected_and_never_applied_twice():
    _, r = run(n=4, seed=11, duration_ms=15_000, net=LOSSY, tx_every_ms=100, replay_every=2)
    assert_safe(r)
    # a replay is refused by its nonce, or as a duplicate by a node that still holds it pending
    replay_refusals = r.rejections["nonce_too_low"] + r.rejections["duplicate"]
    assert r.replays_rejected >= 20 and replay_refusals >= r.replays_rejected - r.replays_admitted
    assert r.txs_committed >= 20


def test_a_seed_replays_exactly():
    a, b = run(n=5, seed=3, duration_ms=6_000, net=LOSSY)[1], run(n=5, seed=3, duration_ms=6_000, net=LOSSY)[1]
    assert (a.heights, a.commit_hashes, a.messages_sent, a.bytes_sent) == \
           (b.heights, b.commit_hashes, b.messages_sent, b.bytes_sent)


@pytest.mark.parametrize("seed", range(20))
def test_safety_under_random_faults(seed):
    """Anything within f Byzantine: drops up to 20 %, delays up to 1.5 s, skew, crashes (possibly
    more than f at once), partitions, short timeouts. Only safety is promised here."""
    rng = random.Random(1_000 + seed)
    n = rng.randint(4, 7)
    byzantine = tuple(rng.sample(range(n), rng.randint(0, (n - 1) // 3)))
    config = SimConfig(
        n=n, seed=seed, duration_ms=15_000, byzantine=byzantine,
        net=NetConfig(drop_p=rng.choice([0.0, 0.05, 0.2]), delay_min_ms=1, delay_max_ms=rng.choice([50, 400, 1_500])),
        skew_ms=tuple(rng.randint(-400, 400) for _ in range(n)),
        consensus=ConsensusConfig(empty_block_interval_ms=1_000, timeout_propose_ms=rng.choice([300, 1_500]),
                                  timeout_prevote_ms=rng.choice([100, 1_000]),
                                  timeout_precommit_ms=rng.choice([100, 1_000])))
    sim = Simulation(config)
    for _ in range(rng.randint(0, 8)):
        sim.crash(rng.randrange(n), rng.randrange(500, 14_000), rng.randrange(10, 4_000))
    if rng.random() < 0.3:
        at = rng.randrange(1_000, 8_000)
        sim.partition(at, at + rng.randrange(1_000, 6_000), [set(range(n // 2)), set(range(n // 2, n))])
    assert_safe(sim.run())
