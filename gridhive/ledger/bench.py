"""`gridhive bench ledger`: validators as separate processes on this machine plus a load
generator (LEDGER.md §17). Transfers are signed before the clock starts, submitted in batches
round-robin to the validators, and their finality is observed by long-polling one validator's
commits. CPU time (validators only) and peak RSS per validator are read from /proc."""
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


def run(validators: int = 4, max_tx_s: int = 2_500, duration_s: float = 15.0, warmup_s: float = 4.0,
        block_period_ms: int = 1_000, clients: int = 2_000, latency_load: float = 0.7) -> dict:
    """Two phases on one cluster. Saturation: offer up to `max_tx_s` with at most one second of
    it accepted and not yet final, so at saturation the offered load follows what the
    validators finalize (tx_per_s, cpu_ms_per_tx). Finality: an open-loop load at
    `latency_load` × that throughput (finality p50/p99: latency at saturation would only measure
    the queue)."""
    with tempfile.TemporaryDirectory(prefix="gridhive-bench-ledger-") as tmp:
        net = generate(Path(tmp), validators, chain_id="bench", clients=clients,
                       consensus={"block_period_ms": block_period_ms, "empty_block_interval_ms": block_period_ms},
                       mempool={"max_txs": 50_000})
        procs = [subprocess.Popen([sys.executable, "-m", "gridhive.ledger", "run", "--config", str(node.config),
                                   "--log-level", "warning"], stdout=subprocess.DEVNULL,
                                  stderr=open(node.dir / "log", "wb")) for node in net.nodes]
        try:
            load = _Load(net, procs, int(max_tx_s * (1 + latency_load) * (warmup_s + duration_s + 1)))
            saturated = load.phase(max_tx_s, max_tx_s, warmup_s, duration_s)
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
                "finality_at_tx_per_s": steady["tx_per_s"],
                "finality_at_saturation_p50_ms": saturated["p50_ms"],
                "blocks": [saturated["blocks"], steady["blocks"]],           # per phase
                "blocks_after_round_0": [saturated["blocks_after_round_0"], steady["blocks_after_round_0"]],
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
        self.submitted_s = [0.0] * total
        self.final_s: dict[int, float] = {}
        self.rounds: list[tuple[float, int]] = []      # (seen at, decided in round) per block
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
                self.rounds.append((now, commit["round"]))
                for tid in commit["tx_ids"]:
                    if tid in self.index:
                        self.final_s[self.index[tid]] = now
                self._height = max(self._height, commit["height"] + 1)

    def phase(self, rate_tx_s: int, window: int, warmup_s: float, duration_s: float) -> dict:
        """Offer `rate_tx_s` with at most `window` txs accepted and not final; measure after warm-up.
        Txs are taken in order from one cursor, so whatever a phase leaves unsent leaves no nonce gap."""
        n_api = len(self.net.nodes)
        first = self.next
        accepted, rejected = [0] * n_api, {}
        done, lock = threading.Event(), threading.Lock()
        t0 = time.monotonic()

        def take(v: int) -> list[int]:
            with lock:
                in_flight = sum(accepted) - sum(1 for j in list(self.final_s) if j >= first)
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
                batch = take(v)
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
        final_start, start_s = len(self.final_s), time.monotonic()
        time.sleep(duration_s)
        end_s, final_end = time.monotonic(), len(self.final_s)
        cpu_ms = sum(_proc_cpu_ms(p.pid) for p in self.procs) - cpu_start
        done.set()
        for t in threads:
            t.join(30)
        deadline = time.monotonic() + 30
        while sum(accepted) > sum(1 for j in list(self.final_s) if j >= first) and time.monotonic() < deadline:
            time.sleep(0.1)                      # drain, so the next phase does not measure this one's queue
        committed = final_end - final_start
        latencies_ms = [(t - self.submitted_s[j]) * 1000 for j, t in list(self.final_s.items())
                        if start_s <= t < end_s and j >= first]
        return {"tx_per_s": round(committed / (end_s - start_s), 1),
                "p50_ms": round(statistics.median(latencies_ms), 1) if latencies_ms else float("nan"),
                "p99_ms": round(_percentile(latencies_ms, 0.99), 1),
                "cpu_ms_per_tx": round(cpu_ms / max(1, committed), 3), "rejected": rejected,
                "blocks": sum(1 for t, _ in self.rounds if start_s <= t < end_s),
                "blocks_after_round_0": sum(1 for t, r in self.rounds if start_s <= t < end_s and r > 0)}


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
