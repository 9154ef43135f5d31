"""The uplink over TLS with logins: gateway process -> Mosquitto (TLS listener, passwords, client
certificates) -> controller process, and what a wrong CA or a wrong password does (named, counted,
logged once; the gateway keeps ingesting and keeps its outbox)."""
import subprocess
import sys

import pytest

from gwkit import Client, GatewayProcess, NodeSim, now_ms, wait, write_config
from gridhive.broker import free_ports
from gridhive.controller.store import open_store
from gridhive.gateway.config import ConfigError, load_config
from tlskit import ControllerProcess, Pki, TlsBroker

GW_PASSWORD, CTL_PASSWORD = "gw-secret-1", "ctl-secret-2"


def uplink_config(path, local_port, tls_port, http_port=0, gateway_id="gw1", **uplink):
    """A gateway.toml whose uplink goes to `tls_port` with the given [uplink] keys."""
    write_config(path, broker_port=local_port, uplink_port=tls_port, http_port=http_port)
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in uplink.items())
    text = path.read_text().replace("tls = false\n", "tls = true\n" + lines).replace('id = "gw1"', f'id = "{gateway_id}"')
    path.write_text(text)
    return path


def test_uplink_tls_files_are_checked_at_start_up(tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("gw1", client=True)
    _, other_key = pki.issue("other", client=True)
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cfg = load_config(uplink_config(tmp_path / "ok.toml", 1883, 8883, ca_file=str(pki.ca_file), cert_file=str(cert),
                                    key_file=str(key), user="gw1", password="x"), env={})
    assert cfg.uplink.tls and not cfg.uplink.tls_insecure  # the host name is checked unless asked otherwise
    for uplink, key_name, words in [
        ({"ca_file": str(junk)}, "uplink.ca_file", "holds no PEM CA certificate"),
        ({"ca_file": str(pki.ca_file), "cert_file": str(cert), "key_file": str(other_key)}, "uplink.cert_file",
         "cannot use the client certificate"),
        ({"ca_file": str(tmp_path / "nope.pem")}, "uplink.ca_file", "does not exist"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(uplink_config(tmp_path / "bad.toml", 1883, 8883, **uplink), env={})
        assert e.value.key == key_name and words in str(e.value), str(e.value)
    # The process refuses to start, saying which key is wrong.
    done = subprocess.run([sys.executable, "-m", "gridhive.gateway", "run", "--config", str(tmp_path / "bad.toml")],
                          capture_output=True, text=True, timeout=60)
    said = " ".join(done.stderr.split())  # rich wraps long lines
    assert done.returncode == 2 and "uplink.ca_file:" in said and "nope.pem does not exist" in said, said


@pytest.mark.broker
def test_readings_reach_the_controller_through_a_tls_broker_with_logins(tmp_path, mosquitto):
    pki = Pki(tmp_path / "pki")
    broker = TlsBroker(tmp_path / "tls", pki, {"gw1": GW_PASSWORD, "controller": CTL_PASSWORD},
                       require_client_cert=True).start()
    gw_cert, gw_key = pki.issue("gw1", client=True)
    ctl_cert, ctl_key = pki.issue("controller", client=True)
    controller = ControllerProcess(tmp_path, broker, "--ca-file", str(pki.ca_file), "--cert-file", str(ctl_cert),
                                   "--key-file", str(ctl_key), "--user", "controller", password=CTL_PASSWORD)
    http_port, = free_ports(1)
    gw = GatewayProcess(uplink_config(tmp_path / "gateway.toml", mosquitto.port, broker.port, http_port,
                                      ca_file=str(pki.ca_file), cert_file=str(gw_cert), key_file=str(gw_key),
                                      user="gw1", password=GW_PASSWORD), tmp_path)
    nodes = Client(mosquitto.port, client_id="nodes")
    try:
        wait(lambda: "controller ready" in controller.text(), 20, "the controller to subscribe")
        assert "mqtts://" in controller.text()
        gw.start(http_port)
        sims = [NodeSim("n1"), NodeSim("n2")]
        sent = set()
        for i in range(20):
            for sim in sims:
                topic, payload, msg = sim.tele(now_ms() + i)
                nodes.publish(topic, payload)
                sent.add((sim.node, msg["seq"]))

        def stored():
            store = open_store(controller.db, create=False)
            try:
                return {(m["node"], m["seq"]) for m in store.messages() if m["t"] == "tele"}
            finally:
                store.close()
        wait(lambda: stored() == sent, 30, "every reading at the controller", interval_s=0.2)
        assert gw.get("/api/stats")["uplink_connected"] is True
        assert not any(k[0] == "gridhive_gateway_mqtt_connect_failures_total" for k in gw.metrics())
        assert gw.stop() == 0 and controller.stop() == 0
    finally:
        nodes.close()
        gw.stop()
        controller.stop()
        broker.stop()


@pytest.mark.broker
def test_a_wrong_ca_or_password_is_named_counted_and_logged_once(tmp_path, mosquitto):
    pki, wrong = Pki(tmp_path / "pki"), Pki(tmp_path / "wrong", "wrong-ca")
    broker = TlsBroker(tmp_path / "tls", pki, {"gw-ca": GW_PASSWORD, "gw-pw": GW_PASSWORD}).start()
    ports = dict(zip(("gw-ca", "gw-pw"), free_ports(2)))
    for name in ports:
        (tmp_path / name).mkdir()
    # Each in its own folder: its own database (data_dir is beside the config).
    bad_ca = GatewayProcess(uplink_config(tmp_path / "gw-ca" / "gateway.toml", mosquitto.port, broker.port, ports["gw-ca"], "gw-ca",
                                          ca_file=str(wrong.ca_file), user="gw-ca", password=GW_PASSWORD),
                            tmp_path / "gw-ca")
    bad_pw = GatewayProcess(uplink_config(tmp_path / "gw-pw" / "gateway.toml", mosquitto.port, broker.port, ports["gw-pw"], "gw-pw",
                                          ca_file=str(pki.ca_file), user="gw-pw", password="not-it"),
                            tmp_path / "gw-pw")
    nodes = Client(mosquitto.port, client_id="nodes")
    try:
        bad_ca.start(ports["gw-ca"])
        bad_pw.start(ports["gw-pw"])
        cases = ((bad_ca, "tls_verify_failed", "is uplink.ca_file the CA that signed the broker's certificate"),
                 (bad_pw, "not_authorized", "refused user 'gw-pw': not authorized"))
        for gw, reason, words in cases:
            key = ("gridhive_gateway_mqtt_connect_failures_total", (("link", "uplink"), ("reason", reason)))
            wait(lambda: gw.metrics().get(key, 0) >= 2, 20, f"two failed uplink connections ({reason})",
                 interval_s=0.25)
            errors = [line for line in gw.log.read_text().splitlines() if " ERROR " in line]
            assert len(errors) == 1 and words in errors[0], errors  # retried, logged once
        assert "check uplink.user / uplink.password" in bad_pw.log.read_text()
        # Both keep ingesting: a node's reading is stored, acknowledged and kept in the outbox.
        sim = NodeSim("n1")
        topic, payload, _ = sim.tele(now_ms())
        nodes.publish(topic, payload)
        for gw in (bad_ca, bad_pw):
            wait(lambda: gw.get("/api/stats")["stored_messages"] == 1, 10, "the reading to be stored")
            stats = gw.get("/api/stats")
            assert stats["uplink_connected"] is False and stats["outbox_items"] == 1
            assert gw.proc.poll() is None
        assert bad_ca.stop() == 0 and bad_pw.stop() == 0
    finally:
        nodes.close()
        bad_ca.stop()
        bad_pw.stop()
        broker.stop()
