"""Throwaway PKI, a Mosquitto with a TLS listener and password logins, and `gridhive ctl serve` as a
process: the uplink security tests of the gateway and the controller.

Certificates are made here with `cryptography` (a fresh CA per test, so nothing can be trusted by
accident); passwords are hashed by `mosquitto_passwd` through the same code `gridhive gateway
mosquitto-config` uses.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gridhive.broker import free_port, mosquitto_path, stop_process, wait_for_port
from gridhive.gateway.mosquitto import write_password_file


class Pki:
    """A CA that issues server and client certificates, written as PEM files under `folder`."""

    def __init__(self, folder: Path, name: str = "test-ca"):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_file = folder / f"{name}.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, hosts=("127.0.0.1", "localhost"), client: bool = False) -> tuple[Path, Path]:
        """(cert file, key file) for `name`, valid for `hosts` (IP addresses or DNS names)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                      else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_file, key_file = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_file, key_file


class TlsBroker:
    """Mosquitto with only a TLS listener on a loopback port: no anonymous access, password logins
    from `users`, and client certificates required when `require_client_cert`."""

    def __init__(self, folder: Path, pki: Pki, users: dict[str, str], require_client_cert: bool = False,
                 hosts=("127.0.0.1", "localhost")):
        folder.mkdir(parents=True, exist_ok=True)
        self.host, self.port = "127.0.0.1", free_port()
        cert_file, key_file = pki.issue("broker", hosts)
        passwd = folder / "passwd"
        write_password_file(passwd, users)
        # Mosquitto started as root drops to the `mosquitto` user unless told to stay who we are.
        lines = [f"user {pwd.getpwuid(os.getuid()).pw_name}", "per_listener_settings false", "allow_anonymous false", f"password_file {passwd}",
                 "persistence false", "log_dest stderr", "log_type error", "log_type warning", "log_type notice",
                 f"listener {self.port} {self.host}", f"cafile {pki.ca_file}", f"certfile {cert_file}",
                 f"keyfile {key_file}"]
        if require_client_cert:
            lines.append("require_certificate true")
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = folder / "mosquitto.log"
        self.proc = None

    def start(self) -> "TlsBroker":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([mosquitto_path(), "-c", str(self.conf)], stdout=log, stderr=log)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, 5)
            self.proc = None


class ControllerProcess:
    """`gridhive ctl serve` as its own process on a SQLite database; the password comes from the
    environment, as an operator should pass it."""

    def __init__(self, workdir: Path, broker, *args, password: str, name: str = "controller"):
        self.db = f"sqlite:///{workdir / (name + '.db')}"
        self.log = workdir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gridhive.controller", "serve", "--db", self.db, "--broker",
                 f"{broker.host}:{broker.port}", "--client-id", name, *args], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "GRIDHIVE_CTL_PASSWORD": password, "PYTHONUNBUFFERED": "1", "COLUMNS": "500"})

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(15)
        return self.proc.returncode
