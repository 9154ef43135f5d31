"""Broker set-up: mosquitto.conf, a password file and an ACL generated from gateway.toml.

Users: the gateway (all node topics plus its Home Assistant topics), Home Assistant (discovery,
states, switch commands) and one user per node, named by its node id. The ACL's `pattern` lines
use %u (the user name), so a node may publish only its own `gh/<id>/{tele,health,status,reply,evt}`
and read only its own `gh/<id>/{ack,cmd}`; that is why node ids may not be `gateway` or
`homeassistant`.

A node's MQTT password is `mqtt_password` from the registry, or else derived from its secret by
`node_password()`, so an installer provisions one secret per node.

Passwords are hashed the way mosquitto 2 does (PBKDF2-SHA512, 101 iterations, 12-byte salt:
`$7$101$<salt>$<hash>`, base64): by `mosquitto_passwd -U` when it is on PATH, else here.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from .config import ConfigError, GatewayConfig

NODE_WRITES = ("tele", "health", "status", "reply", "evt")
NODE_READS = ("ack", "cmd")
PBKDF2_ITERATIONS = 101


class NoSuchUser(LookupError):
    """The user mosquitto is to run as does not exist on this machine."""


def node_password(secret: bytes) -> str:
    """The MQTT password of a node that has no `mqtt_password`: 32 hex digits from its secret."""
    return hmac.new(secret, b"gridhive mqtt password", hashlib.sha256).hexdigest()[:32]


def password_hash(password: str, salt: bytes | None = None) -> str:
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def broker_users(cfg: GatewayConfig) -> dict[str, str]:
    """user -> password for everyone the broker admits."""
    if not cfg.broker.password:
        raise ConfigError("broker.password", "set the gateway's broker password (or "
                          "GRIDHIVE_GATEWAY__BROKER__PASSWORD) before writing the broker config")
    users = {cfg.broker.user: cfg.broker.password}
    if cfg.homeassistant.enabled and cfg.homeassistant.password:
        users[cfg.homeassistant.user] = cfg.homeassistant.password
    for entry in cfg.registry:
        users[entry.node_id] = entry.mqtt_password or node_password(entry.secret)
    return users


def write_password_file(path: Path, users: dict[str, str], tool: str | None = None) -> str:
    """Write hashed passwords; returns which hasher was used ("mosquitto_passwd" or "python")."""
    tool = shutil.which("mosquitto_passwd") if tool is None else tool
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for user, password in users.items():
            f.write(f"{user}:{password}\n" if tool else f"{user}:{password_hash(password)}\n")
    if not tool:
        return "python"
    # -U hashes a plain-text file in place; passwords never appear on a command line.
    done = subprocess.run([tool, "-U", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        path.unlink()
        raise RuntimeError(f"mosquitto_passwd failed: {done.stderr.strip() or done.stdout.strip()}")
    return "mosquitto_passwd"


def acl_text(cfg: GatewayConfig) -> str:
    ha = cfg.homeassistant
    lines = ["# Written by `gridhive gateway mosquitto-config`; regenerate it rather than edit.",
             "# Every node (user name = node id) reaches only its own topics."]
    lines += [f"pattern write gh/%u/{kind}" for kind in NODE_WRITES]
    lines += [f"pattern read gh/%u/{kind}" for kind in NODE_READS]
    lines += ["", "# The gateway: all node topics and its Home Assistant topics.", f"user {cfg.broker.user}",
              "topic readwrite gh/#", f"topic readwrite {ha.discovery_prefix}/#", f"topic readwrite {ha.state_prefix}/#"]
    if ha.enabled and ha.password:
        lines += ["", "# Home Assistant: discovery and states; commands only to relay switches.", f"user {ha.user}",
                  f"topic readwrite {ha.discovery_prefix}/#", f"topic read {ha.state_prefix}/#",
                  f"topic write {ha.state_prefix}/+/+/relay/+/set"]
    return "\n".join(lines) + "\n"


def conf_text(cfg: GatewayConfig, out_dir: Path, run_as: str = "mosquitto") -> str:
    b = cfg.broker
    lines = [
        "# Written by `gridhive gateway mosquitto-config` from gateway.toml; regenerate it rather than edit.",
        "# Started as root, mosquitto switches to this user before it reads the password file and ACL.",
        f"user {run_as}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out_dir / 'passwd'}",
        f"acl_file {out_dir / 'acl'}",
        "persistence true",
        # The trailing slash: mosquitto before 2.0.3 appended the file name without one (its manual
        # said "must end in a trailing slash"); later ones add their own: "mq//mosquitto.db", harmless.
        f"persistence_location {out_dir}/",
        "autosave_interval 60",
        "# The gateway keeps a persistent session: the broker holds what arrives while it restarts.",
        f"max_queued_messages {b.max_queued_messages}",
        "# Node payloads are at most 4096 bytes; nothing legitimate comes near this.",
        "max_packet_size 65536",
        "log_dest stderr",
        "",
        f"listener {b.port} {b.listen_host}",
    ]
    if b.tls_cert_file:
        lines += ["", "# TLS for nodes configured with mqtt.tls = true.",
                  f"listener {b.tls_port} {b.listen_host}",
                  f"certfile {b.tls_cert_file}", f"keyfile {b.tls_key_file}"]
        if b.tls_ca_file:
            lines.append(f"cafile {b.tls_ca_file}")
    return "\n".join(lines) + "\n"


def uplink_summary(cfg: GatewayConfig) -> str:
    """The uplink's TLS set-up, checked: the gateway (not the broker) opens the uplink connection."""
    u = cfg.uplink
    if not u.enabled:
        return "uplink: disabled"
    if not u.tls:
        return f"uplink: mqtt://{u.host}:{u.port} WITHOUT TLS (set uplink.tls = true outside a lab)"
    ca = u.ca_file or "the system's CA store"
    name = " (host name NOT checked: uplink.tls_insecure)" if u.tls_insecure else ""
    client = f", client certificate {u.cert_file}" if u.cert_file else ""
    login = f", user {u.user}" if u.user else ", no user name"
    return f"uplink: mqtts://{u.host}:{u.port}, server verified against {ca}{name}{client}{login}"


def unreachable_folder(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The topmost folder above `path` that `user` may not enter (no x bit for it by owner, group
    or other; ACLs are not read), or None."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for folder in reversed(path.parents):
        st = folder.stat()
        bit = 0o100 if st.st_uid == user.pw_uid else 0o010 if st.st_gid in groups else 0o001
        if not st.st_mode & bit:
            return folder
    return None


def write_broker_files(cfg: GatewayConfig, out_dir: Path, tool: str | None = None,
                       run_as: str = "mosquitto") -> dict[str, Path | str | None]:
    """Write the three files. When we are root, hand them (and the persistence folder) to the
    `run_as` user, who must read the password file and ACL but nobody else should; "unreachable"
    is a folder above them that user cannot enter (mosquitto would fail to open them), or None."""
    out_dir = Path(out_dir).resolve()
    users = broker_users(cfg)
    try:  # before anything is written: mosquitto.conf names this user
        owner = pwd.getpwnam(run_as)
    except KeyError:
        raise NoSuchUser(f"no system user {run_as!r} to run mosquitto as: install mosquitto "
                         "(it creates the user) or pass another --run-as") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"conf": out_dir / "mosquitto.conf", "passwd": out_dir / "passwd", "acl": out_dir / "acl"}
    hasher = write_password_file(paths["passwd"], users, tool)
    paths["acl"].write_text(acl_text(cfg))
    paths["conf"].write_text(conf_text(cfg, out_dir, run_as))
    unreachable = None
    if os.geteuid() == 0 and owner.pw_uid != 0:
        for path in (out_dir, paths["passwd"], paths["acl"]):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        unreachable = unreachable_folder(out_dir, owner)
    return {**paths, "hasher": hasher, "users": str(len(users)), "unreachable": unreachable}
