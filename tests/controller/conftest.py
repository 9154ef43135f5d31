"""Controller fixtures: a real PostgreSQL server for the session, and `db_url`, which runs a test once
on SQLite and once on PostgreSQL (the two back ends must pass the same suite).

The server is Debian's `postgresql` package (`scripts/setup.sh --test` installs it): initdb into a fresh
directory, postgres on a free loopback port, one new database per test. PostgreSQL refuses to run as
root, so as root it runs as the `postgres` user the package creates.
"""
import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from gridhive.broker import free_port, wait_for_port


def postgres_bindir():
    """The newest /usr/lib/postgresql/<ver>/bin with initdb, or the directory of initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, trusted local access, no fsync."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="gridhive-pg-"))  # under /tmp: the postgres user can reach it
        self.data = self.root / "data"
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no `postgres` user to run PostgreSQL as "
                                   "(apt-get install postgresql creates it)") from None
            self.user = "postgres"
            shutil.chown(self.root, self.user)
        self._names = itertools.count(1)

    def _run(self, *args):
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self):
        self._run("initdb", "-D", str(self.data), "-U", "gridhive", "-A", "trust", "-E", "UTF8", "--no-sync")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-o", opts, "-w",
                  "-t", "60", "start")
        wait_for_port(self.port)

    def url(self, dbname="postgres"):
        return f"postgresql://gridhive@127.0.0.1:{self.port}/{dbname}"

    def new_database(self):
        import psycopg

        name = f"ctl_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self):
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    bindir = postgres_bindir()
    if bindir is None or importlib.util.find_spec("psycopg") is None:
        # Skipped on a developer's machine without it; in CI a missing back end is a failure.
        message = ("PostgreSQL or psycopg is not installed: run `scripts/setup.sh --test` "
                   "(apt-get install postgresql; pip install -e '.[test]')")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    return request.getfixturevalue("postgres_server").new_database()
