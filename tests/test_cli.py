"""The gridhive command as users run it (a real subprocess each time)."""
import json
import re
import subprocess
import sys
import time

import pytest

from ghnode import config as node_config
from gridhive.gateway.mosquitto import node_password

GRIDHIVE = [sys.executable, "-m", "gridhive.cli"]


def gridhive(*args, timeout=120, cwd=None):
    return subprocess.run(GRIDHIVE + list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.mark.parametrize("sub", ["demo", "node", "gateway", "ctl", "flash", "hil", "bench"])
def test_every_subcommand_has_help(sub):
    out = gridhive(sub, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout and len(out.stdout.splitlines()) > 4


def test_demo_runs_on_the_embedded_broker_loses_nothing_and_settles_on_the_ledger():
    out = gridhive("demo", "--duration-s", "60", "--nodes", "4", "--gateways", "2", "--broker", "embedded",
                   timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "embedded broker" in out.stdout
    assert "no reading lost" in out.stdout
    assert "vnode-4:" in out.stdout
    assert re.search(r"ledger: 2 validators, one chain, height \d+ final on every gateway", out.stdout)
    # Within a minute the gateways' agents attest and order, and the market loop clears and settles.
    settled = re.search(r"settled on the ledger during the run: (\d+) intervals", out.stdout)
    assert settled and int(settled.group(1)) >= 1, out.stdout
    assert "day-ahead market" in out.stdout and "cost reduction: prosumers" in out.stdout


def test_bad_arguments_say_what_is_wrong():
    out = gridhive("demo", "--broker", "rabbit")
    assert out.returncode == 2 and "expected auto, embedded or mosquitto" in out.stderr
    out = gridhive("node", "--virtual", "--broker", "nohost")
    assert out.returncode == 2 and "HOST:PORT" in out.stderr
    out = gridhive("bench", "nope")
    assert out.returncode == 2 and "unknown benchmark" in out.stderr
    out = gridhive("bench", "device", "--validators", "3")
    assert out.returncode == 2 and "runs no validators" in out.stderr


def test_provision_writes_a_valid_config_with_a_fresh_secret(tmp_path):
    paths = []
    for name in ("a.json", "b.json"):
        out = gridhive("flash", "provision", "--node-id", "house-12-ev", "--wifi-ssid", "Street5",
                       "--wifi-password", "pw", "--mqtt-host", "192.0.2.10", "--out", str(tmp_path / name))
        assert out.returncode == 0, out.stdout + out.stderr
        paths.append(tmp_path / name)
    a, b = (node_config.load_config(str(p)) for p in paths)
    assert a["node_id"] == "house-12-ev" and a["mqtt"]["host"] == "192.0.2.10"
    assert a["secret_hex"] != b["secret_hex"]
    # The login mosquitto-config gives this node once its secret is registered with the gateway.
    assert a["mqtt"]["user"] == "house-12-ev" and a["mqtt"]["password"] == node_password(bytes.fromhex(a["secret_hex"]))
    assert (paths[0].stat().st_mode & 0o077) == 0, "the secret must not be world-readable"
    out = gridhive("flash", "provision", "--node-id", "Bad Id", "--wifi-ssid", "x", "--wifi-password", "",
                   "--mqtt-host", "h", "--out", str(tmp_path / "c.json"))
    assert out.returncode == 2 and "node_id" in out.stdout and not (tmp_path / "c.json").exists()


def test_bundle_compiles_the_firmware_for_the_esp32(tmp_path):
    out = gridhive("flash", "bundle", "--version", "1.2.0", "--out", str(tmp_path / "fw"), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    fw = tmp_path / "fw"
    assert (fw / "app" / "active").read_text() == "1.2.0"
    compiled = {p.name for p in (fw / "app" / "1.2.0" / "ghnode").iterdir()}
    assert {"app.mpy", "wire.mpy", "sampler.mpy", "hal_esp32.mpy", "__init__.mpy"} <= compiled
    assert not any(name.startswith("hal_sim") for name in compiled), "host simulation shipped to a board"
    # The .mpy header's arch field (byte 2, bits 2-7): 10 is xtensawin native code, 0 is portable
    # bytecode. Only the hot loop is native.
    def arch(name):
        data = (fw / "app" / "1.2.0" / "ghnode" / name).read_bytes()
        assert data[0] == ord("M")
        return data[2] >> 2
    assert arch("sampler.mpy") == 10
    assert arch("app.mpy") == 0 and arch("wire.mpy") == 0
    manifest = json.loads((fw / "manifest.json").read_text())
    assert manifest["version"] == "1.2.0" and "boot.py" in manifest["files"]


def test_bench_device_reports_json_measured_under_micropython():
    out = gridhive("bench", "device", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert figures["loop_alloc_bytes"] == 0
    assert 0 < figures["us_per_sample"] < 1000


@pytest.mark.broker
def test_virtual_nodes_from_the_command_line_publish_to_a_real_broker(mosquitto, tmp_path):
    from gridhive.hardware.receiver import NodeReceiver

    state = tmp_path / "nodes"
    proc = subprocess.Popen(GRIDHIVE + ["node", "--virtual", "--count", "2", "--broker",
                                        f"{mosquitto.host}:{mosquitto.port}", "--state-dir", str(state),
                                        "--duration-s", "25"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(list(state.glob("*/config.json"))) < 2:
            time.sleep(0.1)
        secrets = {p.parent.name: bytes.fromhex(json.loads(p.read_text())["secret_hex"])
                   for p in state.glob("*/config.json")}
        assert sorted(secrets) == ["vnode-1", "vnode-2"]
        receiver = NodeReceiver(mosquitto.host, mosquitto.port, secrets, client_id="cli-test")
        receiver.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            latest = receiver.snapshot()["latest"]
            if all("tele" in latest.get(n, {}) for n in secrets):
                break
            time.sleep(0.2)
        receiver.stop()
        snap = receiver.snapshot()
        assert all("tele" in snap["latest"].get(n, {}) for n in secrets), snap
        assert snap["rejected"] == {}
    finally:
        proc.terminate()
        proc.wait(10)


def test_errors_that_quote_brackets_print_them_verbatim(tmp_path):
    """Rich reads [..] as markup: a value like "[/]" crashed the error message itself, and "[a-z]"
    vanished from it. Both must reach the user as written, with exit code 2."""
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nid = "gw1"\nlog_level = "[/]"\n')
    out = gridhive("gateway", "check-config", "--config", str(config))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "gateway.log_level" in out.stderr and "got '[/]'" in out.stderr
    config.write_text('[gateway]\nid = "GW 1"\n')
    out = gridhive("gateway", "check-config", "--config", str(config))
    assert out.returncode == 2 and "^[a-z0-9-]{1,32}$" in out.stderr and "'GW 1'" in out.stderr
    out = gridhive("node", "--virtual", "--load", "[/]", "--state-dir", str(tmp_path / "nodes"))
    assert out.returncode == 2 and "unknown load '[/]'" in out.stdout + out.stderr
    out = gridhive("ctl", "fleet", "status", "--db", f"sqlite:///{tmp_path}/[/].db")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "[/].db" in out.stdout + out.stderr


def test_a_virtual_node_says_when_it_cannot_reach_its_broker(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = gridhive("node", "--virtual", "--broker", f"127.0.0.1:{port}", "--duration-s", "3",
                   "--state-dir", str(tmp_path / "nodes"))
    assert out.returncode == 0, out.stderr
    assert f"vnode-1: cannot reach 127.0.0.1:{port}: Connection refused; retrying" in out.stdout
