"""Security of gridhive's own MQTT client connections (the gateway's uplink, the controller).

One place for two things both sides need: a TLS client context built from files (checked when a
service starts, so a bad file is a start-up error naming the option), and connection failures
turned into a short reason to count and a message that says what to check. A wrong CA, a wrong
password or an unreachable broker never stops a service: it is counted, logged, and retried.
"""
from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH_CODES = (62, 64)
# Failures an operator must fix (logged at ERROR); the rest are outages that heal by themselves.
CONFIG_REASONS = ("tls_verify_failed", "tls_hostname_mismatch", "tls_error", "bad_credentials", "not_authorized")


class TlsSetupError(ValueError):
    """A TLS file that cannot be used; `option` is which one: ca_file, cert_file or key_file."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Options:
    """How the caller's user names each setting, so a message points at the right one
    (gateway.toml keys for the gateway, command-line options for the controller)."""
    ca_file: str = "the CA file"
    insecure: str = "the insecure option"
    credentials: str = "the user name and password"
    client_cert: str = "the client certificate"


@dataclass(frozen=True)
class ConnectFailure:
    reason: str   # short code to count by
    message: str  # what happened and what to check


def tls_context(ca_file=None, cert_file=None, key_file=None, insecure: bool = False) -> ssl.SSLContext:
    """A client context: TLS 1.2 or later, the server's certificate chain verified against `ca_file`
    (else the system's CA store) and its host name checked unless `insecure` (which skips only the
    name check, never the chain); a client certificate when `cert_file`/`key_file` are given."""
    if (cert_file is None) != (key_file is None):
        raise TlsSetupError("key_file" if key_file is None else "cert_file",
                            "a client certificate needs both cert_file and key_file")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
    except FileNotFoundError:
        raise TlsSetupError("ca_file", f"{ca_file} does not exist") from None
    except (ssl.SSLError, ValueError) as e:
        raise TlsSetupError("ca_file", f"{ca_file} holds no PEM CA certificate ({_ssl_text(e)})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        try:
            ctx.load_cert_chain(str(cert_file), str(key_file))
        except FileNotFoundError as e:
            raise TlsSetupError("cert_file" if str(e.filename) == str(cert_file) else "key_file",
                                f"{e.filename} does not exist") from None
        except (ssl.SSLError, ValueError) as e:
            raise TlsSetupError("cert_file", f"cannot use the client certificate {cert_file} with the key "
                                f"{key_file} ({_ssl_text(e)})") from None
    if insecure:
        ctx.check_hostname = False
    return ctx


def _ssl_text(e: Exception) -> str:
    return getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e)


def describe_exception(exc: BaseException, server: str, options: Options = Options()) -> ConnectFailure:
    """Name a failure to connect (socket, DNS or TLS handshake) to `server` ("host:port")."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = exc.verify_message or str(exc)
        if exc.verify_code in _NAME_MISMATCH_CODES:
            return ConnectFailure("tls_hostname_mismatch",
                                  f"the certificate of {server} is not for that host name ({text}): connect "
                                  f"by a name the certificate lists, or set {options.insecure}")
        return ConnectFailure("tls_verify_failed",
                              f"the certificate of {server} did not verify ({text}): is {options.ca_file} "
                              "the CA that signed the broker's certificate?")
    if isinstance(exc, ssl.SSLError):
        text = _ssl_text(exc)
        hint = f" (the broker wants {options.client_cert})" if "CERTIFICATE_REQUIRED" in str(text).upper() else ""
        return ConnectFailure("tls_error", f"the TLS handshake with {server} failed: {text}{hint}")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailure("refused", f"{server} refused the connection: is the broker running on that port?")
    if isinstance(exc, socket.gaierror):
        return ConnectFailure("dns", f"cannot resolve the host of {server}: {exc.strerror or exc}")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return ConnectFailure("timeout", f"{server} did not answer in time (a broker that is down, or a plain "
                                        "client on a TLS port, looks like this)")
    if isinstance(exc, ConnectionError):
        return ConnectFailure("connection_lost", f"{server} closed the connection while connecting ({exc}): "
                                                 "a TLS client on a plain port, or the reverse?")
    return ConnectFailure("network", f"cannot connect to {server}: {exc}")


def describe_connack(code, server: str, user: str | None, options: Options = Options()) -> ConnectFailure:
    """Name a CONNACK refusal; `code` is a paho ReasonCode (MQTT 5 values) or a 3.1.1 return code."""
    value = getattr(code, "value", code)
    who = f"user {user!r}" if user else "an anonymous client"
    if value in (4, 134):
        return ConnectFailure("bad_credentials", f"{server} refused {who}: bad user name or password "
                                                 f"(check {options.credentials})")
    if value in (5, 135):
        return ConnectFailure("not_authorized", f"{server} refused {who}: not authorized (Mosquitto answers "
                                                f"this to a wrong password too: check {options.credentials})")
    return ConnectFailure(f"refused_{value}", f"{server} refused the connection: {code}")


class FailureLog:
    """Logs a failure once when its reason first appears after a success (ERROR for what an operator
    must fix, WARNING for outages), at DEBUG while it repeats: a broker away for hours, or a wrong
    password retried every 30 s, must not fill the log. The caller counts every failure."""

    def __init__(self, logger: logging.Logger, name: str):
        self.logger, self.name = logger, name
        self._reported: set[str] = set()

    def failed(self, failure: ConnectFailure) -> None:
        level = logging.DEBUG
        if failure.reason not in self._reported:
            self._reported.add(failure.reason)
            level = logging.ERROR if failure.reason in CONFIG_REASONS else logging.WARNING
        self.logger.log(level, "%s: %s", self.name, failure.message)

    def connected(self) -> None:
        self._reported.clear()
