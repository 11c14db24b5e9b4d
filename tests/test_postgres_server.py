"""The test suite's own PostgreSQL server (tests/support/postgres.py) and the --state switch.

The server must start, give isolated databases whose URLs psycopg accepts, and stop with the
session however the session ends: normally, on Ctrl-C, or killed. Sessions that must end are
inner pytest runs in a subprocess over a generated test file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support import postgres, statesql

psycopg = pytest.importorskip("psycopg")
ROOT = Path(__file__).resolve().parent.parent


def test_a_database_url_works_with_psycopg(pg_url):
    assert pg_url.startswith("postgresql://")
    with psycopg.connect(pg_url) as db:
        db.execute("CREATE TABLE t (x int)")
        db.execute("INSERT INTO t VALUES (1), (2)")
        assert db.execute("SELECT sum(x) FROM t").fetchone() == (3,)
        assert db.execute("SHOW fsync").fetchone() == ("off",)
        assert db.execute("SHOW listen_addresses").fetchone() == ("",)


def test_two_databases_are_isolated(postgres_server):
    first, second = postgres_server.new_database("same"), postgres_server.new_database("same")
    assert first != second
    with psycopg.connect(first) as db:
        db.execute("CREATE TABLE only_here (x int)")
    with psycopg.connect(second) as db:
        assert db.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
    with psycopg.connect(first) as db:
        assert db.execute("SELECT to_regclass('only_here')").fetchone() == ("only_here",)


def test_the_server_runs_unprivileged_on_a_socket_only(postgres_server):
    with postgres_server.connect() as db:
        assert db.execute("SELECT inet_server_addr()").fetchone() == (None,)   # a unix socket
    owner = (Path("/proc") / str(postgres_server.process.pid)).stat().st_uid
    assert owner != 0, "the postmaster runs as root"


def test_the_state_variable_follows_the_leg(request):
    state = os.environ.get("RECONCILER_STATE")
    if request.config.getoption("--state") == "postgres" or os.environ.get("RECONCILER_TEST_STATE") == "postgres":
        assert state and state.startswith("postgresql://")
    else:
        assert state is None, "the SQLite leg must run the default (no RECONCILER_STATE)"


def test_statesql_rewrites_placeholders_outside_literals_only(tmp_path):
    statesql.session(tmp_path).close()      # the schema, on whichever leg this runs
    assert statesql.query(tmp_path, "SELECT '?', ?, '50%'", ("x",)) == [("?", "x", "50%")]


# -- inner sessions -----------------------------------------------------------------------------

INNER = '''
import json, os, subprocess, sys, time
from pathlib import Path
import psycopg, pytest
from tests.support.statefixtures import shares_state

OUT = Path(os.environ["PG_PROBE_OUT"])

def record(key, value):
    with OUT.open("a") as f:
        f.write(json.dumps([key, value]) + "\\n")

@pytest.fixture(scope="module")
@shares_state
def module_root():
    return os.environ.get("RECONCILER_STATE")

@pytest.fixture(scope="module")
def module_archive():
    return "an upstream built once: its tests keep a database each"

def test_first(postgres_server):
    record("server", {"pidfile": str(postgres_server.pidfile), "pid": postgres_server.process.pid,
                      "dir": str(postgres_server.dir)})
    record("first", os.environ["RECONCILER_STATE"])
    with psycopg.connect(os.environ["RECONCILER_STATE"]) as db:
        db.execute("CREATE TABLE mine (x int)")

def test_second_in_a_child_process():
    url = subprocess.run([sys.executable, "-c", "import os; print(os.environ['RECONCILER_STATE'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    record("second", url)
    with psycopg.connect(url) as db:
        record("second_sees_first_table", db.execute("SELECT to_regclass('mine')").fetchone()[0])

def test_with_a_module_fixture(module_root):
    record("module", [module_root, os.environ["RECONCILER_STATE"]])

def test_with_a_module_fixture_that_shares_no_state(module_archive):
    record("plain_module", os.environ["RECONCILER_STATE"])

def test_with_the_other_module_fixture_too(module_archive):
    record("plain_module_again", os.environ["RECONCILER_STATE"])

@pytest.mark.sqlite_only
def test_sqlite_only():
    record("sqlite_only", "ran")

def test_hang():
    if os.environ.get("PG_PROBE_HANG"):
        record("hanging", True)
        time.sleep(120)
'''


def inner_session(tmp_path: Path, *, hang: bool = False) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "conftest.py").write_text("from tests.support.statefixtures import *  # noqa\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER))
    out = tmp_path / "probe.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PG_PROBE_OUT": str(out), "RECONCILER_TEST_STATE": "postgres"}
    env.pop("RECONCILER_STATE", None)
    if hang:
        env["PG_PROBE_HANG"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                             "-W", "ignore::pytest.PytestUnknownMarkWarning", str(tmp_path / "test_inner.py")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, out


def probe(out: Path) -> dict:
    return {key: value for key, value in map(json.loads, out.read_text().splitlines())} if out.exists() else {}


def wait_for(predicate, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def assert_stopped(server: dict) -> None:
    assert wait_for(lambda: not alive(server["pid"])), f"postmaster {server['pid']} outlived its session"
    assert not Path(server["pidfile"]).exists(), "postmaster.pid left behind: the server was not shut down"
    assert not Path(server["dir"]).exists(), "the server's directory was left behind"


@pytest.mark.skipif(postgres.missing() is not None, reason=str(postgres.missing()))
def test_the_postgres_leg_gives_each_test_a_database_and_stops_the_server(tmp_path):
    proc, out = inner_session(tmp_path)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    seen = probe(out)
    assert seen["first"] != seen["second"], "two tests shared a database"
    assert seen["second_sees_first_table"] is None, "a test saw the previous test's table"
    shared, during = seen["module"]
    assert shared == during and shared not in (seen["first"], seen["second"]), \
        "a test using a module fixture marked @shares_state must share the module's database"
    plain = {seen["plain_module"], seen["plain_module_again"]}
    assert len(plain) == 2 and not plain & {shared, seen["first"], seen["second"]}, \
        "a test using a module fixture that shares no state must get a database of its own"
    assert "sqlite_only" not in seen and "1 skipped" in output, output
    assert_stopped(seen["server"])


@pytest.mark.skipif(postgres.missing() is not None, reason=str(postgres.missing()))
def test_ctrl_c_stops_the_server(tmp_path):
    proc, out = inner_session(tmp_path, hang=True)
    try:
        assert wait_for(lambda: "hanging" in probe(out), timeout=60), proc.stdout.read() if proc.poll() is not None else ""
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt" in output, output
    assert_stopped(probe(out)["server"])


@pytest.mark.skipif(postgres.missing() is not None, reason=str(postgres.missing()))
def test_a_killed_session_takes_its_server_along(tmp_path):
    proc, out = inner_session(tmp_path, hang=True)
    try:
        assert wait_for(lambda: "hanging" in probe(out), timeout=60)
        proc.kill()                         # no teardown, no atexit: only the parent-death signal
        proc.communicate(timeout=30)
        server = probe(out)["server"]
        assert wait_for(lambda: not alive(server["pid"])), f"postmaster {server['pid']} outlived a killed session"
        assert not Path(server["pidfile"]).exists(), "the postmaster died without shutting down"
    finally:
        if proc.poll() is None:
            proc.kill()
        if "server" in (seen := probe(out)):
            if alive(seen["server"]["pid"]):          # the protection failed: leave no orphan behind
                os.kill(seen["server"]["pid"], signal.SIGINT)
                wait_for(lambda: not alive(seen["server"]["pid"]))
            subprocess.run(["rm", "-rf", seen["server"]["dir"]], check=False)


@pytest.mark.parametrize("leg", ["sqlite", "postgres"])
def test_statesql_reads_the_backend_the_code_uses(leg, tmp_path, monkeypatch, request):
    if leg == "postgres":
        monkeypatch.setenv("RECONCILER_STATE", request.getfixturevalue("pg_url"))
    else:
        monkeypatch.delenv("RECONCILER_STATE", raising=False)
    statesql.query(tmp_path, "CREATE TABLE t (name text, n int)")
    statesql.query(tmp_path, "INSERT INTO t VALUES (?, ?), (?, ?)", ("a%", 1, "b", 2))
    assert statesql.query(tmp_path, "SELECT name FROM t WHERE name LIKE 'a%' ORDER BY n") == [("a%",)]
    assert statesql.query(tmp_path, "SELECT sum(n) FROM t WHERE name <> ?", ("a%",)) == [(2,)]
    assert (tmp_path / "state.db").exists() == (leg == "sqlite")
