"""Declarative lifecycle with real processes: owners, renames, protect, guards against bad upstreams."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.support import examples, statesql
from tests.support.cli import reconciler
from tests.support.specs import mirror as mirror_spec

SNAPSHOT = """\
---
apiVersion: reconciler/v1
kind: Snapshot
metadata: {{name: {name}{meta}}}
spec: {{mirror: {mirror}}}
"""


cli = reconciler


class World:
    def __init__(self, tmp_path: Path, http_archive):
        self.root = tmp_path / "root"
        self.dir = tmp_path
        self.up = http_archive

    def mirror(self, name="m", meta="", extra="") -> str:
        return mirror_spec(name, self.up.url, self.up.key.public_armored, meta=meta, extra=extra)

    def apply(self, text: str, *args: str, specs: str = "specs") -> subprocess.CompletedProcess:
        d = self.dir / specs
        d.mkdir(exist_ok=True)
        (d / "all.yaml").write_text(text)
        return cli(self.root, "apply", "-f", str(d), *args)

    def plan(self, specs: str = "specs", *args: str) -> dict:
        out = cli(self.root, "plan", "-f", str(self.dir / specs), "--json", *args)
        return {(c["kind"], c["name"]): c for c in json.loads(out.stdout)["changes"]}

    def rows(self, table: str) -> list[tuple]:
        return statesql.query(self.root, f"SELECT * FROM {table} ORDER BY 1")

    def names(self, kind: str) -> list[str]:
        return [i["name"] for i in json.loads(cli(self.root, "list", kind, "--json").stdout)]

    def rebuild(self, builder, *, date: datetime | None = None) -> None:
        opts = dict(distribution="stable", codename="lighthouse", origin="Example", sign_with=self.up.key)
        if date:
            opts["date"] = date
        builder.build(self.up.archive.root, **opts)


@pytest.fixture
def world(tmp_path, http_archive) -> World:
    return World(tmp_path, http_archive)


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_apply_prunes_only_its_own_objects(world):
    ok(world.apply(world.mirror("ours")))
    ok(world.apply(world.mirror("theirs"), "--owner", "team-b", specs="b"))
    assert world.names("mirrors") == ["ours", "theirs"]
    plan = world.plan()
    assert plan[("Mirror", "theirs")]["op"] == "unmanaged"
    ok(world.apply(world.mirror("ours")))
    assert world.names("mirrors") == ["ours", "theirs"]


def test_a_second_spec_source_under_one_owner_is_refused_and_drops_nothing(world):
    ok(world.apply(world.mirror("a")))
    before = world.rows("mirrors")
    out = world.apply(world.mirror("b"), specs="other")  # another directory, the same (default) owner
    assert out.returncode == 1
    assert "owner 'default' was last applied from dir:" in out.stderr + out.stdout
    assert "--take-over" in out.stderr + out.stdout
    assert world.rows("mirrors") == before  # a not dropped, b not created
    plan = cli(world.root, "plan", "-f", str(world.dir / "other"), "--detailed-exitcode")
    assert plan.returncode == 1 and "! error     owner/default" in plan.stdout
    ok(world.apply(world.mirror("b"), "--take-over", specs="other"))  # deliberately
    assert world.names("mirrors") == ["b"]
    ok(world.apply(world.mirror("b"), specs="other"))  # and from then on that source is the owner's


def test_the_same_specs_copied_elsewhere_in_one_git_checkout_stay_one_source(world, tmp_path):
    for clone in ("ci-run-1", "ci-run-2"):  # a CI job clones the repository into a new directory each run
        repo = tmp_path / clone
        (repo / ".git").mkdir(parents=True)
        (repo / ".git" / "config").write_text('[remote "origin"]\n\turl = https://user:secret@git.example/apt.git\n')
        (repo / "specs").mkdir()
        (repo / "specs" / "all.yaml").write_text(world.mirror("a"))
        ok(cli(world.root, "apply", "-f", str(repo / "specs")))
    assert world.rows("owners")[0][:2] == ("default", "git:https://git.example/apt.git:specs")


def test_a_name_held_by_another_owner_is_refused_unless_taken_over(world):
    ok(world.apply(world.mirror("shared", extra="  filter: hello\n"), "--owner", "team-a", specs="a"))
    before = world.rows("mirrors")
    out = world.apply(world.mirror("shared", extra="  filter: basesys\n"), "--owner", "team-b", specs="b")
    assert out.returncode == 1
    assert "mirror/shared belongs to owner 'team-a'" in out.stderr + out.stdout
    assert world.rows("mirrors") == before  # team-a's mirror was not rewritten
    ok(world.apply(world.mirror("shared", extra="  filter: basesys\n"), "--owner", "team-b", "--take-over",
                   specs="b"))
    shown = json.loads(cli(world.root, "show", "mirror", "shared", "--json").stdout)
    assert shown["owner"] == "team-b" and shown["filter"] == "basesys"
    assert world.plan("b", "--owner", "team-b")[("Mirror", "shared")]["op"] == "noop"


def test_rename_downloads_nothing_and_snapshots_follow(world):
    ok(world.apply(world.mirror("old") + SNAPSHOT.format(name="s", meta="", mirror="old")))
    world.up.server.clear()
    ok(world.apply(world.mirror("new", meta=", renamedFrom: old") +
                   SNAPSHOT.format(name="s2", meta=", renamedFrom: s", mirror="new")))
    assert world.names("mirrors") == ["new"] and world.names("snapshots") == ["s2"]
    assert world.up.server.count(lambda p: p.endswith(".deb")) == 0
    snap = json.loads(cli(world.root, "show", "snapshot", "s2", "--json").stdout)
    assert snap["mirror"] == "new" and snap["numPackages"] > 0
    assert world.plan()[("Mirror", "new")]["op"] == "noop"


def test_rename_to_a_taken_name_is_refused(world):
    ok(world.apply(world.mirror("a") + "---\n" + world.mirror("b")))
    before = world.rows("mirrors")
    out = world.apply(world.mirror("b", meta=", renamedFrom: a"))
    assert out.returncode == 1
    assert world.rows("mirrors") == before


def test_protected_mirror_is_never_dropped_even_with_force(world):
    ok(world.apply(world.mirror("m", meta=", protect: true")))
    before = world.rows("mirrors")
    (world.dir / "specs" / "all.yaml").write_text(SNAPSHOT.format(name="other", meta="", mirror="gone"))
    for args in ((), ("--force",)):
        out = cli(world.root, "apply", "-f", str(world.dir / "specs"), *args)
        assert out.returncode == 1 and "protected" in out.stderr
    assert world.rows("mirrors") == before


def test_removal_gate_keeps_the_list_unless_forced(world):
    ok(world.apply(world.mirror()))
    before = json.loads(cli(world.root, "show", "mirror", "m", "--json").stdout)["numPackages"]
    shrunk = examples.example_builder()
    for name in ("hello", "libgreet1", "toolbox", "tinymta", "greet-data"):
        shrunk.remove(name)
    world.rebuild(shrunk, date=datetime(2026, 1, 2, tzinfo=timezone.utc))
    planned = cli(world.root, "plan", "-f", str(world.dir / "specs"), "--detailed-exitcode")
    assert planned.returncode == 1 and "maxRemovalPercent" in planned.stdout  # a green plan never hides it
    assert cli(world.root, "plan", "-f", str(world.dir / "specs"), "--detailed-exitcode", "--force").returncode == 2
    out = world.apply(world.mirror())
    assert out.returncode == 1 and "maxRemovalPercent" in out.stdout + out.stderr
    assert json.loads(cli(world.root, "show", "mirror", "m", "--json").stdout)["numPackages"] == before
    ok(world.apply(world.mirror(), "--force"))
    assert json.loads(cli(world.root, "show", "mirror", "m", "--json").stdout)["numPackages"] < before


def test_upstream_replay_with_an_older_date_is_refused(world):
    newer = examples.example_builder()
    newer.add("hello", "2.11-1", depends="libgreet1 (>= 1.1)")
    world.rebuild(newer, date=datetime(2026, 2, 1, tzinfo=timezone.utc))
    ok(world.apply(world.mirror()))
    before = world.rows("mirrors")
    world.rebuild(examples.example_builder(), date=datetime(2026, 1, 15, tzinfo=timezone.utc))
    planned = cli(world.root, "plan", "-f", str(world.dir / "specs"), "--detailed-exitcode")
    assert planned.returncode == 1 and "replay" in planned.stdout
    out = world.apply(world.mirror())
    assert out.returncode == 1 and "replay" in out.stdout + out.stderr
    after = world.rows("mirrors")
    keep = slice(0, 10)  # id .. release_date: the list, the spec and the Release seen stay as they were
    assert after[0][keep] == before[0][keep][:6] + ("failed",) + before[0][keep][7:]
    assert "replay" in json.loads(cli(world.root, "show", "mirror", "m", "--json").stdout)["lastError"]
    ok(world.apply(world.mirror(), "--force"))


@pytest.mark.sqlite_only
def test_corrupted_state_database_is_a_clear_error(world, tmp_path):
    ok(world.apply(world.mirror()))
    for name in ("state.db-wal", "state.db-shm"):
        (world.root / name).unlink(missing_ok=True)
    (world.root / "state.db").write_bytes(b"this is not a database" * 100)
    for args in (("list", "mirrors"), ("verify",), ("plan", "-f", str(world.dir / "specs"))):
        out = cli(world.root, *args)
        assert out.returncode == 1, args
        assert "Traceback" not in out.stderr
        assert "state database" in out.stderr
