"""systemd's sd_notify protocol: one datagram of KEY=VALUE lines to $NOTIFY_SOCKET.

A no-op when NOTIFY_SOCKET is unset (not started by systemd with Type=notify). With
WatchdogSec= in the unit, systemd sets WATCHDOG_USEC and restarts the service when no
WATCHDOG=1 arrives in time; the gateway pings at half that interval from its event loop, so a
wedged loop (a stuck SQLite call, a deadlock) is what triggers the restart.
"""
from __future__ import annotations

import os
import socket
from typing import Mapping


class SdNotifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        # '@' marks a Linux abstract-namespace socket.
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        for_us = not pid or pid == str(os.getpid())
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and for_us else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        if not self.address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto("\n".join(lines).encode(), self.address)
            except OSError:
                return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


def systemd_unit(config_path: str, user: str = "gridhive", exe: str = "/opt/gridhive/.venv/bin/gridhive",
                 watchdog_s: int = 30) -> str:
    """A unit for `gridhive gateway run`, next to Debian's mosquitto.service."""
    return f"""[Unit]
Description=gridhive gateway (ingest, storage, relay commands, uplink)
Wants=network-online.target mosquitto.service
After=network-online.target mosquitto.service

[Service]
Type=notify
NotifyAccess=main
ExecStart={exe} gateway run --config {config_path}
User={user}
StateDirectory=gridhive
WatchdogSec={watchdog_s}
Restart=always
RestartSec=2
TimeoutStopSec=20
# The gateway needs its data dir, the GPIO chip and the network; nothing else.
ProtectSystem=strict
ReadWritePaths=/var/lib/gridhive
ProtectHome=true
PrivateTmp=true
NoNewPrivileges=true
SupplementaryGroups=gpio

[Install]
WantedBy=multi-user.target
"""
