"""`gridhive ctl` on bad input: a clear message and exit 2, never a traceback, and a read-only command
never changes the database it reads (real SQLite files, the real PostgreSQL server, the real CLI)."""
import os
import sqlite3
import subprocess
import sys
import time

from typer.testing import CliRunner

from gridhive.controller.cli import app
from gridhive.controller.store import open_store
from gridhive.controller.uplink import parse_uplink

from ctl_helpers import batch, node_message, payload, wait_for

CTL = [sys.executable, "-m", "gridhive.cli", "ctl"]
UNREACHABLE_BROKER = "127.0.0.1:1"


def ctl(*args, cwd=None, timeout=30):
    """The real CLI, its output piped (not a terminal), with no COLUMNS to go by."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "GRIDHIVE_CTL_DB")}
    return subprocess.run(CTL + list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def execute(db_url, sql):
    if db_url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            cur = conn.execute(sql)
            return [tuple(r) for r in cur] if cur.description else []
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        return conn.execute(sql).fetchall()


def tables(db_url):
    if db_url.startswith("postgresql://"):
        return {r[0] for r in execute(db_url, "SELECT table_name FROM information_schema.tables "
                                              "WHERE table_schema = 'public'")}
    return {r[0] for r in execute(db_url, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def store_batch(db_url, items, gw="gw-1"):
    store = open_store(db_url)
    try:
        store.commit_batches([parse_uplink(gw, payload(batch(gw, 1, items)))], int(time.time() * 1000))
    finally:
        store.close()


def test_fleet_status_refuses_a_database_that_is_not_a_controllers_and_creates_nothing(db_url):
    # Another service's database, e.g. a gateway's: it must not get the controller's tables.
    execute(db_url, "CREATE TABLE readings (node TEXT, seq BIGINT)")
    execute(db_url, "INSERT INTO readings VALUES ('house-1', 1)")
    sqlite_file = db_url.removeprefix("sqlite:///") if db_url.startswith("sqlite:///") else None
    before = open(sqlite_file, "rb").read() if sqlite_file else None
    for args in (["fleet", "status", "--db", db_url], ["fleet", "status", "--db", db_url, "--json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "is not a controller database (no `gateways` table); point --db at the one " \
               "`gridhive ctl serve` uses" in result.output
        assert "Traceback" not in result.output
    assert tables(db_url) == {"readings"}
    assert execute(db_url, "SELECT node, seq FROM readings") == [("house-1", 1)]
    if sqlite_file:
        assert open(sqlite_file, "rb").read() == before


def test_fleet_status_leaves_an_empty_file_empty(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    out = ctl("fleet", "status", "--db", str(empty))
    assert out.returncode == 2 and "is not a controller database (no `gateways` table)" in out.stdout, out
    assert empty.stat().st_size == 0


def test_fleet_status_reads_a_controller_database_without_changing_it(db_url):
    store_batch(db_url, [node_message("house-1", 1)])
    before = execute(db_url, "SELECT gw, last_seen_ms, batches, items FROM gateways")
    result = CliRunner().invoke(app, ["fleet", "status", "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    assert execute(db_url, "SELECT gw, last_seen_ms, batches, items FROM gateways") == before
    # A controller database missing one of its tables is not completed behind the operator's back.
    execute(db_url, "DROP TABLE meta")
    result = CliRunner().invoke(app, ["fleet", "status", "--db", db_url])
    assert result.exit_code == 2 and "(no `meta` table)" in result.output, result.output
    assert "meta" not in tables(db_url)


def test_a_database_url_without_a_path_is_refused_by_every_command(tmp_path):
    for url in ("", "sqlite:///", "sqlite:///:memory:"):
        for args in (["fleet", "status"], ["serve", "--broker", UNREACHABLE_BROKER]):
            out = ctl(*args, "--db", url, cwd=tmp_path)  # old code: an empty fleet, or serve ran on
            assert out.returncode == 2, (url, args, out)
            assert f"--db: the database URL '{url}' has no file path" in out.stdout, out
            assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_missing_database_file_says_what_to_do(tmp_path):
    out = ctl("fleet", "status", "--db", "new.db", cwd=tmp_path)
    assert out.returncode == 2
    assert ("no controller database at new.db (start `gridhive ctl serve --db new.db` first, or check the path)"
            in out.stdout), out
    assert not (tmp_path / "new.db").exists()


def test_serve_does_not_create_a_missing_folder_except_the_defaults(tmp_path):
    typo = tmp_path / "nonexist" / "dir"
    out = ctl("serve", "--db", f"sqlite:///{typo / 'x.db'}", "--broker", UNREACHABLE_BROKER)
    assert out.returncode == 2, out
    assert f"--db: the folder {typo} does not exist: create it first, or check the path" in out.stdout
    assert not (tmp_path / "nonexist").exists()
    # The default, var/controller.db, is created with its folder: serve opens it, then keeps retrying
    # the broker until it is stopped.
    env = {k: v for k, v in os.environ.items() if k != "GRIDHIVE_CTL_DB"}
    proc = subprocess.Popen(CTL + ["serve", "--broker", UNREACHABLE_BROKER], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (tmp_path / "var" / "controller.db").exists() or proc.poll() is not None, 30,
                 "serve to create var/controller.db")
        assert proc.poll() is None, proc.communicate()[0]
        assert "gateways" in tables(f"sqlite:///{tmp_path / 'var' / 'controller.db'}")
    finally:
        proc.terminate()
        proc.wait(15)


def test_serve_refuses_an_unknown_log_level(tmp_path):
    db = tmp_path / "c.db"
    out = ctl("serve", "--db", str(db), "--broker", UNREACHABLE_BROKER, "--log-level", "loud")
    assert out.returncode == 2, out  # old code: taken as info, serve ran on
    assert "--log-level: unknown level 'loud': use debug, info, warning or error" in out.stdout
    assert not db.exists()


def test_a_client_certificate_without_its_key_names_the_options(tmp_path):
    pem = tmp_path / "client.pem"
    pem.write_text("not used\n")
    for given, missing in (("--cert-file", "--key-file"), ("--key-file", "--cert-file")):
        result = CliRunner().invoke(app, ["serve", "--db", str(tmp_path / "c.db"), "--broker", UNREACHABLE_BROKER,
                                          given, str(pem)], env={"COLUMNS": "300"})
        assert result.exit_code == 2, result.output
        assert f"{missing}: a client certificate needs both --cert-file and --key-file" in result.output
        assert "cert_file" not in result.output and "key_file" not in result.output
    assert not (tmp_path / "c.db").exists()


def test_the_fleet_table_is_whole_when_piped(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    store_batch(db, [node_message("house-1", 1, "health", fw="1.2.0")])
    out = ctl("fleet", "status", "--db", db)
    assert out.returncode == 0, out
    header = next(line for line in out.stdout.splitlines() if "┃" in line)
    for name in ("gateway", "node", "state", "firmware", "last seen", "seq", "messages", "heap", "RSSI",
                 "buffer", "note"):
        assert name in header, out.stdout
    assert "…" not in out.stdout, out.stdout


def test_a_health_error_holding_rich_markup_is_shown_verbatim(db_url):
    error = "cfg [/] [bold]wifi.ssid[/bold] [red"
    store_batch(db_url, [node_message("house-1", 1, "health", safe_mode=True, error=error, fw="[i]1.2[/i]")])
    result = CliRunner().invoke(app, ["fleet", "status", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert error in result.output and "[i]1.2[/i]" in result.output, result.output
    assert "safe-mode" in result.output
