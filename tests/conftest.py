"""Fixtures every suite reuses: a real Mosquitto broker and a real MicroPython runtime."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gridhive.broker import MosquittoBroker

ROOT = Path(__file__).resolve().parent.parent
DEVICE_DIR = ROOT / "device"
DEVICE_TESTS_DIR = ROOT / "tests" / "device"
MPYRUN = ROOT / "tools" / "mpyrun.mjs"
# device/ holds boot-time modules (appdir) that live in the board's /lib, outside the ghnode package.
sys.path.insert(0, str(DEVICE_DIR))


@pytest.fixture
def mosquitto(tmp_path):
    broker = MosquittoBroker(tmp_path)
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
