"""Real validator processes for the service suites: a generated testnet, one
`python -m gridhive.ledger run` per validator, their API clients, and each validator's chain read
straight from its SQLite store (also while it is down)."""
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from gridhive.ledger.client import LedgerClient
from gridhive.ledger.testnet import generate

# Short timings keep the suites brief; the rules are the same at any speed.
FAST = {"block_period_ms": 300, "empty_block_interval_ms": 300, "timeout_propose_ms": 1_000,
        "timeout_prevote_ms": 500, "timeout_precommit_ms": 500, "retransmit_ms": 500}
FAST_P2P = {"reconnect_min_ms": 100, "reconnect_max_ms": 1_000, "ping_ms": 500, "idle_timeout_ms": 3_000}


class Cluster:
    def __init__(self, tmp_path: Path, n: int, *, prefix: tuple[str, ...] = (), **generate_kw):
        """`prefix`: a command each validator runs under, per index (e.g. ip netns exec)."""
        generate_kw.setdefault("consensus", FAST)
        generate_kw.setdefault("p2p", FAST_P2P)
        self.net = generate(tmp_path / "net", n, **generate_kw)
        self.prefix = prefix
        self.procs: dict[int, subprocess.Popen] = {}
        self.clients = {node.index: LedgerClient(node.api, timeout_s=20) for node in self.net.nodes}

    @property
    def n(self) -> int:
        return len(self.net.nodes)

    def start(self, i: int) -> None:
        node = self.net.nodes[i]
        log = open(node.dir / "log", "ab")
        cmd = [*(self.prefix[i].split() if self.prefix else ()), sys.executable, "-m", "gridhive.ledger", "run",
               "--config", str(node.config)]
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=Path(__file__).resolve().parents[2])
        log.close()

    def start_all(self, indices=None) -> None:
        for i in indices if indices is not None else range(self.n):
            self.start(i)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(i)
        proc.send_signal(sig)
        proc.wait(timeout=20)
        self.clients[i].close()

    def stop_all(self) -> None:
        for i in list(self.procs):
            proc = self.procs[i]
            if proc.poll() is None:
                proc.terminate()
        for i in list(self.procs):
            proc = self.procs.pop(i)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for client in self.clients.values():
            client.close()

    def alive(self, i: int) -> bool:
        return i in self.procs and self.procs[i].poll() is None

    def log(self, i: int) -> str:
        path = self.net.nodes[i].dir / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- observing ------------------------------------------------------------------------------
    def status(self, i: int) -> dict:
        return self.clients[i].status()

    def wait_ready(self, indices=None, timeout_s: float = 30) -> None:
        for i in indices if indices is not None else list(self.procs):
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    self.status(i)
                    break
                except OSError:
                    assert self.alive(i), f"validator {i} exited:\n{self.log(i)[-3000:]}"
                    assert time.monotonic() < deadline, f"validator {i} API not up:\n{self.log(i)[-3000:]}"
                    time.sleep(0.1)

    def height(self, i: int) -> int:
        """Final height from the validator's store (works while it is down)."""
        return self.chain(i)[-1][0] if self.chain(i) else 0

    def chain(self, i: int) -> list[tuple[int, str]]:
        path = self.net.nodes[i].dir / "data" / "ledger.sqlite3"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute("SELECT height, hash FROM blocks ORDER BY height").fetchall()
        finally:
            db.close()

    def wait_height(self, height: int, indices=None, timeout_s: float = 30) -> None:
        indices = list(indices if indices is not None else self.procs)
        deadline = time.monotonic() + timeout_s
        while not all(self.height(i) >= height for i in indices):
            for i in indices:
                assert self.alive(i), f"validator {i} exited:\n{self.log(i)[-3000:]}"
            assert time.monotonic() < deadline, \
                f"heights {[self.height(i) for i in indices]} < {height} after {timeout_s} s"
            time.sleep(0.1)

    def assert_one_chain(self) -> int:
        """Every validator's stored chain is a prefix of one chain, with no gaps; returns its height."""
        chains = [self.chain(i) for i in range(self.n)]
        longest = max(chains, key=len)
        for i, chain in enumerate(chains):
            assert [h for h, _ in chain] == list(range(1, len(chain) + 1)), f"validator {i} store has gaps"
            assert chain == longest[:len(chain)], f"validator {i} diverges from the longest chain"
        return len(longest)
