"""End to end with the real node firmware: virtual nodes (ghnode.app on a simulated board) talk to
the gateway through Mosquitto; readings are stored and acked out of their flash buffers, and a
relay command over HTTP is carried out by the firmware."""
import json

import pytest

from gwkit import GatewayThread, http, wait
from gridhive.hardware.virtual_node import start_virtual_nodes

pytestmark = pytest.mark.broker


def registry_toml(nodes) -> str:
    out = []
    for node in nodes:
        out += [f"[nodes.{node.node_id}]", f'secret_hex = "{node.secret.hex()}"', f'household = "home-{node.node_id}"',
                f"[[nodes.{node.node_id}.channels]]", "n = 1", 'name = "mains"', "rating_a = 60", "grid = true",
                f"[[nodes.{node.node_id}.channels]]", "n = 2", 'name = "ev"', "rating_a = 30",
                f"[[nodes.{node.node_id}.relays]]", "n = 0", 'name = "ev"']
    return "\n".join(out) + "\n"


def test_virtual_nodes_are_stored_acked_and_commanded(tmp_path, mosquitto):
    nodes = start_virtual_nodes(2, mosquitto.host, mosquitto.port, tmp_path / "nodes", load="ev", period_s=1,
                                started=False)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nid = "gw1"\ndata_dir = "{tmp_path / "data"}"\n[broker]\nport = {mosquitto.port}\n'
                      "[uplink]\nenabled = false\n[http]\nport = 0\n[ingest]\nack_batch_ms = 20\n"
                      + registry_toml(nodes))
    gwt = GatewayThread(config).start()
    try:
        for node in nodes:
            node.start()

        def stored_enough():
            stats = gwt.call(gwt.gw.stats)
            return stats if stats["accepted"].get("tele", 0) >= 6 else None
        stats = wait(stored_enough, 30, "telemetry from both virtual nodes", interval_s=0.2)
        assert stats["rejected_total"] == 0, stats["rejected"]
        assert {"evt", "health"} <= set(stats["accepted"])  # the reboot event and health reports
        wait(lambda: all(n.firmware.buf.depth() <= 1 for n in nodes), 15, "acks to empty the flash buffers")
        status, body = http("POST", gwt.url("/api/nodes/vnode-1/relays/0"), {"action": "on", "timeout_s": 10})
        assert status in (200, 409), body  # 409: the firmware refused (e.g. min_off_time), with its reason
        result = body if status == 200 else body["result"]
        assert result["cid"] == 1 and result["relay"] == 0 and (status == 200) == (result["state"] == "on")
        nodes_view = http("GET", gwt.url("/api/nodes"))[1]
        assert {n["node"]: n["online"] for n in nodes_view} == {"vnode-1": True, "vnode-2": True}
        assert all(n["fw"] == "virtual" for n in nodes_view)
        row = json.loads(gwt.call(lambda: gwt.gw.storage.db.execute(
            "SELECT body FROM message WHERE kind='tele' ORDER BY seq DESC LIMIT 1").fetchone()[0]))
        assert [c["n"] for c in row["ch"]] == [1, 2] and row["vrms_mv"] > 200_000
    finally:
        for node in nodes:
            node.stop()
        gwt.stop()
