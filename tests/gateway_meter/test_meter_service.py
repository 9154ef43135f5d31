"""The meter inside the gateway: [meter] config, readings and gaps stored, each interval cross-checked.

The service logic runs on the real cores (signed node messages through the ingest core into SQLite,
MeterReadings into the same database) on a clock the test moves. The gateway process test puts it
all together: `gridhive gateway run`, Mosquitto, virtual nodes running the firmware, and a pymodbus
server emulating an SDM630 over TCP that first stops answering, then answers with exception replies.
"""
import asyncio
import logging
import math
import re
import threading
import time

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from gridhive.broker import free_port, free_ports
from gridhive.gateway.cli import app
from gridhive.gateway.config import ConfigError, load_config
from gridhive.gateway.ingest import ACCEPTED, Ingest, Limits
from gridhive.gateway.meter.poller import MeterReading
from gridhive.gateway.meter.service import MeterService
from gridhive.gateway.storage import Storage
from gridhive.hardware.virtual_node import start_virtual_nodes

from emulators import SDM630_VALUES, RisingEastron
from gwkit import T0_MS, GatewayProcess, NodeSim, secret, wait

S = 1000
INTERVAL_MS = 60 * S


def node_toml(node, household, secret_hex, grid_n=0, other_n=1):
    return "\n".join([
        f"[nodes.{node}]", f'secret_hex = "{secret_hex}"', f'household = "{household}"',
        f"[[nodes.{node}.channels]]", f"n = {grid_n}", 'name = "grid"', "rating_a = 63", "grid = true",
        f"[[nodes.{node}.channels]]", f"n = {other_n}", 'name = "ev"', "rating_a = 32", ""])


def write_config(tmp_path, meter: str, interval_s=60, nodes=None):
    """Household "home" has two nodes (a1, a2) with a grid CT each; "other" has b1."""
    nodes = nodes or [("a1", "home"), ("a2", "home"), ("b1", "other")]
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\nid = "gw1"\ndata_dir = "{tmp_path / "data"}"\n[uplink]\nenabled = false\n'
                    f"[storage]\ninterval_s = {interval_s}\n" + meter
                    + "".join(node_toml(n, h, secret(n).hex()) for n, h in nodes))
    return path


METER = ('[meter]\nkind = "sdm630"\nhousehold = "home"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
         "period_s = 10\nmax_bracket_s = 30\ncircuits_wait_s = 120\ntolerance_wh = 20\ntolerance_pct = 5\n")


# --- config ---------------------------------------------------------------------------------------

def test_the_meter_section_is_optional_and_read_with_defaults(tmp_path):
    assert load_config(write_config(tmp_path, ""), env={}).meter is None
    assert load_config(write_config(tmp_path, METER + "enabled = false\n"), env={}).meter is None
    meter = load_config(write_config(tmp_path, METER), env={}).meter
    assert (meter.kind, meter.household, meter.host, meter.port, meter.device_id) == ("sdm630", "home", "127.0.0.1",
                                                                                       502, 1)
    assert (meter.timeout_s, meter.retries, meter.baudrate, meter.serial_port) == (1.0, 3, 9600, None)
    env = {"GRIDHIVE_GATEWAY__METER__PORT": "1502", "GRIDHIVE_GATEWAY__METER__PERIOD_S": "2.5"}
    meter = load_config(write_config(tmp_path, METER), env=env).meter
    assert meter.port == 1502 and meter.period_s == 2.5


@pytest.mark.parametrize("change, key, words", [
    (("kind = \"sdm630\"\n", ""), "meter.kind", "missing"),
    (("kind = \"sdm630\"", "kind = \"sdm999\""), "meter.kind", "one of 'sdm120', 'sdm630', 'sunspec'"),
    (("transport = \"tcp\"", "transport = \"udp\""), "meter.transport", "one of 'tcp', 'rtu'"),
    (("host = \"127.0.0.1\"\n", ""), "meter.host", 'required when meter.transport = "tcp"'),
    (("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nserial_port = \"/dev/ttyUSB0\""), "meter.serial_port",
     "not used with"),
    (("transport = \"tcp\"\nhost = \"127.0.0.1\"", "transport = \"rtu\""), "meter.serial_port", "required when"),
    (("household = \"home\"", "household = \"nobody\""), "meter.household", "households: home, other"),
    (("period_s = 10", "period_s = 30"), "meter.max_bracket_s", "longer than meter.period_s"),
    (("period_s = 10", "period_s = 0.1"), "meter.period_s", "0.5-900"),
    (("device_id", "device_id = 0\n#"), "meter.device_id", "1-247"),
    (("host =", "hots = \"x\"\nhost ="), "meter.hots", "valid keys"),
])
def test_meter_errors_name_the_bad_key(tmp_path, change, key, words):
    text = METER + "device_id = 1\n"
    assert change[0] in text
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, text.replace(*change)), env={})
    assert e.value.key == key and words in str(e.value), str(e.value)


def test_check_config_summarises_the_meter(tmp_path):
    result = CliRunner().invoke(app, ["check-config", "--config", str(write_config(tmp_path, METER))], env={})
    assert result.exit_code == 0 and ("meter: sdm630 over Modbus TCP (127.0.0.1 port 502, unit 1) for household "
                                      "home, every 10 s") in result.output, result.output


def test_the_meter_household_needs_a_grid_channel(tmp_path):
    path = write_config(tmp_path, METER)
    path.write_text(path.read_text().replace("grid = true", "grid = false"))
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert e.value.key == "meter.household" and "no channel with grid = true" in str(e.value)


# --- the service on the real cores, with a clock the test moves ---------------------------------------

class Rig:
    """Storage + ingest core + MeterService as the gateway wires them, on a test clock."""

    def __init__(self, tmp_path, meter=METER, storage=None):
        self.cfg = load_config(write_config(tmp_path, meter), env={})
        self.now = T0_MS
        self.storage = storage or Storage(self.cfg.db_path)
        self.ingest = Ingest(self.cfg.registry, Limits(interval_ms=INTERVAL_MS), self.storage.is_known,
                             self.storage.load_tracks())
        self.flushes = []
        self.registry = CollectorRegistry()
        self.service = MeterService(self.cfg.meter, registry=self.cfg.registry, storage=self.storage,
                                    metrics_registry=self.registry, interval_ms=INTERVAL_MS, tracks=self.ingest.tracks,
                                    flush=lambda: self.flushes.append(self.now), clock_ms=lambda: self.now)
        self.sims = {}

    def tele(self, node, ts_ms, grid_in=0, grid_out=0, ev_in=0):
        """A node reading at ts_ms, received then and committed at once."""
        self.now = max(self.now, ts_ms)
        sim = self.sims.setdefault(node, NodeSim(node))
        topic, payload, _ = sim.tele(ts_ms, power_w=(500, 100), add_in_wh=(grid_in, ev_in), add_out_wh=(grid_out, 0))
        verdict = self.ingest.receive(topic, payload, ts_ms)
        assert verdict.outcome == ACCEPTED, verdict
        self.storage.commit([(verdict, ts_ms)], {node: self.ingest.tracks[node]})
        self.ingest.stored()

    def meter(self, ts_ms, import_wh=None, export_wh=None, gap=None):
        """A meter reading (or a gap) taken at ts_ms, in the slot that starts at the 10 s before it."""
        self.now = max(self.now, ts_ms)
        values = {} if gap else {"import_energy_wh": import_wh, "export_energy_wh": export_wh, "power_w": 1.0}
        self.service.on_reading(MeterReading(ts_ms - ts_ms % (10 * S), ts_ms, values, gap=bool(gap), reason=gap))

    def checks(self):
        return self.service.checks(0, T0_MS + 100 * INTERVAL_MS)

    def metric(self, name, **labels):
        return self.registry.get_sample_value(name, labels)


def linear(ts_ms, t0_ms, wh_per_min, base):
    return base + wh_per_min * (ts_ms - t0_ms) / INTERVAL_MS


def test_each_interval_is_checked_once_against_the_households_grid_circuits(tmp_path, caplog):
    rig = Rig(tmp_path)
    # Interval A = [T0, T0+60 s): a1 grid 45 Wh in / 5 out, a2 grid 10 in / 30 out: circuits net +20 Wh.
    # The EV channels and household "other" must not count. The meter (readings 3 s after every
    # 10 s) rises 60 Wh import / 40 Wh export in it: net +20 Wh, so no discrepancy.
    rig.meter(T0_MS - 7 * S, linear(T0_MS - 7 * S, T0_MS, 60, 1000), linear(T0_MS - 7 * S, T0_MS, 40, 500))
    for node in ("a1", "a2", "b1"):
        rig.tele(node, T0_MS)  # baselines, on the boundary: all their next energy is in A
    for k in range(6):
        ts = T0_MS + 3 * S + k * 10 * S
        rig.meter(ts, linear(ts, T0_MS, 60, 1000), linear(ts, T0_MS, 40, 500))
    rig.tele("a1", T0_MS + 30 * S, grid_in=20, ev_in=11)
    rig.tele("a1", T0_MS + 60 * S, grid_in=25, grid_out=5, ev_in=9)
    rig.tele("b1", T0_MS + 60 * S, grid_in=300)
    rig.tele("a2", T0_MS + 60 * S, grid_in=10, grid_out=30)
    assert rig.checks() == []  # the meter has no reading after A's end yet
    # Interval B = [T0+60 s, T0+120 s): the meter imports 260 Wh, the circuits 50.
    ts = T0_MS + 63 * S
    with caplog.at_level(logging.INFO, "gridhive.gateway.meter.service"):
        rig.meter(ts, linear(ts, T0_MS, 60, 1000), linear(ts, T0_MS, 40, 500))
        [a] = rig.checks()
        assert a == {"household": "home", "start_ms": T0_MS, "interval_ms": INTERVAL_MS, "status": "ok",
                     "meter_import_wh": 60, "meter_export_wh": 40, "circuits_import_wh": 55, "circuits_export_wh": 35,
                     "discrepancy_wh": 0, "discrepancy_pct": 0.0, "circuits_complete": True,
                     "circuits": {"a1/grid": [45, 5], "a2/grid": [10, 30]}, "checked_ms": ts}
        assert rig.flushes == [ts]  # pending node messages were committed before the circuits were read
        assert rig.metric("gridhive_gateway_meter_checks_total", status="ok") == 1
        assert rig.metric("gridhive_gateway_meter_interval_energy_wh", source="meter", direction="export") == 40
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

        for k in range(1, 6):
            t = ts + k * 10 * S
            rig.meter(t, linear(t, T0_MS + INTERVAL_MS, 260, 1060), linear(t, T0_MS, 40, 500))
        rig.tele("a1", T0_MS + 120 * S, grid_in=50)
        rig.tele("a2", T0_MS + 120 * S, grid_out=20)
        t = ts + 60 * S
        rig.meter(t, linear(t, T0_MS + INTERVAL_MS, 260, 1060), linear(t, T0_MS, 40, 500))
    a_again, b = rig.checks()
    assert a_again == a
    assert (b["status"], b["meter_import_wh"], b["meter_export_wh"]) == ("discrepancy", 260, 40)
    assert (b["circuits_import_wh"], b["circuits_export_wh"], b["discrepancy_wh"]) == (50, 20, 190)
    assert b["discrepancy_pct"] == pytest.approx(190 * 100 / 300)
    assert rig.metric("gridhive_gateway_meter_discrepancy_wh") == 190
    assert rig.metric("gridhive_gateway_meter_checks_total", status="discrepancy") == 1
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "household home" in warning and "meter net +220 Wh (import 260, export 40)" in warning
    assert "circuits net +30 Wh" in warning and "discrepancy +190 Wh (63.3 %), over max(20 Wh, 5 %)" in warning
    assert rig.service.status()["last_check"] == b


def test_a_meter_gap_across_a_boundary_and_a_silent_node(tmp_path, caplog):
    rig = Rig(tmp_path)
    rig.meter(T0_MS - 2 * S, 1000.0, 500.0)
    for node in ("a1", "a2"):
        rig.tele(node, T0_MS)
    # Interval [T0, T0+60 s): the meter answers nothing from T0+1 s on. Its end has no reading within
    # max_bracket_s (30 s), so once that has passed its meter side is a gap.
    for k in range(9):
        rig.meter(T0_MS + (1 + 10 * k) * S, gap="timeout")
    for node in ("a1", "a2"):
        rig.tele(node, T0_MS + 62 * S, grid_in=7)
    assert rig.checks() == []  # at T0+81 s a reading within 30 s after the end could still come
    rig.meter(T0_MS + 91 * S, gap="exception_6")
    [gap] = rig.checks()
    assert (gap["status"], gap["meter_import_wh"], gap["discrepancy_wh"]) == ("meter_gap", None, None)
    # 7 Wh over 62 s, 60 s of them in the interval: 6.77 -> 7 (largest remainder) each.
    assert (gap["circuits_import_wh"], gap["circuits_complete"]) == (14, True)
    stored = rig.service.readings(T0_MS - 10 * S, T0_MS + 100 * S)
    assert [r["reason"] for r in stored] == [None] + ["timeout"] * 9 + ["exception_6"]
    assert rig.metric("gridhive_gateway_meter_checks_total", status="meter_gap") == 1
    assert math.isnan(rig.metric("gridhive_gateway_meter_discrepancy_wh"))

    # The meter is back at T0+102 s (1 Wh/s import), a2 stays silent. [T0+60 s, T0+120 s) has no meter
    # reading near its start: a gap. [T0+120 s, T0+180 s) has a meter figure; both wait circuits_wait_s
    # (120 s) after their end for a2, then go ahead marked incomplete.
    rig.tele("a1", T0_MS + 122 * S, grid_in=9)
    rig.tele("a1", T0_MS + 182 * S, grid_in=9)
    with caplog.at_level(logging.WARNING, "gridhive.gateway.meter.service"):
        for k in range(21):
            ts = T0_MS + (102 + 10 * k) * S
            rig.meter(ts, 1000.0 + (ts - T0_MS) / S, 500.0)
            assert len(rig.checks()) == 1 + (ts >= T0_MS + 240 * S) + (ts >= T0_MS + 300 * S), ts
    gap, gap2, late = rig.checks()
    assert (gap2["status"], gap2["circuits_complete"]) == ("meter_gap", False)
    assert (late["status"], late["circuits_complete"], late["circuits"]["a2/grid"]) == ("discrepancy", False, [0, 0])
    # a1's 9 Wh from T0+122 s to T0+182 s: 58 s of 60 in this interval -> 9 Wh (largest remainder).
    assert (late["meter_import_wh"], late["meter_export_wh"], late["circuits_import_wh"]) == (60, 0, 9)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "discrepancy +51 Wh" in warning and "circuits incomplete" in warning

    # A restart continues after the last checked interval: nothing is checked twice.
    again = Rig(tmp_path, storage=rig.storage)
    again.now = T0_MS + 400 * S
    again.meter(again.now, 1400.0, 500.0)
    assert again.checks()[:3] == [gap, gap2, late] and len(again.checks()) == 4


# --- the gateway process with a real SDM630 emulator -------------------------------------------------

IMPORT_W, EXPORT_W, INTERVAL_S = 18000, 3600, 10


class MeterServer:
    """A pymodbus TCP server emulating an SDM630, on its own event loop thread."""

    def __init__(self, emulator):
        self.emu, self.port = emulator, free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sdm630", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.emu.serve_tcp(self.port), self.loop).result(10)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.emu.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.mark.broker
def test_the_gateway_process_reads_an_sdm630_and_cross_checks_each_interval(tmp_path, mosquitto):
    values = {**SDM630_VALUES, 0x48: 100.0, 0x4A: 50.0}  # kWh: float32 resolves ~0.01 Wh here
    server = MeterServer(RisingEastron(values, IMPORT_W, EXPORT_W))
    nodes = start_virtual_nodes(2, mosquitto.host, mosquitto.port, tmp_path / "nodes", load="mixed", period_s=1,
                                started=False)
    http_port, = free_ports(1)
    meter = (f'[meter]\nkind = "sdm630"\nhousehold = "home"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
             f"port = {server.port}\nperiod_s = 1\ntimeout_s = 0.3\nretries = 1\nretry_base_s = 0.05\n"
             "max_bracket_s = 30\ncircuits_wait_s = 30\ntolerance_wh = 20\ntolerance_pct = 5\n")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nid = "gw1"\ndata_dir = "{tmp_path / "data"}"\n[broker]\nport = {mosquitto.port}\n'
                      f"[uplink]\nenabled = false\n[http]\nport = {http_port}\n[ingest]\nack_batch_ms = 20\n"
                      f"[storage]\ninterval_s = {INTERVAL_S}\n" + meter
                      + "".join(node_toml(n.node_id, "home", n.secret.hex(), grid_n=1, other_n=2) for n in nodes))
    gw = GatewayProcess(config, tmp_path)
    try:
        gw.start(http_port)
        for node in nodes:
            node.start()
        wait(lambda: (gw.get("/api/meter")["last_reading"] or {}).get("gap") is False, 15, "a first meter reading")

        # The meter stops answering, then answers every request with exception 6 (busy): gaps, while
        # ingest goes on.
        tele_before = gw.get("/api/stats")["accepted"].get("tele", 0)
        server.emu.silent = True
        time.sleep(2.5)
        server.emu.silent, server.emu.busy_replies = False, 10 ** 9
        time.sleep(2.5)
        server.emu.busy_replies = 0
        assert gw.get("/api/stats")["accepted"].get("tele", 0) >= tele_before + 5  # 2 nodes at 1/s for 5 s
        gap_reasons = {r["reason"] for r in gw.get(f"/api/meter/readings?start_ms=0&end_ms={2 ** 62}") if r["gap"]}
        assert {"timeout", "exception_6"} <= gap_reasons, gap_reasons
        assert gw.proc.poll() is None and gw.get("/api/meter")["counters"]["gap:timeout"] >= 1

        def first_checked():
            checks = gw.get(f"/api/meter/checks?start_ms=0&end_ms={2 ** 62}")
            return next((c for c in checks if c["status"] != "meter_gap"), None)
        check = wait(first_checked, 3 * INTERVAL_S + 15, "an interval's cross-check", interval_s=0.5)
        start = check["start_ms"]

        # The meter's figures: its registers rose at IMPORT_W / EXPORT_W (±1 Wh: rounding and the
        # few ms between reading a register and time-stamping the reading).
        assert abs(check["meter_import_wh"] - IMPORT_W * INTERVAL_S / 3600) <= 1, check
        assert abs(check["meter_export_wh"] - EXPORT_W * INTERVAL_S / 3600) <= 1, check
        # The circuits' figures: the two grid CTs' interval energies as the gateway stored them.
        energy = gw.get(f"/api/energy?start_ms={start}&end_ms={start + 1}")
        grid = {(f"vnode-{i}", 1) for i in (1, 2)}
        rows = [r for r in energy["circuits"] if (r["node"], r["ch"]) in grid]
        assert check["circuits_import_wh"] == sum(r["import_wh"] for r in rows)
        assert check["circuits_export_wh"] == sum(r["export_wh"] for r in rows)
        assert check["circuits"] == {f"{r['node']}/grid": [r["import_wh"], r["export_wh"]] for r in rows} | {
            f"{n}/grid": [0, 0] for n, _ in grid - {(r["node"], r["ch"]) for r in rows}}
        meter_net = check["meter_import_wh"] - check["meter_export_wh"]
        circuits_net = check["circuits_import_wh"] - check["circuits_export_wh"]
        assert check["discrepancy_wh"] == meter_net - circuits_net and check["circuits_complete"]
        throughput = check["meter_import_wh"] + check["meter_export_wh"]
        assert check["discrepancy_pct"] == pytest.approx(abs(check["discrepancy_wh"]) * 100 / throughput)
        # 18 kW in, 3.6 kW out at the meter; the homes' CTs see well under 2.5 kW either way: over the tolerance.
        assert abs(check["discrepancy_wh"]) > max(20, 0.05 * throughput) and check["status"] == "discrepancy"

        m = gw.metrics()
        assert m[("gridhive_gateway_meter_checks_total", (("status", "discrepancy"),))] >= 1
        assert m[("gridhive_gateway_meter_gaps_total", (("reason", "timeout"),))] >= 1
        assert m[("gridhive_gateway_meter_gaps_total", (("reason", "exception_6"),))] >= 1
        assert m[("gridhive_gateway_meter_request_errors_total", (("reason", "exception_6"),))] >= 2  # retried
        assert m[("gridhive_gateway_meter_up", ())] == 1
        log = gw.log.read_text()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start / 1000))
        line = re.search(rf"WARNING .*meter cross-check household home, interval {stamp}Z.*", log)
        assert line and f"discrepancy {check['discrepancy_wh']:+d} Wh" in line.group(0), log[-3000:]
        assert gw.proc.poll() is None and gw.stop() == 0
    finally:
        for node in nodes:
            node.stop()
        gw.stop()
        server.stop()
