"""`gridhive ctl serve` on a TLS broker with logins: bad TLS files stop it at start-up, naming the option;
a wrong CA or password is named, counted and logged once while it keeps retrying; the host-name check
is on unless --tls-insecure."""
import asyncio
import re
import time

import pytest
from typer.testing import CliRunner

from gridhive.controller.cli import app
from gridhive.controller.service import ControllerService
from gridhive.mqtt_security import tls_context
from tlskit import ControllerProcess, Pki, TlsBroker

from ctl_helpers import wait_for

CTL_PASSWORD = "ctl-secret"


def test_bad_tls_files_stop_serve_at_start_up_naming_the_option(tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, _ = pki.issue("controller", client=True)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    runner = CliRunner()
    for args, words in [(["--ca-file", str(junk)], "--ca-file: "),
                        (["--tls", "--cert-file", str(cert)], "--key-file: a client certificate needs both"),
                        (["--ca-file", str(tmp_path / "none.pem")], "none.pem does not exist")]:
        result = runner.invoke(app, ["serve", "--db", db, "--broker", "127.0.0.1:1", *args], env={"COLUMNS": "300"})
        assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "c.db").exists()  # stopped before anything was opened


@pytest.mark.broker
def test_a_wrong_ca_or_password_is_counted_and_logged_once_while_serve_keeps_retrying(tmp_path):
    pki, wrong = Pki(tmp_path / "pki"), Pki(tmp_path / "wrong", "wrong-ca")
    broker = TlsBroker(tmp_path / "tls", pki, {"controller": CTL_PASSWORD}).start()
    bad_ca = ControllerProcess(tmp_path, broker, "--ca-file", str(wrong.ca_file), "--user", "controller",
                               password=CTL_PASSWORD, name="bad-ca")
    bad_pw = ControllerProcess(tmp_path, broker, "--ca-file", str(pki.ca_file), "--user", "controller",
                               password="wrong", name="bad-pw")
    try:
        cases = ((bad_ca, "tls_verify_failed", "is --ca-file the CA that signed the broker's certificate"),
                 (bad_pw, "not_authorized", "refused user 'controller': not authorized"))
        for ctl, _, words in cases:
            wait_for(lambda: words in ctl.text(), 20, f"the controller to report {words!r}")
        time.sleep(3)  # its full-jitter backoff retries within 0.5 s, then 1 s, then 2 s
        for ctl, reason, words in cases:
            assert ctl.proc.poll() is None and "controller ready" not in ctl.text()
            assert ctl.stop() == 0
            text = ctl.text()
            assert len([line for line in text.splitlines() if " ERROR " in line]) == 1, text
            attempts = int(re.search(rf"connect_failed:{reason}=(\d+)", text).group(1))
            assert attempts >= 2, text
        assert "--user / --password" in bad_pw.text()
    finally:
        bad_ca.stop()
        bad_pw.stop()
        broker.stop()


@pytest.mark.broker
def test_the_host_name_is_checked_unless_tls_insecure(tmp_path):
    pki = Pki(tmp_path / "pki")
    # The broker's certificate names only broker.example; we reach it as 127.0.0.1.
    broker = TlsBroker(tmp_path / "tls", pki, {"controller": CTL_PASSWORD}, hosts=("broker.example",)).start()

    async def attempt(insecure):
        service = ControllerService(f"sqlite:///{tmp_path / f'c{insecure}.db'}", broker.host, broker.port,
                                    client_id=f"ctl-{insecure}", user="controller", password=CTL_PASSWORD,
                                    tls=tls_context(pki.ca_file, insecure=insecure))
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        try:
            await asyncio.wait_for(service.ready.wait(), 3)
        except TimeoutError:
            pass
        ready = service.ready.is_set()
        stop.set()
        await task
        return ready, service.counters()

    try:
        ready, counters = asyncio.run(attempt(False))
        assert not ready and counters.get("connect_failed:tls_hostname_mismatch", 0) >= 1, counters
        ready, counters = asyncio.run(attempt(True))
        assert ready and not any(k.startswith("connect_failed") for k in counters), counters
    finally:
        broker.stop()
