"""`gridhive bench ledger`: validators as separate processes on this machine plus a load
generator (LEDGER.md §17). Transfers are signed before the clock starts, submitted in batches
round-robin to the validators, and their finality is observed by long-polling one validator's
commits. CPU time (validators, and the load generator apart) and peak RSS per validator are read
from /proc."""
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .client import LedgerClient
from .testnet import generate
from .tx import make_tx, tx_id

TICK_S = 0.05                  # the generator submits what is due every tick, one batch per validator
SAMPLE_S = 0.1                 # how often the backlog (accepted, not yet final) is sampled


def _proc_cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")   # utime + stime


def _proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(validators: int = 4, max_tx_s: int | None = None, duration_s: float = 15.0, warmup_s: float = 4.0,
        block_period_ms: int = 1_000, clients: int = 2_000, latency_load: float = 0.7,
        backlog_s: float = 1.5) -> dict:
    """Two phases on one cluster. Saturation: offer `max_tx_s`, more than the chain finalizes,
    with at most `backlog_s` × max_tx_s accepted and not yet final (a bound for the mempools),
    so the validators always have a queue: tx_per_s, cpu_ms_per_tx. The run says whether it
    really saturated: `saturated` when the backlog never fell below one block period of the
    measured throughput. Finality: an open-loop load at `latency_load` × that throughput
    (finality p50/p99: latency at saturation would only measure the queue). `max_tx_s` defaults
    to 16 000 / validators: every validator verifies every tx, so capacity falls as 1/n, and an
    offer far above it only buys a longer queue for every validator to verify first."""
    max_tx_s = max_tx_s or 16_000 // validators
    with tempfile.TemporaryDirectory(prefix="gridhive-bench-ledger-") as tmp:
        net = generate(Path(tmp), validators, chain_id="bench", clients=clients,
                       consensus={"block_period_ms": block_period_ms, "empty_block_interval_ms": block_period_ms},
                       mempool={"max_txs": 50_000})
        procs = [subprocess.Popen([sys.executable, "-m", "gridhive.ledger", "run", "--config", str(node.config),
                                   "--log-level", "warning"], stdout=subprocess.DEVNULL,
                                  stderr=open(node.dir / "log", "wb")) for node in net.nodes]
        try:
            load = _Load(net, procs, int(max_tx_s * (1 + latency_load) * (warmup_s + duration_s + 1)))
            saturated = load.phase(max_tx_s, int(backlog_s * max_tx_s), warmup_s, duration_s)
            steady_tx_s = max(1, int(latency_load * saturated["tx_per_s"]))
            steady = load.phase(steady_tx_s, 10 * steady_tx_s, warmup_s, duration_s)
            load.stop.set()
            return {
                "tx_per_s": saturated["tx_per_s"],
                "finality_p50_ms": steady["p50_ms"],
                "finality_p99_ms": steady["p99_ms"],
                "cpu_ms_per_tx": saturated["cpu_ms_per_tx"],
                "rss_mb_max": round(max(_proc_peak_rss_mb(p.pid) for p in procs), 1),
                "validators": len(procs),
                "saturated": saturated["backlog_min"] >= saturated["tx_per_s"] * block_period_ms / 1000,
                "saturation_offered_tx_per_s": max_tx_s,
                "saturation_accepted_tx_per_s": saturated["accepted_tx_per_s"],
                "saturation_backlog_min": saturated["backlog_min"],
                "finality_at_tx_per_s": steady["tx_per_s"],
                "finality_at_saturation_p50_ms": saturated["p50_ms"],
                "loadgen_cpu_ms_per_tx": saturated["loadgen_cpu_ms_per_tx"],
                "blocks": [saturated["blocks"], steady["blocks"]],           # per phase
                "blocks_after_round_0": [saturated["blocks_after_round_0"], steady["blocks_after_round_0"]],
                "block_txs_max": [saturated["block_txs_max"], steady["block_txs_max"]],
                "block_period_ms": block_period_ms,
                "rejected": {**saturated["rejected"], **steady["rejected"]},
                "load_avg_1m": round(os.getloadavg()[0], 2),     # other work on this machine shares its cores
            }
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)


class _Load:
    """Pre-signed transfers (sender j mod clients, nonce j div clients), submitted in batches
    round-robin to the validators; finality observed on validator 0's commit stream."""

    def __init__(self, net, procs, total: int):
        self.net, self.procs = net, procs
        senders, to = net.clients, net.operator.public_hex
        self.txs = [make_tx(senders[j % len(senders)], net.chain_id, "transfer", j // len(senders),
                            {"to": to, "amount_minor": 1}) for j in range(total)]
        self.index = {tx_id(tx): j for j, tx in enumerate(self.txs)}
        self.next = 0
        self.first = 0                                 # the first tx of the current phase
        self.final_in_phase = 0                        # final txs with index >= first
        self.submitted_s = [0.0] * total
        self.final_s: dict[int, float] = {}
        self.blocks: list[tuple[float, int, int]] = []   # (seen at, decided in round, txs) per block
        self.stop = threading.Event()
        api = LedgerClient(net.nodes[0].api, timeout_s=60)
        for node in net.nodes:
            _wait_up(LedgerClient(node.api, timeout_s=60))
        api.wait_final(api.submit(make_tx(net.operator, net.chain_id, "transfer", 0,
                                          {"to": senders[0].public_hex, "amount_minor": 1}))["tx_id"], 60)
        self._height = api.status()["height"] + 1
        threading.Thread(target=self._observe, daemon=True).start()

    def _observe(self) -> None:
        client = LedgerClient(self.net.nodes[0].api, timeout_s=60)
        while not self.stop.is_set():
            for commit in client.commits(self._height, wait_ms=1_000):
                now = time.monotonic()
                self.blocks.append((now, commit["round"], len(commit["tx_ids"])))
                for tid in commit["tx_ids"]:
                    j = self.index.get(tid)
                    if j is not None:
                        self.final_s[j] = now
                        self.final_in_phase += j >= self.first
                self._height = max(self._height, commit["height"] + 1)

    def phase(self, rate_tx_s: int, window: int, warmup_s: float, duration_s: float) -> dict:
        """Offer `rate_tx_s` with at most `window` txs accepted and not final; measure after warm-up.
        Txs are taken in order from one cursor, so whatever a phase leaves unsent leaves no nonce gap."""
        n_api = len(self.net.nodes)
        self.first = first = self.next
        self.final_in_phase = sum(1 for j in list(self.final_s) if j >= first)
        accepted, rejected = [0] * n_api, {}
        done, lock = threading.Event(), threading.Lock()
        t0 = time.monotonic()

        def take() -> list[int]:
            with lock:
                in_flight = sum(accepted) - self.final_in_phase
                due = min(first + int((time.monotonic() - t0) * rate_tx_s) + 1, len(self.txs))
                count = min(due - self.next, max(0, window - in_flight) // n_api + 1)
                batch = list(range(self.next, self.next + max(0, count)))
                self.next += len(batch)
                now = time.monotonic()
                for j in batch:
                    self.submitted_s[j] = now
                return batch

        def submitter(v: int) -> None:
            client = LedgerClient(self.net.nodes[v].api, timeout_s=60)
            while not done.is_set():
                batch = take()
                if batch:
                    for r in client.submit_many([self.txs[j] for j in batch]):
                        if r["accepted"]:
                            accepted[v] += 1
                        else:
                            rejected[r["reason"]] = rejected.get(r["reason"], 0) + 1
                time.sleep(TICK_S)

        threads = [threading.Thread(target=submitter, args=(v,), daemon=True) for v in range(n_api)]
        for t in threads:
            t.start()
        time.sleep(warmup_s)
        cpu_start = sum(_proc_cpu_ms(p.pid) for p in self.procs)
        own_cpu_start = time.process_time()
        final_start, accepted_start, start_s = len(self.final_s), sum(accepted), time.monotonic()
        backlog_min = window
        while time.monotonic() < start_s + duration_s:
            time.sleep(SAMPLE_S)
            backlog_min = min(backlog_min, sum(accepted) - self.final_in_phase)
        end_s, final_end, accepted_end = time.monotonic(), len(self.final_s), sum(accepted)
        cpu_ms = sum(_proc_cpu_ms(p.pid) for p in self.procs) - cpu_start
        own_cpu_ms = (time.process_time() - own_cpu_start) * 1000
        done.set()
        for t in threads:
            t.join(30)
        deadline = time.monotonic() + 30
        while sum(accepted) > self.final_in_phase and time.monotonic() < deadline:
            time.sleep(0.1)                      # drain, so the next phase does not measure this one's queue
        committed = final_end - final_start
        latencies_ms = [(t - self.submitted_s[j]) * 1000 for j, t in list(self.final_s.items())
                        if start_s <= t < end_s and j >= first]
        in_window = [b for b in self.blocks if start_s <= b[0] < end_s]
        return {"tx_per_s": round(committed / (end_s - start_s), 1),
                "accepted_tx_per_s": round((accepted_end - accepted_start) / (end_s - start_s), 1),
                "backlog_min": backlog_min,
                "p50_ms": round(statistics.median(latencies_ms), 1) if latencies_ms else float("nan"),
                "p99_ms": round(_percentile(latencies_ms, 0.99), 1),
                "cpu_ms_per_tx": round(cpu_ms / max(1, committed), 3),
                "loadgen_cpu_ms_per_tx": round(own_cpu_ms / max(1, committed), 3), "rejected": rejected,
                "blocks": len(in_window), "blocks_after_round_0": sum(1 for b in in_window if b[1] > 0),
                "block_txs_max": max((b[2] for b in in_window), default=0)}


def _wait_up(client: LedgerClient, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.status()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    import json

    print(json.dumps(run(**{k: float(v) if "." in v else int(v) for k, v in (a.split("=") for a in sys.argv[1:])})))
