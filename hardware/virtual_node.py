"""Virtual nodes: the real node firmware (ghnode.app) on CPython with a simulated board and household loads.

Each virtual home has a mains voltage input, a CT on its grid connection ("mains"), a CT on its EV
charger circuit ("ev") and a relay switching the charger. Its flash is a directory under state_dir,
so readings, sequence numbers and energy counters survive restarts exactly as on a board.
"""
import json
import math
import os
import random
import threading
import time
from pathlib import Path

from rich.markup import escape

from ghnode import app
from ghnode.hal_sim import Waveform
from ghnode.hal_sim import SimBoard
from gridhive.gateway.mosquitto import node_password

LOADS = ("mixed", "ev", "heatpump", "fridge", "pv")
VOLTAGE_PIN, MAINS_PIN, EV_PIN, EV_RELAY_PIN = 39, 36, 34, 25
MAINS_RATING_A, EV_RATING_A = 60, 30
GRID_CHANNEL = "mains"  # the CT at the grid connection: what the market settles on
EV_CHARGE_W = 3650  # CONTEXT.md appliance table
MAINS_V = 230.0


def node_config(node_id: str, secret_hex: str, host: str, port: int, period_s: int = 10) -> dict:
    """The config a provisioned virtual home runs with (same schema as a real node's /config.json),
    with the MQTT login `gridhive flash provision` gives a real node: it can join a gateway's
    broker set up by `mosquitto-config` once its secret is registered there."""
    return {
        "node_id": node_id,
        "secret_hex": secret_hex,
        "wifi": {"ssid": "virtual", "password": ""},
        "mqtt": {"host": host, "port": port, "keepalive_s": 15, "user": node_id,
                 "password": node_password(bytes.fromhex(secret_hex))},
        "channels": [
            {"name": "mains_v", "pin": VOLTAGE_PIN, "kind": "voltage"},
            {"name": GRID_CHANNEL, "pin": MAINS_PIN, "rating_a": MAINS_RATING_A},
            {"name": "ev", "pin": EV_PIN, "rating_a": EV_RATING_A},
        ],
        "relays": [{"name": "ev", "pin": EV_RELAY_PIN, "channel": "ev", "max_current_ma": 20000,
                    "min_off_ms": 5000, "power_up": "restore"}],
        "telemetry": {"period_s": period_s, "change_w": 200, "health_period_s": 30},
    }


def provision(root: Path, node_id: str, host: str, port: int, period_s: int = 10) -> dict:
    """Write the node's config.json, keeping its secret across runs; return the config."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.json"
    secret_hex = None
    if path.exists():
        try:
            secret_hex = json.loads(path.read_text()).get("secret_hex")
        except ValueError:
            pass
    cfg = node_config(node_id, secret_hex or os.urandom(32).hex(), host, port, period_s)
    path.write_text(json.dumps(cfg, indent=2))
    return cfg


class HouseholdLoad:
    """What the CTs of one home see over time: a base load, its appliance, and the EV when charging."""

    def __init__(self, kind: str, seed: int):
        if kind not in LOADS:
            raise ValueError(f"unknown load {kind!r}; choose from {', '.join(LOADS)}")
        self.kind = kind
        self.rng = random.Random(seed)
        self.phase_s = self.rng.uniform(0, 600)
        self.base_w = self.rng.uniform(150, 400)

    def power_w(self, t_s: float) -> float:
        """Household power excluding the EV: positive import, negative export."""
        base = self.base_w * (1 + 0.2 * math.sin((t_s + self.phase_s) / 90))
        if self.kind == "fridge" or self.kind == "mixed":
            base += 125 if ((t_s + self.phase_s) % 120) < 40 else 0  # compressor cycling
        if self.kind == "heatpump":
            base += 1500 if ((t_s + self.phase_s) % 300) < 180 else 0
        if self.kind == "pv":
            base -= 2500 * max(0.0, math.sin((t_s + self.phase_s) / 200)) ** 0.5  # passing clouds
        return base + self.rng.gauss(0, 5)

    def waves(self, t_s: float, ev_on: bool) -> tuple[Waveform, Waveform]:
        """(mains CT, EV CT) waveforms at time t_s."""
        house_w = self.power_w(t_s)
        ev_w = EV_CHARGE_W if ev_on else 0.0
        mains_w = house_w + ev_w
        # Loads draw at a lagging power factor of about 0.95; export is in phase with -V (180 degrees).
        phase = -18.0 if mains_w >= 0 else 180.0
        mains = Waveform(abs(mains_w) / MAINS_V / (0.95 if mains_w >= 0 else 1.0), phase_deg=phase,
                         harmonics=((3, 0.08, 20.0), (5, 0.04, 0.0)))
        ev = Waveform(ev_w / MAINS_V, phase_deg=-5.0)
        return mains, ev


class VirtualNode:
    """One virtual home: firmware, simulated board and load model, stepped in its own thread."""

    def __init__(self, root: Path, node_id: str, host: str, port: int, load: str, seed: int,
                 period_s: int = 10, log=None):
        self.node_id = node_id
        self.config = provision(root, node_id, host, port, period_s)
        self.secret = bytes.fromhex(self.config["secret_hex"])
        self.board = SimBoard(str(root), log=log)
        self.board.set_input(VOLTAGE_PIN, Waveform(MAINS_V), units_per_v=383.0, noise_uv=500)
        self.mains = self.board.set_input(MAINS_PIN, None, units_per_v=MAINS_RATING_A / 0.6, noise_uv=500)
        self.ev = self.board.set_input(EV_PIN, None, units_per_v=EV_RATING_A / 0.6, noise_uv=500)
        self.load = HouseholdLoad(load, seed)
        self.firmware = app.boot(self.board, fw="virtual")
        self._stop = threading.Event()
        self._thread = None
        self._t0 = time.monotonic()

    def step(self) -> None:
        relay = self.board.relay_pins.get(EV_RELAY_PIN)
        self.mains.wave, self.ev.wave = self.load.waves(time.monotonic() - self._t0, bool(relay and relay.on))
        self.firmware.step()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.node_id, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(0.05)

    def stop_measuring(self) -> None:
        """Produce no new messages but keep delivering the buffered ones (for a clean end of a run)."""
        self.firmware._next_measure = self.firmware._next_tele = self.firmware._next_health = float("inf")

    def stop(self) -> None:
        """Stop like a power cut: no clean disconnect, so the broker publishes the last will."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        link = getattr(self.firmware, "link", None)
        if link and link.client:
            link.client.close()


def load_of(i: int, load: str) -> str:
    """The load kind of home i: `load` itself, or with "mixed" a repeating mix (every 4th has PV)."""
    return load if load != "mixed" else ("mixed", "pv", "heatpump", "fridge")[i % 4]


def start_virtual_nodes(count: int, host: str, port: int, state_dir: Path, load: str = "mixed",
                        period_s: int = 10, log=None, started: bool = True) -> list[VirtualNode]:
    """Start `count` homes; with load "mixed" the homes get a mix of load kinds (some with PV)."""
    nodes = []
    for i in range(count):
        node = VirtualNode(Path(state_dir) / f"vnode-{i + 1}", f"vnode-{i + 1}", host, port, load_of(i, load),
                           seed=i, period_s=period_s, log=log)
        if started:
            node.start()
        nodes.append(node)
    return nodes


def link_state(node: VirtualNode, host: str, port: int) -> str:
    """"connected to host:port", or why not (the reason the node's link last failed)."""
    link = node.firmware.link
    if link.up:
        return f"connected to {host}:{port}"
    error = link.last_error
    if isinstance(error, OSError):  # the firmware raises MicroPython-style OSError(errno)
        code = error.errno or (error.args[0] if error.args and isinstance(error.args[0], int) else None)
        error = os.strerror(code) if code else error
    return f"cannot reach {host}:{port}: {error or 'connecting'}; retrying"


def run_virtual_nodes(count, host, port, state_dir, load, duration_s, console) -> int:
    """`gridhive node --virtual`: run until Ctrl-C or duration_s, printing what each node is doing."""
    if load not in LOADS:
        console.print(f"[red]unknown load {escape(repr(load))}[/]; choose from {', '.join(LOADS)}")
        return 2
    nodes = start_virtual_nodes(count, host, port, Path(state_dir), load,
                                log=lambda text: console.print(f"[dim]{escape(text)}[/]"))
    console.print(f"started {count} virtual node(s) → {host}:{port}; state in {state_dir}. Ctrl-C stops.")
    console.print("Register their secrets with the gateway: each node's config.json holds secret_hex.")
    t_end = time.monotonic() + duration_s if duration_s else None
    said: dict[str, str] = {}
    try:
        while t_end is None or time.monotonic() < t_end:
            time.sleep(1)
            for node in nodes:  # the firmware retries quietly: say when a node's link changes
                state = link_state(node, host, port)
                if state != said.get(node.node_id):
                    said[node.node_id] = state
                    console.print(f"{node.node_id}: {escape(state)}")
    except KeyboardInterrupt:
        pass
    for node in nodes:
        node.stop()
    return 0
