"""`gridhive demo`: a small community on one machine, shown live.

Virtual homes run the real node firmware against a broker (Mosquitto when installed, else the
embedded amqtt broker); a bench receiver verifies and acknowledges what they publish, and the
table shows each home's grid power, voltage, EV charger relay and energy counters. Halfway
through, the demo switches one home's EV charger on with a signed relay command.
"""
import tempfile
import time
from pathlib import Path

from rich.live import Live
from rich.table import Table

from gridhive.broker import start_broker
from gridhive.hardware.receiver import NodeReceiver
from gridhive.hardware.virtual_node import start_virtual_nodes

TELEMETRY_PERIOD_S = 2
REFRESH_S = 0.5


def _table(nodes, snap, elapsed_s, duration_s, broker_kind, events) -> Table:
    table = Table(title=f"gridhive demo — {len(nodes)} homes, {broker_kind} broker, "
                        f"{elapsed_s:.0f}/{duration_s:.0f} s", caption=" · ".join(events[-3:]) or None)
    for col, justify in (("home", "left"), ("load", "left"), ("grid W", "right"), ("V", "right"),
                         ("EV relay", "center"), ("EV A", "right"), ("in Wh", "right"), ("out Wh", "right"),
                         ("readings", "right"), ("buffered", "right"), ("link", "center")):
        table.add_column(col, justify=justify)
    for node in nodes:
        latest = snap["latest"].get(node.node_id, {})
        tele, health = latest.get("tele"), latest.get("health")
        online = snap["online"].get(node.node_id, {}).get("online")
        if tele:
            mains, ev = tele["ch"][0], tele["ch"][1]
            relay = tele["relays"][0]
            row = [f"{mains['power_w']:+d}", f"{(tele['vrms_mv'] or 0) / 1000:.1f}",
                   ("[green]on[/]" if relay["on"] else "off") + (f" [red]{relay['trip']}[/]" if relay["trip"] else ""),
                   f"{ev['irms_ma'] / 1000:.1f}", str(mains["energy_in_wh"]), str(mains["energy_out_wh"])]
        else:
            row = ["…"] * 6
        table.add_row(node.node_id, node.load.kind, *row, str(len(snap["accepted"].get(node.node_id, []))),
                      str(health["buf_depth"]) if health else "…",
                      "[green]up[/]" if online else "[yellow]…[/]" if online is None else "[red]down[/]")
    return table


def run_demo(nodes: int, duration_s: float, broker: str, console) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gridhive-demo-"))
    console.print(f"starting the broker ({broker}) …")
    mqtt_broker = start_broker(broker, workdir / "broker")
    console.print(f"{mqtt_broker.kind} broker on {mqtt_broker.host}:{mqtt_broker.port}; "
                  f"starting {nodes} virtual homes (state in {workdir}) …")
    homes = start_virtual_nodes(nodes, mqtt_broker.host, mqtt_broker.port, workdir / "nodes", "mixed",
                                period_s=TELEMETRY_PERIOD_S, started=False)
    receiver = NodeReceiver(mqtt_broker.host, mqtt_broker.port, {n.node_id: n.secret for n in homes})
    receiver.start()
    receiver.connected.wait(10)
    for home in homes:
        home.start()
    events: list[str] = []
    commanded = False
    t0 = time.monotonic()
    last_print = 0.0
    try:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while (elapsed := time.monotonic() - t0) < duration_s:
                snap = receiver.snapshot()
                if not commanded and elapsed > duration_s / 2 and "tele" in snap["latest"].get("vnode-1", {}):
                    cid = receiver.command("vnode-1", 0, "on")
                    events.append(f"{elapsed:.0f}s: sent 'EV charger on' to vnode-1 (command {cid})")
                    commanded = True
                reply = snap["latest"].get("vnode-1", {}).get("reply")
                if reply and not any("replied" in e for e in events):
                    events.append(f"vnode-1 replied: {'ok' if reply['ok'] else reply.get('reason')}, "
                                  f"relay {reply['state']}")
                live.update(_table(homes, snap, elapsed, duration_s, mqtt_broker.kind, events))
                if not console.is_terminal and elapsed - last_print >= 10:
                    last_print = elapsed
                    console.print(f"{elapsed:.0f} s: {sum(len(v) for v in snap['accepted'].values())} readings "
                                  f"received from {len(snap['accepted'])} homes")
                time.sleep(REFRESH_S)
    except KeyboardInterrupt:
        pass
    console.print("\nstopping: delivering what the homes still have buffered …")
    for home in homes:
        home.stop_measuring()
    _drain(homes, receiver, timeout_s=5)
    for home in homes:
        home.stop()
    receiver.stop()
    mqtt_broker.stop()
    return _summary(homes, receiver.snapshot(), console)


def _drain(homes, receiver, timeout_s):
    """Give the homes' last buffered messages time to be delivered and acknowledged."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(h.firmware.buf.depth() for h in homes):
        time.sleep(0.1)


def _summary(homes, snap, console) -> int:
    """Check every home's messages arrived once and in order, or are still safe in its flash buffer."""
    lost = 0
    for home in homes:
        accepted = snap["accepted"].get(home.node_id, [])
        first = home.firmware.first_seq
        produced = home.firmware.seqs.peek() - first
        buffered = home.firmware.buf.depth()
        in_order = accepted == list(range(first, first + len(accepted)))
        if not in_order or len(accepted) + buffered != produced:
            lost += 1
            console.print(f"[red]{home.node_id}: {produced} messages produced, {len(accepted)} received, "
                          f"{buffered} buffered — some lost or out of order[/]")
        console.print(f"{home.node_id}: {len(accepted)} messages received once each and in order, "
                      f"{snap['duplicates'].get(home.node_id, 0)} re-sent duplicates dropped, "
                      f"{buffered} still buffered on the node")
    if snap["rejected"]:
        console.print(f"[yellow]rejected messages by reason: {snap['rejected']}[/]")
    console.print("[green]no reading lost[/]" if not lost else f"[red]{lost} home(s) lost readings[/]")
    return 0 if not lost else 1
