"""Fixtures every suite reuses: a real Mosquitto broker and a real MicroPython runtime."""
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEVICE_DIR = ROOT / "device"
DEVICE_TESTS_DIR = ROOT / "tests" / "device"
MPYRUN = ROOT / "tools" / "mpyrun.mjs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


class Mosquitto:
    """A real mosquitto process on a free loopback port that a test can stop and restart."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(self.exe):
            raise RuntimeError("mosquitto is not installed: run `make test` (it installs it)")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
        )
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


class MicroPython:
    """Runs modules under the MicroPython WebAssembly port via node, with device/ on its path."""

    def __init__(self):
        self.node = shutil.which("node")
        if not self.node:
            raise RuntimeError("node is not installed: run `make test` (it installs it)")
        if not (ROOT / "node_modules" / "@micropython").exists():
            raise RuntimeError("the MicroPython runtime is missing: run `make test` (it runs npm ci)")

    def _cmd(self, libs):
        cmd = [self.node, str(MPYRUN)]
        for lib in libs:
            cmd += ["--lib", str(lib)]
        return cmd

    def run_tests(self, module: str, libs=(DEVICE_DIR, DEVICE_TESTS_DIR), timeout_s=300):
        """Run every test_* function of `module`; return (results, summary, output)."""
        out = subprocess.run(self._cmd(libs) + ["--test", module], capture_output=True, text=True,
                             timeout=timeout_s, cwd=ROOT)
        results, summary = [], None
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                if row.get("summary"):
                    summary = row
                else:
                    results.append(row)
        return results, summary, out.stdout + out.stderr

    def run(self, module: str, args=None, libs=(DEVICE_DIR,), timeout_s=300) -> str:
        """Call module.main(args) under MicroPython and return its stdout."""
        out = subprocess.run(self._cmd(libs) + ["--run", module, json.dumps(args)], capture_output=True,
                             text=True, timeout=timeout_s, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f"MicroPython run of {module} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout


@pytest.fixture(scope="session")
def micropython():
    return MicroPython()
