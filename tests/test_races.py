"""Races that must be impossible, each with real concurrent processes.

The upstream server is slowed down per package request, so a mirror update holds its
lock long enough for the other process to arrive while it runs, deterministically
(the test waits for the server to have counted the first package request before it
starts the competitor).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from tests.support import statesql
from tests.support.cli import start as cli_start
from tests.support.specs import mirror as mirror_spec

SNAPSHOT = """\
---
apiVersion: reconciler/v1
kind: Snapshot
metadata: {{name: {name}}}
spec: {{mirror: {mirror}}}
"""
PUBLISH = """\
---
apiVersion: reconciler/v1
kind: Publish
metadata: {{name: pub}}
spec:
  distribution: stable
  components: {{main: {snapshot}}}
  signing: {{skip: true}}
"""
IS_DEB = lambda p: p.endswith(".deb")  # noqa: E731


start = cli_start


def start_py(root: Path, code: str) -> subprocess.Popen:
    prelude = f"import sys\nfrom reconciler import tasks\nctx = tasks.Context({str(root)!r})\n"
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out + err


class Race:
    def __init__(self, tmp_path: Path, http_archive):
        self.root = tmp_path / "root"
        self.dir = tmp_path
        self.up = http_archive

    def specs(self, version: str, text: str) -> Path:
        """Write version `version` of the specs: always into one directory, as an operator
        edits one spec set (another directory would be another spec source, refused under
        the same owner); a process started earlier has read its version already."""
        d = self.dir / "specs"
        d.mkdir(exist_ok=True)
        (d / "all.yaml").write_text(text)
        return d

    def mirror(self, name="m", extra="") -> str:
        return mirror_spec(name, self.up.url, self.up.key.public_armored, extra=extra)

    def apply(self, text: str, name="specs") -> None:
        out = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(self.root), "apply",
                              "-f", str(self.specs(name, text))], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return statesql.query(self.root, sql, params)

    def slow(self, seconds: float = 0.4) -> None:
        self.up.server.clear()
        self.up.server.slow(IS_DEB, seconds)

    def wait_for_downloads(self) -> None:
        assert self.up.server.wait_for(IS_DEB, 1, timeout=30)


@pytest.fixture
def race(tmp_path, http_archive) -> Race:
    return Race(tmp_path, http_archive)


def test_snapshot_creation_racing_a_mirror_drop_never_orphans_the_snapshot(race):
    race.apply(race.mirror())
    race.up.server.reset()
    # A: update the mirror (slow: new upstream files) and then snapshot it; B: drop the mirror.
    from tests.support import examples
    newer = examples.example_builder()
    newer.add("hello", "2.12-1", depends="libgreet1 (>= 1.1)", pad=50_000)
    newer.build(race.up.archive.root, distribution="stable", sign_with=race.up.key)
    race.slow(1.0)
    a = start(race.root, "apply", "-f", str(race.specs("a", race.mirror() + SNAPSHOT.format(name="s", mirror="m"))))
    race.wait_for_downloads()
    b = start_py(race.root, """
        from reconciler.actions import mirrors
        from reconciler.errors import ReconcilerError
        try:
            print(mirrors.drop(ctx, "m"))
        except ReconcilerError as exc:
            print("refused:", exc); sys.exit(1)
    """)
    (code_a, out_a), (code_b, out_b) = finish(a), finish(b)
    assert "Traceback" not in out_a + out_b
    snapshots = race.query("SELECT name, source_mirror FROM snapshots")
    mirrors_left = [r[0] for r in race.query("SELECT name FROM mirrors")]
    if snapshots:  # the snapshot won: the drop must have been refused, naming it
        assert mirrors_left == ["m"] and code_b == 1 and "snapshot/s" in out_b
    else:  # the drop won: the snapshot creation failed cleanly
        assert mirrors_left == [] and code_a == 1 and "does not exist" in out_a
    assert code_a == 0 or code_b == 0


def test_two_processes_dropping_one_mirror(race):
    race.apply(race.mirror("m") + "---\n" + race.mirror("other"))
    code = """
        from reconciler.actions import mirrors
        from reconciler.errors import NotFound
        try:
            print(mirrors.drop(ctx, "m"))
        except NotFound as exc:
            print("gone:", exc); sys.exit(3)
    """
    results = [finish(p) for p in [start_py(race.root, code) for _ in range(2)]]
    assert sorted(code for code, _ in results) == [0, 3]
    assert [r[0] for r in race.query("SELECT name FROM mirrors")] == ["other"]


def test_an_edit_during_a_long_update_is_not_lost(race):
    # Only files the edited spec does not need are slow: without the mirror lock the edit
    # would finish first and the stale update would then overwrite it.
    needed = ("hello_", "libgreet1_", "greet-data_", "basesys_")
    slow = lambda p: IS_DEB(p) and not any(n in p for n in needed)  # noqa: E731
    race.up.server.clear()
    race.up.server.slow(slow, 3.0)
    a = start(race.root, "apply", "-f", str(race.specs("a", race.mirror())))
    assert race.up.server.wait_for(slow, 1, timeout=30)
    edited = race.mirror(extra="  filter: 'hello'\n  filterWithDeps: true\n")
    b = start(race.root, "apply", "-f", str(race.specs("b", edited)))
    assert finish(a)[0] == 0
    code_b, out_b = finish(b)
    assert code_b == 0, out_b
    [(spec, count)] = race.query("SELECT m.spec, l.count FROM mirrors m JOIN package_lists l ON l.digest = m.list_digest")
    assert json.loads(spec)["filter"] == "hello"
    shown = json.loads(subprocess.run([sys.executable, "-m", "reconciler", "--root", str(race.root), "list",
                                       "mirrors", "--json"], capture_output=True, text=True).stdout)
    assert shown[0]["numPackages"] == count == 5  # hello x2, libgreet1 1.1, greet-data, basesys


def test_two_renames_onto_one_name(race):
    race.apply(race.mirror("a") + "---\n" + race.mirror("b"))
    code = """
        from reconciler.actions import mirrors
        from reconciler.errors import Refused
        try:
            print(mirrors.rename(ctx, sys.argv[1], "c"))
        except Refused as exc:
            print("refused:", exc); sys.exit(3)
    """
    procs = []
    for old in ("a", "b"):
        prelude = f"import sys\nsys.argv[1:] = [{old!r}]\n"
        procs.append(start_py(race.root, prelude + textwrap.dedent(code)))
    results = [finish(p) for p in procs]
    assert sorted(c for c, _ in results) == [0, 3]
    assert any("name is taken" in out for _, out in results)
    assert sorted(r[0] for r in race.query("SELECT name FROM mirrors")) in (["a", "c"], ["b", "c"])


def test_two_applies_of_the_same_specs_do_the_work_once(race):
    text = race.mirror() + SNAPSHOT.format(name="s", mirror="m") + PUBLISH.format(snapshot="s")
    specs = race.specs("same", text)
    race.slow(0.2)
    procs = [start(race.root, "apply", "-f", str(specs)) for _ in range(2)]
    results = [finish(p) for p in procs]
    assert [c for c, _ in results] == [0, 0], results
    per_file = Counter(r.path for r in race.up.server.requests(IS_DEB))
    assert per_file and max(per_file.values()) == 1, per_file
    assert race.query("SELECT count(*) FROM snapshots") == [(1,)]
    assert race.query("SELECT count(*) FROM publishes") == [(1,)]
    verify = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(race.root), "verify"],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout


def test_a_publish_another_apply_made_while_this_one_waited_is_not_a_move(race):
    """Both read "not published yet" before the lock; the second to get it finds the
    tree the first made at its own place: up to date, not "moved" (a refusal CI's
    PostgreSQL leg once hit by timing in the test above; deterministic here)."""
    import threading
    import time

    from reconciler import locks, tasks
    from reconciler.actions import publish
    from reconciler.loader import load_specs

    text = race.mirror() + SNAPSHOT.format(name="s", mirror="m")
    race.apply(text)
    doc = load_specs([race.specs("same", text + PUBLISH.format(snapshot="s"))]).publishes["pub"]
    holder_ctx = tasks.Context(race.root)
    session = holder_ctx.connect()
    results: list = []

    def one() -> None:
        try:
            results.append(publish.publish(tasks.Context(race.root), doc).line)
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            results.append(exc)

    try:
        with holder_ctx.locks.hold([locks.publish(".", "stable")], timeout=30, description="test holder",
                                   db=session):
            threads = [threading.Thread(target=one) for _ in range(2)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while race.query("SELECT count(*) FROM tasks WHERE name = 'publish pub' AND state = 'queued'") != [(2,)]:
                assert time.monotonic() < deadline, race.query("SELECT name, state FROM tasks")
                time.sleep(0.05)
    finally:
        session.close()
    for thread in threads:
        thread.join(60)
    assert all(isinstance(r, str) for r in results), results
    assert sorted("up to date" in r for r in results) == [False, True], results
    assert race.query("SELECT count(*) FROM publishes") == [(1,)]


def test_gc_during_apply_never_deletes_a_referenced_file(race):
    race.slow(0.3)
    a = start(race.root, "apply", "-f", str(race.specs("a", race.mirror() + SNAPSHOT.format(name="s", mirror="m"))))
    race.wait_for_downloads()
    gc = start(race.root, "gc")
    assert finish(a)[0] == 0
    code, out = finish(gc)
    assert code == 0, out
    verify = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(race.root), "verify", "--deep"],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
