"""Clearing benchmark: `run()` returns named figures (seconds, and welfare in milli-minor units).

Times are the best of a few runs of `clear()` including order validation, on random books with
one order per member, prices uniform between feed-in and retail, 0.1-5 kWh per order. Before each
run the garbage collector is emptied (as `timeit` does for its setup), so a run does not pay for
a full collection of garbage left by the previous one; collections during the run count. The
machine is shared, so the 1-minute load average and the process CPU time are reported too.
"""
from __future__ import annotations

import gc
import os
import random
import time

from .clearing import clear
from .model import Community, MarketConfig, Mechanism, Member, Order, Side

FEED_IN, RETAIL = 4, 30  # minor units per kWh
INTERVAL_START_MS = 1_700_000_100_000 - 1_700_000_100_000 % 900_000


def random_book(n_bids: int, n_offers: int, seed: int = 1) -> tuple[list[Order], Community]:
    rng = random.Random(seed)
    orders = []
    for side, count in ((Side.BID, n_bids), (Side.OFFER, n_offers)):
        for i in range(count):
            orders.append(Order(f"{side}-{i}", f"{side}-m{i}", side, rng.randint(100, 5_000),
                                rng.randint(FEED_IN, RETAIL),
                                INTERVAL_START_MS - rng.randint(1, 3_600_000), INTERVAL_START_MS))
    members = tuple(Member(o.member_id, f"feeder-{i % 8}") for i, o in enumerate(orders))
    return orders, Community(members)


def _best_times_s(orders, config, community, repeats: int) -> tuple[float, float]:
    """(best wall-clock time, best process CPU time) of `clear`, in seconds."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        clear(orders, config, community, INTERVAL_START_MS)
        best_wall = min(best_wall, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return round(best_wall, 4), round(best_cpu, 4)


def volume_greedy_welfare_milli_minor(orders: list[Order]) -> int:
    """Baseline: Grid Singularity's pay-as-bid matching (gsy-framework, read for facts only).

    Offers from the most expensive down each take the highest bids that cover their price. It
    scans all bids per offer (O(n*m)) and can spend high bids on expensive offers, leaving cheap
    offers without buyers.
    """
    bids = sorted((o for o in orders if o.side == Side.BID),
                  key=lambda o: -o.price_minor_per_kwh)
    offers = sorted((o for o in orders if o.side == Side.OFFER),
                    key=lambda o: -o.price_minor_per_kwh)
    bid_left = [b.energy_wh for b in bids]
    welfare = 0
    for offer in offers:
        offer_left = offer.energy_wh
        for i, bid in enumerate(bids):
            if not offer_left:
                break
            if bid_left[i] and bid.price_minor_per_kwh >= offer.price_minor_per_kwh:
                energy_wh = min(offer_left, bid_left[i])
                bid_left[i] -= energy_wh
                offer_left -= energy_wh
                welfare += energy_wh * (bid.price_minor_per_kwh - offer.price_minor_per_kwh)
    return welfare


def lp_welfare_milli_minor(orders: list[Order]) -> float | None:
    """The welfare optimum as a linear program (scipy's HiGHS); None without scipy."""
    try:
        from scipy.optimize import linprog
    except ImportError:
        return None
    bids = [o for o in orders if o.side == Side.BID]
    offers = [o for o in orders if o.side == Side.OFFER]
    # maximise sum(bid price * x) - sum(offer price * y) with sum(x) == sum(y), 0 <= x, y <= energy
    cost = [-b.price_minor_per_kwh for b in bids] + [o.price_minor_per_kwh for o in offers]
    balance = [[1] * len(bids) + [-1] * len(offers)]
    bounds = [(0, o.energy_wh) for o in bids + offers]
    solution = linprog(cost, A_eq=balance, b_eq=[0], bounds=bounds, method="highs")
    if not solution.success:
        raise RuntimeError(f"LP failed: {solution.message}")
    return -solution.fun


def run(repeats: int = 3) -> dict:
    figures: dict = {}
    for n_orders in (1_000, 10_000):
        orders, community = random_book(n_orders // 2, n_orders // 2)
        for mechanism in Mechanism:
            config = MarketConfig(FEED_IN, RETAIL, mechanism=mechanism)
            figures[f"{mechanism}_{n_orders // 1000}k_orders_s"] = _best_times_s(
                orders, config, community, repeats)[0]

    uniform = MarketConfig(FEED_IN, RETAIL)
    orders, community = random_book(100_000, 100_000)
    figures["uniform_100k_s"], figures["uniform_100k_cpu_s"] = _best_times_s(
        orders, uniform, community, repeats)

    orders, community = random_book(2_000, 2_000)
    figures["uniform_2k_s"] = _best_times_s(orders, uniform, community, repeats)[0]
    figures["welfare_2k"] = clear(orders, uniform, community, INTERVAL_START_MS).welfare_milli_minor
    start = time.perf_counter()
    figures["volume_greedy_welfare_2k"] = volume_greedy_welfare_milli_minor(orders)
    figures["volume_greedy_2k_s"] = round(time.perf_counter() - start, 4)
    figures["lp_welfare_2k"] = lp_welfare_milli_minor(orders)
    figures["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
