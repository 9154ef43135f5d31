"""Operations: sd_notify datagrams, the systemd unit, the status LED and button, start-up errors."""
import asyncio
import os
import socket
import subprocess
import sys

from gpiozero.pins.mock import MockFactory
from typer.testing import CliRunner

from gwkit import ROOT, write_config
from gridhive.gateway.cli import app
from gridhive.gateway.panel import BROKER_DOWN, BUFFERING, OK, STOPPED, StatusPanel, panel_state
from gridhive.gateway.sdnotify import SdNotifier


def test_sd_notify_sends_datagrams_to_the_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    sd = SdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert sd.enabled and sd.watchdog_interval_s == 15.0
    assert sd.ready("serving 3 nodes") and sd.watchdog() and sd.stopping()
    assert [sock.recv(100) for _ in range(3)] == [b"READY=1\nSTATUS=serving 3 nodes", b"WATCHDOG=1", b"STOPPING=1"]
    sock.close()


def test_sd_notify_is_a_no_op_outside_systemd_and_for_other_pids():
    assert not SdNotifier({}).ready() and SdNotifier({}).watchdog_interval_s is None
    assert SdNotifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert SdNotifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"


def test_systemd_unit_is_type_notify_with_a_watchdog():
    result = CliRunner().invoke(app, ["systemd-unit", "--config", "/etc/gridhive/gateway.toml", "--watchdog-s", "20"])
    assert result.exit_code == 0
    for line in ("Type=notify", "WatchdogSec=20", "Restart=always",
                 "ExecStart=/opt/gridhive/.venv/bin/gridhive gateway run --config /etc/gridhive/gateway.toml"):
        assert line in result.output.splitlines()


def test_led_shows_the_links_and_the_button_republishes():
    assert panel_state(True, True, True) == OK
    assert panel_state(True, False, True) == BUFFERING and panel_state(True, False, False) == OK
    assert panel_state(False, True, True) == BROKER_DOWN

    async def scenario():
        presses = []
        panel = StatusPanel(17, 27, MockFactory(), on_press=lambda: presses.append(1), loop=asyncio.get_running_loop())
        led_pin, button_pin = panel.led.pin, panel.button.pin
        panel.show(OK)
        assert led_pin.state
        panel.show(BROKER_DOWN)
        await asyncio.sleep(0.35)
        assert sum(1 for _, state in led_pin.states if state) >= 2  # fast blink
        button_pin.drive_low()  # pressed (the button pulls the pin to ground)
        await asyncio.sleep(0.1)
        button_pin.drive_high()
        assert presses == [1]
        await asyncio.sleep(0.5)
        assert panel.state == BROKER_DOWN  # restored after the confirmation flashes
        panel.close()
        assert panel.state == STOPPED and not led_pin.state

    asyncio.run(scenario())


def test_a_bad_config_stops_start_up_with_the_key_named(tmp_path):
    path = write_config(tmp_path / "gateway.toml", broker_port=1883)
    path.write_text(path.read_text().replace("[http]\nport = 0", "[http]\nport = -1"))
    done = subprocess.run([sys.executable, "-m", "gridhive.gateway", "run", "--config", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2
    assert "http.port: expected an integer 0-65535, got -1" in done.stderr.replace("\n", "")
