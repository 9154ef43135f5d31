"""`gridhive gateway …` and `gridhive flash provision` given bad input, as users run them (a real
subprocess each time): a clear message naming the problem, exit status 2, no traceback, nothing
half-written or half-started."""
import os
import pwd
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gwkit import ROOT
from gridhive.broker import free_port
from gridhive.gateway.config import METER_KEYS, SECTIONS

GRIDHIVE = [sys.executable, "-m", "gridhive.cli"]
# The tests set their own overrides; none may leak in from the shell that runs them.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GRIDHIVE_GATEWAY__") and k != "STATE_DIRECTORY"}


def gridhive(*args, env=None, timeout=60):
    return subprocess.run(GRIDHIVE + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env={**CLEAN_ENV, **(env or {})})


def user_error(out, *words):
    """Exit status 2, every word in the message, no traceback."""
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "Error:" not in out.stderr, out.stderr
    for word in words:
        assert word in out.stdout + out.stderr, out.stdout + out.stderr


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def minimal(tmp_path: Path, extra: str = "") -> Path:
    """A gateway that needs nothing running to get as far as start-up: no uplink, no broker up."""
    return write(tmp_path / "gateway.toml", f'[gateway]\nid = "gw1"\n[broker]\nport = {free_port()}\n'
                 f'password = "gw-pass"\n[uplink]\nenabled = false\n{extra}')


@pytest.mark.parametrize("command", ["run", "check-config", "mosquitto-config"])
def test_a_config_path_that_is_a_folder(tmp_path, command):
    out = gridhive("gateway", command, "--config", tmp_path)
    user_error(out, f"{tmp_path} is a folder, not a config file")


def test_a_config_that_is_not_utf8(tmp_path):
    path = tmp_path / "g.toml"
    path.write_bytes(b"\xff\xfe[gateway]")
    user_error(gridhive("gateway", "check-config", "-c", path), f"{path} is not UTF-8", "byte 0xff")


def test_mosquitto_config_out_that_is_a_file_or_cannot_be_created(tmp_path):
    config = minimal(tmp_path)
    afile = write(tmp_path / "afile", "mine")
    user_error(gridhive("gateway", "mosquitto-config", "-c", config, "--out", afile),
               f"--out: {afile} is a file, not a folder")
    assert afile.read_text() == "mine"
    for out_dir in (afile / "mq", Path("/proc/nope")):  # folders that can never be made
        out = gridhive("gateway", "mosquitto-config", "-c", config, "--out", out_dir)
        user_error(out, f"--out: cannot write {out_dir}")


def test_mosquitto_config_run_as_an_unknown_user_writes_nothing(tmp_path):
    out_dir = tmp_path / "mq"
    config = minimal(tmp_path)
    out = gridhive("gateway", "mosquitto-config", "-c", config, "--out", out_dir, "--run-as", "nosuchuser")
    user_error(out, "--run-as: no system user 'nosuchuser'")
    assert not out_dir.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mosquitto-config hands the files to --run-as only when run as root")
def test_mosquitto_config_warns_when_the_run_as_user_cannot_reach_the_folder(tmp_path):
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user on this machine")
    out_dir = tmp_path / "mq"
    # pytest's tmp folders are 0700 root: mosquitto, dropped to its user, could not open its files.
    blocked = [p for p in out_dir.parents if not p.stat().st_mode & 0o001]
    assert blocked, "expected a folder closed to others above the tmp folder"
    out = gridhive("gateway", "mosquitto-config", "-c", minimal(tmp_path), "--out", out_dir)
    assert out.returncode == 0, out.stderr
    assert re.search(r"warning: .*'mosquitto'.* cannot enter (\S+):", out.stderr), out.stderr
    assert re.search(r"cannot enter (\S+):", out.stderr).group(1) in map(str, blocked)
    assert (out_dir / "mosquitto.conf").exists() and "start it with" in out.stdout
    out = gridhive("gateway", "mosquitto-config", "-c", minimal(tmp_path), "--out", out_dir, "--run-as", "root")
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr


def test_provision_out_in_a_missing_folder_or_a_folder_writes_nothing(tmp_path):
    args = ["flash", "provision", "--node-id", "n1", "--wifi-ssid", "s", "--wifi-password", "p", "--mqtt-host", "h"]
    target = tmp_path / "nonexist" / "x.json"
    user_error(gridhive(*args, "--out", target), f"--out: cannot write {target}")
    assert not target.parent.exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    user_error(gridhive(*args, "--out", folder), f"--out: cannot write {folder}")
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_run_refuses_an_http_port_in_use_before_starting_anything(tmp_path):
    with socket.socket() as held:  # another gateway's API
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        config = minimal(tmp_path, f'[http]\nport = {port}\n')
        out = gridhive("gateway", "run", "--config", config)
    user_error(out, f"http.port: 127.0.0.1:{port} is in use (another gateway?); choose another http.port")
    assert not (tmp_path / "gateway.sqlite3").exists(), "the database was opened before the port was checked"


def test_run_names_a_data_dir_it_cannot_open(tmp_path):
    write(tmp_path / "afile", "")
    config = minimal(tmp_path, '[http]\nport = 0\n')
    write(config, config.read_text().replace('id = "gw1"', 'id = "gw1"\ndata_dir = "afile/data"'))
    out = gridhive("gateway", "run", "--config", config)
    user_error(out, f"gateway.data_dir: cannot open the database {tmp_path / 'afile' / 'data' / 'gateway.sqlite3'}")


def test_a_missing_registry_file_names_its_key(tmp_path):
    config = write(tmp_path / "g.toml", '[gateway]\nid = "gw1"\nregistry_file = "nope.toml"\n')
    out = gridhive("gateway", "check-config", "-c", config)
    user_error(out, f"gateway.registry_file: no such file {tmp_path / 'nope.toml'}")
    assert "no config at" not in out.stderr


def test_config_messages_name_the_file_once_and_values_as_toml(tmp_path):
    bad = write(tmp_path / "notoml.toml", "[gateway\n")
    out = gridhive("gateway", "check-config", "-c", bad)
    user_error(out, "notoml.toml is not valid TOML")
    assert out.stderr.count("notoml.toml") == 1, out.stderr
    out = gridhive("gateway", "check-config", "-c", tmp_path / "absent.toml")
    user_error(out, "no config at")
    assert out.stderr.count("absent.toml") == 1, out.stderr
    port_true = write(tmp_path / "p.toml", '[gateway]\nid = "gw1"\n[broker]\nport = true\n')
    out = gridhive("gateway", "check-config", "-c", port_true)
    user_error(out, "broker.port: expected an integer 1-65535, got true")
    assert "True" not in out.stderr


def test_an_environment_override_is_named_in_its_errors(tmp_path):
    config = minimal(tmp_path)
    out = gridhive("gateway", "check-config", "-c", config, env={"GRIDHIVE_GATEWAY__BROKER__PORT": "abc"})
    user_error(out, "broker.port: expected an integer 1-65535, got 'abc' (set by GRIDHIVE_GATEWAY__BROKER__PORT)")
    out = gridhive("gateway", "check-config", "-c", config, env={"GRIDHIVE_GATEWAY__BROKER__PROT": "1"})
    user_error(out, "GRIDHIVE_GATEWAY__BROKER__PROT: unknown override", "GRIDHIVE_GATEWAY__BROKER__PORT")
    assert out.stderr.count("GRIDHIVE_GATEWAY__") <= 4, "the closest few, not every valid variable"
    out = gridhive("gateway", "check-config", "-c", config, env={"GRIDHIVE_GATEWAY__FOO": "1"})
    user_error(out, "GRIDHIVE_GATEWAY__<SECTION>__<KEY>", "BROKER")


def test_every_config_key_is_in_the_docs_reference():
    rows = [line for line in (ROOT / "docs" / "GATEWAY.md").read_text().splitlines() if line.startswith("| `")]
    missing = [f"{section}.{key}" for section, keys in {**SECTIONS, "meter": METER_KEYS}.items() for key in keys
               if key != "enabled" or section != "meter"  # [meter] enabled: described in the text above its table
               if not any(line.startswith(f"| `{section}.") and re.search(rf"\b{key}\b", line) for line in rows)]
    assert missing == []


def test_under_the_systemd_unit_the_database_goes_to_its_state_directory(tmp_path):
    unit = gridhive("gateway", "systemd-unit").stdout.splitlines()
    assert "ProtectSystem=strict" in unit and "StateDirectory=gridhive" in unit
    config = minimal(tmp_path)
    out = gridhive("gateway", "check-config", "-c", config, env={"STATE_DIRECTORY": "/var/lib/gridhive"})
    assert out.returncode == 0, out.stderr
    assert "database /var/lib/gridhive/gateway.sqlite3" in out.stdout
    out = gridhive("gateway", "check-config", "-c", config)
    assert f"database {tmp_path / 'gateway.sqlite3'}" in out.stdout  # outside systemd: beside the config
    explicit = config.read_text().replace('id = "gw1"', 'id = "gw1"\ndata_dir = "/srv/gw"')
    out = gridhive("gateway", "check-config", "-c", write(config, explicit),
                   env={"STATE_DIRECTORY": "/var/lib/gridhive"})
    assert "database /srv/gw/gateway.sqlite3" in out.stdout
