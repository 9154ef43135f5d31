"""MQTT brokers gridhive starts for itself: a Mosquitto process, or amqtt in-process when none is installed."""
import asyncio
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports: every socket stays bound until all are chosen, so the kernel
    cannot hand the same port out twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s} s")


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout_s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse_broker(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); ValueError naming the expected form."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def mosquitto_path() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


class MosquittoBroker:
    """A mosquitto process on a loopback port that can be stopped and started again on the same port."""

    kind = "mosquitto"

    def __init__(self, workdir: Path, port: int | None = None, persistent: bool = False):
        self.exe = mosquitto_path()
        if not self.exe:
            raise RuntimeError("mosquitto is not installed: `apt-get install mosquitto` (or run `make test`)")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        # persistent: sessions and their queued messages survive a restart, as on a gateway's broker.
        persistence = f"persistence true\npersistence_location {workdir}/\n" if persistent else "persistence false\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{persistence}"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
        )
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, 5)
        self.proc = None


class EmbeddedBroker:
    """amqtt running in a background thread: the demo's broker on machines without Mosquitto."""

    kind = "embedded"

    def __init__(self, port: int | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve():
            asyncio.set_event_loop(self._loop)
            self._broker = Broker(config, loop=self._loop)
            self._loop.run_until_complete(self._broker.start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="embedded-mqtt-broker", daemon=True)
        self._thread.start()
        # Broker.start() returns once its listener is bound, so no probe connection is needed (amqtt
        # would log one as a failed client session).
        if not started.wait(15):
            raise RuntimeError("the embedded MQTT broker did not start within 15 s")

    def stop(self) -> None:
        if self._loop and self._broker:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop = self._broker = self._thread = None


def start_broker(kind: str, workdir: Path):
    """Start the broker `kind` asks for: "mosquitto", "embedded", or "auto" (Mosquitto when installed)."""
    if kind == "auto":
        kind = "mosquitto" if mosquitto_path() else "embedded"
    broker = MosquittoBroker(workdir) if kind == "mosquitto" else EmbeddedBroker()
    broker.start()
    return broker
