"""State faults lose nothing: a lost state.db, gc beyond what the database knows, a locks
directory removed under a running apply, corrupt rows. Real SQLite files (or the PostgreSQL
leg's database), the real CLI, real processes; every refusal is checked to change nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reconciler import tasks
from reconciler.cli import app
from reconciler.errors import LockTimeout
from tests.support.cli import reconciler as cli
from tests.support.cli import start
from tests.support import statesql
from tests.support.serveproc import Server
from tests.support.specs import mirror as mirror_spec
from tests.test_tasks import start_holder

SNAPSHOT = """\
---
apiVersion: reconciler/v1
kind: Snapshot
metadata: {name: s}
spec: {mirror: m}
"""
PUBLISH = """\
---
apiVersion: reconciler/v1
kind: Publish
metadata: {name: pub}
spec:
  distribution: stable
  components: {main: s}
  signing: {skip: true}
"""
IS_DEB = lambda p: p.endswith(".deb")  # noqa: E731


class Root:
    """A root with one mirror, one snapshot and one publish, applied by the real CLI."""

    def __init__(self, tmp_path: Path, http_archive):
        self.root = tmp_path / "root"
        self.dir = tmp_path
        self.up = http_archive
        self.specs = self.write("specs", self.mirror() + SNAPSHOT + PUBLISH)

    def mirror(self, extra: str = "") -> str:
        return mirror_spec("m", self.up.url, self.up.key.public_armored, extra=extra)

    def write(self, name: str, text: str) -> Path:
        d = self.dir / name
        d.mkdir(exist_ok=True)
        (d / "all.yaml").write_text(text)
        return d

    def apply(self, specs: Path | None = None, *args: str) -> subprocess.CompletedProcess:
        return cli(self.root, "apply", "-f", str(specs or self.specs), *args)

    def pool_files(self) -> set[str]:
        return {p.name for p in (self.root / "pool" / "files").glob("*/*")}

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        return statesql.query(self.root, statement, params)


@pytest.fixture
def applied(tmp_path, http_archive) -> Root:
    root = Root(tmp_path, http_archive)
    out = root.apply()
    assert out.returncode == 0, out.stdout + out.stderr
    return root


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (typer's runner: the same code below the parser, faster);
    an exception that escapes it is a traceback an operator would see."""
    result = CliRunner().invoke(app, ["--root", str(root), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: a traceback, not an error message") from result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def refused(out: subprocess.CompletedProcess, *needles: str) -> str:
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text
    return text


# -- 1. an emptied or missing state.db is not a fresh root ---------------------------


def state_commands(root: Root) -> list[tuple[str, ...]]:
    return [("list", "mirrors"), ("show", "mirror", "m"), ("plan", "-f", str(root.specs)),
            ("apply", "-f", str(root.specs)), ("gc",), ("verify",), ("diff", "snapshot", "s", "s")]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("damage", ["emptied", "missing"])
def test_a_lost_state_db_beside_a_populated_pool_is_refused_by_every_command(applied, damage):
    pool_before = applied.pool_files()
    for name in ("state.db-wal", "state.db-shm"):
        (applied.root / name).unlink(missing_ok=True)
    if damage == "emptied":
        os.truncate(applied.root / "state.db", 0)
    else:
        (applied.root / "state.db").unlink()
    what = "is empty (0 bytes)" if damage == "emptied" else "is missing"
    for args in state_commands(applied):
        text = refused(run(applied.root, *args), what, "holds package files", "dists/stable/Release",
                       "Restore state.db from a backup", "to start over deliberately")
        assert "no mirrors" not in text
    serve = cli(applied.root, "serve", "--specs", str(applied.specs), "--listen", "127.0.0.1:0", timeout=60)
    refused(serve, what, "Restore state.db")
    assert applied.pool_files() == pool_before, "a refused command deleted pool files"
    assert (applied.root / "public" / "dists" / "stable" / "Release").is_file()
    if damage == "emptied":
        assert (applied.root / "state.db").stat().st_size == 0, "a refused command wrote into state.db"
    else:
        assert not (applied.root / "state.db").exists(), "a refused command created state.db"


@pytest.mark.sqlite_only
def test_published_trees_alone_are_evidence_and_a_deliberate_start_over_works(applied):
    (applied.root / "state.db").unlink()
    shutil.rmtree(applied.root / "pool")
    refused(cli(applied.root, "list", "mirrors"), "published trees exist", "dists/stable/Release")
    refused(cli(applied.root, "gc"), "published trees exist")
    # The documented way to start over: remove the pool and the published trees.
    for name in ("dists", "pool"):
        shutil.rmtree(applied.root / "public" / name)
    out = applied.apply()
    assert out.returncode == 0, out.stdout + out.stderr
    assert cli(applied.root, "verify").returncode == 0


def test_a_blank_database_with_its_schema_is_lost_state_too(applied):
    """A state.db that opens but holds no row at all (a wrong restore, a recreated file)."""
    applied.sql("DELETE FROM publish_sources")
    for table in ("publishes", "snapshots", "mirrors", "package_lists", "packages", "pool_files", "tasks",
                  "locks"):
        applied.sql(f"DELETE FROM {table}")
    before = applied.pool_files()
    refused(cli(applied.root, "gc"), "holds no objects", "holds package files")
    refused(cli(applied.root, "list", "mirrors"), "holds no objects")
    assert applied.pool_files() == before


def test_read_only_commands_never_create_a_root(tmp_path, http_archive):
    root = Root(tmp_path, http_archive)
    for args in (("list", "mirrors"), ("list", "snapshots", "--json"), ("list", "publishes")):
        out = run(root.root, *args)
        assert out.returncode == 0, out.stderr
        assert "has no state yet" in out.stderr and "nothing was created" in out.stderr
    assert json.loads(run(root.root, "list", "snapshots", "--json").stdout) == []
    out = run(root.root, "plan", "-f", str(root.specs), "--json")
    assert out.returncode == 0, out.stderr
    assert {c["op"] for c in json.loads(out.stdout)["changes"]} == {"create"}
    assert run(root.root, "verify").returncode == 0
    for args in (("show", "mirror", "m"), ("diff", "snapshot", "a", "b")):
        out = run(root.root, *args)
        assert out.returncode == 1 and "does not exist" in out.stderr and "has no state yet" in out.stderr
    assert not root.root.exists(), "a read-only command created the root"
    # An existing, empty directory stays empty as well.
    root.root.mkdir()
    assert run(root.root, "list", "mirrors").returncode == 0
    assert run(root.root, "plan", "-f", str(root.specs)).returncode == 0
    assert list(root.root.iterdir()) == []
    # The real command line too; and a genuinely fresh root still applies.
    assert cli(root.root, "list", "mirrors").returncode == 0 and list(root.root.iterdir()) == []
    out = root.apply()
    assert out.returncode == 0, out.stdout + out.stderr


# -- 2. gc never deletes more than the database can account for -----------------------


def plant(root: Root, content: bytes) -> str:
    """A file in the pool, correctly named by its SHA-256, that state.db never recorded."""
    sha = hashlib.sha256(content).hexdigest()
    path = root.root / "pool" / "files" / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return sha


def test_gc_deletes_only_recorded_files_and_reports_the_unrecorded(applied):
    narrowed = applied.write("specs", applied.mirror(extra="  filter: 'basesys'\n"))
    assert applied.apply(narrowed, "--force").returncode == 0
    stranger = plant(applied, b"a file some other state imported")
    recorded = {r[0] for r in applied.sql("SELECT sha256 FROM pool_files")}
    before = applied.pool_files()
    out = cli(applied.root, "gc")
    assert out.returncode == 0, out.stderr
    after = applied.pool_files()
    freed = before - after
    assert freed and freed <= recorded, "gc deleted a file state.db never recorded"
    assert stranger in after
    assert "left 1 file(s)" in out.stdout and "--include-unrecorded" in out.stdout
    assert cli(applied.root, "verify").returncode == 0
    out = cli(applied.root, "gc", "--include-unrecorded")
    assert out.returncode == 0, out.stderr
    assert stranger not in applied.pool_files()
    assert cli(applied.root, "verify").returncode == 0


def test_gc_refuses_when_the_database_names_nothing_but_the_pool_has_files(applied):
    applied.sql("DELETE FROM publish_sources")
    for table in ("publishes", "snapshots", "mirrors"):
        applied.sql(f"DELETE FROM {table}")
    before = applied.pool_files()
    for args in (("gc",), ("gc", "--dry-run"), ("gc", "--include-unrecorded")):
        refused(cli(applied.root, *args), "names no mirror and no snapshot", "restore it from a backup")
    assert applied.pool_files() == before


def test_files_an_interrupted_update_never_recorded_are_recorded_by_the_next(applied):
    """pool_files lags the pool by one batch: a killed update leaves files unrecorded;
    the next update of a mirror that wants them records them (gc can then collect them)."""
    wanted = applied.pool_files()
    applied.sql("DELETE FROM pool_files")
    applied.sql("UPDATE mirrors SET update_complete = 0")  # as an interrupted update leaves it
    applied.up.server.clear()
    assert applied.apply().returncode == 0
    assert applied.up.server.count(IS_DEB) == 0, "files already in the pool were downloaded again"
    assert {r[0] for r in applied.sql("SELECT sha256 FROM pool_files")} == wanted


# -- 3. a removed locks directory does not release a running apply --------------------


def test_a_removed_locks_directory_keeps_a_running_apply_locked(tmp_path, http_archive):
    root = Root(tmp_path, http_archive)
    specs = root.write("mirror-only", root.mirror())
    server = root.up.server
    slow = lambda p: p.endswith("/hello_2.10-2_amd64.deb")  # noqa: E731
    fast = lambda p: IS_DEB(p) and not slow(p)  # noqa: E731
    others = sum(1 for p in root.up.archive.root.glob("pool/main/**/*.deb")
                 if p.name.endswith(("_amd64.deb", "_all.deb")) and not slow("/" + p.name))
    server.throttle(slow, 150)  # about 7 s for its 1 KB; the other files land at once
    a = start(root.root, "apply", "-f", str(specs))
    try:
        assert server.wait_for(fast, others, timeout=30, done=True) and server.wait_for(slow, 1, timeout=30)
        # On PostgreSQL the locks are advisory locks with no directory: the rest must hold as well.
        shutil.rmtree(root.root / "locks", ignore_errors=True)
        env = {**os.environ, "RECONCILER_LOCK_TIMEOUT": "1"}
        second = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(root.root), "apply", "-f",
                                 str(specs)], capture_output=True, text=True, timeout=60, env=env)
        refused(second, "timed out waiting for lock mirror/m", "sync mirror m", f"pid {a.pid}")
        imported = root.pool_files()
        assert imported, "the running apply imported nothing yet"
        gc = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(root.root), "gc"],
                            capture_output=True, text=True, timeout=60, env=env)
        refused(gc, "timed out waiting for lock pool", "sync mirror m")
        assert imported <= root.pool_files(), "gc deleted files the running apply imported"
        waiter = start(root.root, "apply", "-f", str(specs))  # the default timeout: it waits for A
        server.reset()
        out_a, err_a = a.communicate(timeout=120)
        assert a.returncode == 0, out_a + err_a
        out_w, err_w = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, out_w + err_w
        assert "up to date" in out_w + err_w
    finally:
        for proc in (a, locals().get("waiter")):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    per_file = Counter(r.path for r in server.requests(IS_DEB))
    assert per_file and max(per_file.values()) == 1, per_file
    assert cli(root.root, "verify", "--deep").returncode == 0
    assert root.sql("SELECT count(*) FROM locks") == [(0,)]


def test_a_sigkilled_holder_leaves_no_lock_even_with_its_lock_file_gone(tmp_path):
    """The claim row of a dead holder is removed by the next claimant: crash safety holds
    for the second mechanism too."""
    holder = start_holder(tmp_path, "mirror/m", 600, tmp_path / "never")
    try:
        assert holder.stdout.readline().strip() == "locked"
        shutil.rmtree(tmp_path / "locks", ignore_errors=True)  # PostgreSQL: advisory locks, no directory
        with pytest.raises(LockTimeout, match="hold mirror/m"):
            tasks.run(tasks.Context(tmp_path, lock_timeout=0.5), "early", ["mirror/m"], lambda t: None)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    ctx = tasks.Context(tmp_path, lock_timeout=5)
    assert tasks.run(ctx, "after", ["mirror/m"], lambda t: "ran") == "ran"
    assert ctx.store().db.execute("SELECT count(*) FROM locks").fetchone()[0] == 0


# -- 4. semantically corrupt rows are errors naming the object -------------------------


CORRUPTIONS = {
    "mirror spec not JSON": ("UPDATE mirrors SET spec = '{not json'", "mirror/m: stored spec is not valid JSON"),
    "snapshot spec not a spec": ("UPDATE snapshots SET spec = '[1, 2]'", "snapshot/s: stored spec is not a valid"),
    "publish spec not a spec": ("UPDATE publishes SET spec = '{\"prefix\": 5}'",
                                "publish/pub: stored spec is not a valid"),
    "list blob": (("UPDATE package_lists SET ids = ?", (b"\x00\xff\x00\xff",)), "does not decode"),
    "package files": ("UPDATE packages SET files = '[[1' WHERE name = 'basesys'",
                      "stored files is not valid JSON"),
    "package files shape": ("UPDATE packages SET files = '[1]' WHERE name = 'basesys'",
                            "stored files are not a list of [path, size, sha256]"),
    "package fields": ("UPDATE packages SET fields = 'nope' WHERE name = 'basesys'",
                       "stored fields or files are not valid JSON"),
}
COMMANDS = {
    "list": lambda r: ["list", "mirrors"], "list-s": lambda r: ["list", "snapshots"],
    "list-p": lambda r: ["list", "publishes"], "show": lambda r: ["show", "snapshot", "s"],
    "plan": lambda r: ["plan", "-f", str(r.specs)], "apply": lambda r: ["apply", "-f", str(r.specs)],
    "verify": lambda r: ["verify"],
}
# Which commands must fail for each corruption (the others may succeed: they never read it).
MUST_FAIL = {
    "mirror spec not JSON": {"list", "plan", "apply", "verify"},
    "snapshot spec not a spec": {"list-s", "show", "plan", "apply", "verify"},
    "publish spec not a spec": {"list-p", "plan", "apply", "verify"},
    "list blob": {"verify"},
    "package files": {"verify"},
    "package files shape": {"verify"},
    "package fields": {"verify"},
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupt_row_is_an_error_naming_the_object(applied, case):
    statement, message = CORRUPTIONS[case]
    applied.sql(*statement) if isinstance(statement, tuple) else applied.sql(statement)
    for name, args in COMMANDS.items():
        out = run(applied.root, *args(applied))
        text = out.stdout + out.stderr
        if name in MUST_FAIL[case]:
            assert out.returncode == 1, (name, text)
        if out.returncode != 0:
            assert message in text and "restore state.db from a backup" in text, (name, text)


def test_the_api_answers_a_corrupt_row_with_a_json_500(applied):
    applied.sql(CORRUPTIONS["mirror spec not JSON"][0])
    server = Server(applied.root, "--specs", str(applied.specs), "--suspend").start()
    try:
        for path in ("/api/mirrors", "/api/mirrors/m"):
            response = server.get(path)
            assert response.status_code == 500
            body = response.json()
            assert body["error"] == "StateError" and "mirror/m: stored spec is not valid JSON" in body["message"]
    finally:
        server.stop()
    assert "Traceback" not in server.output
