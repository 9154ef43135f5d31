"""Runs Python modules under real MicroPython: the official WebAssembly port, through node.

`tools/mpyrun.mjs` copies each library directory into MicroPython's /lib (as on a board), then
either runs a module's test_* functions or calls its main(args). The device tests and the device
benchmark both run through here.
"""
import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVICE_DIR = ROOT / "device"
MPYRUN = ROOT / "tools" / "mpyrun.mjs"


class MicroPython:
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

    def run_tests(self, module: str, libs, timeout_s=300):
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
