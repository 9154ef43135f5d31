"""The node app end to end on a simulated board, without a broker (the link stays down)."""
import json

from devtest import make_tmpdir
from ghnode import app, wire
from ghnode.hal_sim import Waveform
from ghnode.hal_sim import SimBoard

SECRET_HEX = "5a" * 32
SECRET = bytes([0x5A] * 32)


class Clock:
    def __init__(self):
        self.ms = 1000

    def __call__(self):
        return self.ms


def config(**over):
    cfg = {
        "node_id": "house-1", "secret_hex": SECRET_HEX,
        "wifi": {"ssid": "lan", "password": "pw"},
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "channels": [
            {"name": "mains_v", "pin": 39, "kind": "voltage"},
            {"name": "ev", "pin": 36, "rating_a": 30},
        ],
        "relays": [{"name": "ev", "pin": 25, "channel": "ev", "max_current_ma": 20000}],
        "telemetry": {"period_s": 10, "change_w": 0},
    }
    cfg.update(over)
    return cfg


def make_board(cfg=None, root=None, clock=None):
    root = root or make_tmpdir("node")
    if cfg is not None:
        with open(root + "/config.json", "w") as f:
            f.write(json.dumps(cfg))
    logs = []
    board = SimBoard(root, ticks_ms=clock or Clock(), unix_ms=lambda: 1700000000000, log=logs.append)
    board.logs = logs
    board.wifi("lan", "pw").out_of_range()  # the link stays down: no broker in these tests
    board.set_input(39, Waveform(230.0), units_per_v=383.0)
    board.set_input(36, Waveform(10.0, phase_deg=-30.0))
    return board


def run(node, board, seconds):
    for _ in range(seconds):
        board._ticks_ms.ms += 1000
        node.step()


def buffered(node):
    """(kind, message) of everything in the node's flash buffer, oldest first."""
    out = []
    for seq, entry in node.buf.pending():
        kind, payload = entry.split(b" ", 1)
        out.append((kind.decode(), wire.decode(payload, lambda n: SECRET)))
    return out


def deliver(node, kind, msg, secret=SECRET):
    node._on_message(wire.topic("house-1", kind).encode(), wire.encode(msg, secret))


def test_telemetry_is_signed_measured_and_buffered():
    board = make_board(config())
    node = app.boot(board)
    assert isinstance(node, app.Node)
    run(node, board, 11)
    tele = [m for k, m in buffered(node) if k == "tele"]
    assert tele, "no telemetry was buffered"
    ch = tele[-1]["ch"][0]
    # 10 A lagging 230 V by 30 degrees: P = 230 * 10 * cos(30) = 1991.9 W
    assert abs(ch["irms_ma"] - 10000) <= 50
    assert abs(ch["power_w"] - 1992) <= 10
    assert ch["dir"] == "import" and ch["pf_milli"] in (865, 866, 867)
    assert abs(tele[-1]["vrms_mv"] - 230000) <= 1200
    assert tele[-1]["synced"] and tele[-1]["ts_ms"] == 1700000000000
    seqs = [m["seq"] for k, m in buffered(node)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_energy_counters_survive_a_reboot_and_never_decrease():
    board = make_board(config())
    node = app.boot(board)
    run(node, board, 40)
    last = [m for k, m in buffered(node) if k == "tele"][-1]["ch"][0]["energy_in_wh"]
    assert last >= 15  # ~2 kW up to the last telemetry at ~30 s = 16.6 Wh
    node2 = app.boot(make_board(root=board.root, clock=board._ticks_ms))
    run(node2, node2.board, 1)
    first = [m for k, m in buffered(node2) if k == "tele" and m["boot"] == node2.boot_id][0]
    assert first["ch"][0]["energy_in_wh"] >= last
    assert node2.boot_id != node.boot_id
    old = [m["seq"] for k, m in buffered(node) if m["boot"] == node.boot_id]
    assert first["seq"] > max(old)


def test_only_a_verified_ack_for_this_boot_deletes_readings():
    board = make_board(config())
    node = app.boot(board)
    run(node, board, 11)
    depth = node.buf.depth()
    seq = buffered(node)[0][1]["seq"]
    ack = {"v": 1, "t": "ack", "node": "house-1", "boot": node.boot_id, "acks": [seq]}
    deliver(node, "ack", ack, secret=bytes(32))                            # forged
    deliver(node, "ack", dict(ack, boot=node.boot_id + 1))                 # replayed from another boot
    node._on_message(b"gh/house-1/ack", wire.encode(ack, SECRET)[:-5])     # garbled
    assert node.buf.depth() == depth
    assert node.counters["bad_acks"] == 3
    deliver(node, "ack", ack)
    assert node.buf.depth() == depth - 1
    deliver(node, "ack", ack)                                             # duplicate: no effect
    assert node.buf.depth() == depth - 1 and node.counters["acks"] == 1


def test_relay_command_reply_and_replay_protection():
    board = make_board(config())
    node = app.boot(board)
    run(node, board, 2)
    cmd = {"v": 1, "t": "cmd", "node": "house-1", "boot": node.boot_id, "cid": 1, "relay": 0, "action": "on"}
    deliver(node, "cmd", cmd)
    assert board.relay_pins[25].on
    deliver(node, "cmd", dict(cmd, action="off"))  # same cid again: a replay
    deliver(node, "cmd", dict(cmd, cid=2, action="off", boot=node.boot_id ^ 1))  # another boot
    deliver(node, "cmd", dict(cmd, cid=3, action="off"), secret=bytes(32))      # forged
    assert board.relay_pins[25].on
    assert node.counters["replayed_cmds"] == 2 and node.counters["bad_cmds"] == 1
    deliver(node, "cmd", dict(cmd, cid=4, action="dance"))
    replies = [m for k, m in buffered(node) if k == "reply"]
    assert [(r["cid"], r["ok"], r["state"]) for r in replies] == [(1, True, "on"), (4, False, "on")]
    assert replies[1]["reason"] == "bad_action"


def test_over_current_trips_the_relay_and_reports_it():
    board = make_board(config())
    node = app.boot(board)
    run(node, board, 1)
    deliver(node, "cmd", {"v": 1, "t": "cmd", "node": "house-1", "boot": node.boot_id, "cid": 1,
                          "relay": 0, "action": "on"})
    board.adcs[36].wave = Waveform(25.0)  # 25 A on a circuit limited to 20 A
    run(node, board, 2)
    assert not board.relay_pins[25].on
    trips = [m for k, m in buffered(node) if k == "evt" and m["kind"] == "relay_trip"]
    assert trips and trips[0]["reason"] == "over_current"
    # The trip latch survives a reboot: the relay powers up off.
    node2 = app.boot(make_board(root=board.root, clock=board._ticks_ms))
    assert node2.relays.relays[0].tripped == "over_current"


def test_watchdog_is_fed_only_while_the_loop_is_healthy():
    board = make_board(config())
    node = app.boot(board)
    run(node, board, 3)
    fed = board.watchdog.feeds
    assert fed == 3

    def broken():
        raise OSError("adc gone")
    node.reads = (broken, broken)
    run(node, board, app.MAX_FAILED_STEPS + 2)
    assert board.watchdog.feeds == fed + app.MAX_FAILED_STEPS - 1
    assert node.counters["step_errors"] == app.MAX_FAILED_STEPS + 2


def test_bad_config_means_safe_mode_with_relays_off_until_a_valid_config_appears():
    cfg = config()
    cfg["relays"][0]["min_on_ms"] = "soon"
    board = make_board(cfg)
    mode = app.boot(board)
    assert isinstance(mode, app.SafeMode)
    assert "relays[0].min_on_ms" in mode.error
    assert any("SAFE MODE" in line and "relays[0].min_on_ms" in line for line in board.logs)
    assert board.relay_pins[25].writes == [(0, False)]
    assert mode.link is not None  # identity and link settings are fine: the error is reported
    run(mode, board, 6)
    assert board.resets == 0 and board.watchdog.feeds == 6
    with open(board.root + "/config.json", "w") as f:
        f.write(json.dumps(config()))
    run(mode, board, 6)
    assert board.resets == 1


def test_missing_config_is_safe_mode_without_a_link():
    board = make_board()
    mode = app.boot(board)
    assert isinstance(mode, app.SafeMode) and mode.link is None
    assert "provision the node" in mode.error


def test_local_button_overrides_remote_commands():
    cfg = config()
    cfg["relays"][0]["button_pin"] = 0
    board = make_board(cfg)
    node = app.boot(board)
    run(node, board, 1)
    board.button_pins[0].press()
    run(node, board, 1)
    assert board.relay_pins[25].on
    deliver(node, "cmd", {"v": 1, "t": "cmd", "node": "house-1", "boot": node.boot_id, "cid": 1,
                          "relay": 0, "action": "off"})
    assert board.relay_pins[25].on
    reply = [m for k, m in buffered(node) if k == "reply"][-1]
    assert not reply["ok"] and reply["reason"] == "manual_override"
