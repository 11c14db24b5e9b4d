"""The registry of kinds: the dispatch sites iterate it, so a kind registered there is
loaded, planned, applied, observed and listed without any of them naming it; and no
dispatch on a kind's name in a string is left in the sources."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import kinds, locks, reconcile, tasks
from reconciler import plan as planner
from reconciler.loader import load_specs
from tests.support import toykind

ROOT = Path(__file__).parents[1]
TAGS = """\
apiVersion: reconciler/v1
kind: Tag
metadata: {name: first}
spec: {text: hello}
---
apiVersion: reconciler/v1
kind: Tag
metadata: {name: broken}
spec: {text: made from a mirror that fails}
---
apiVersion: reconciler/v1
kind: Mirror
metadata: {name: broken}
spec: {url: "file:///nonexistent/archive", distribution: stable, keyrings: [/nonexistent.gpg]}
"""


@pytest.fixture
def tag_kind():
    kinds.register(toykind.KIND)
    yield toykind.KIND
    kinds.unregister(toykind.KIND.name)


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The real CLI in a process of its own, with the toy kind registered before it is imported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", "from tests.support import toykind; toykind.main()",
                           "--root", str(root), *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def test_the_built_in_kinds_are_registered_in_dependency_order():
    assert kinds.names() == ["Mirror", "Snapshot", "Publish"]
    assert [k.word for k in kinds.all()] == ["mirror", "snapshot", "publish"]
    assert locks.KINDS == ("owner", "pool", "series", "mirror", "snapshot", "publish", "prefix")


def test_a_registered_kind_is_loaded_planned_after_the_others_and_applied(tmp_path, tag_kind):
    (tmp_path / "specs.yaml").write_text(TAGS)
    specs = load_specs([tmp_path / "specs.yaml"])
    assert sorted(specs.by_kind("Tag")) == ["broken", "first"]
    ctx = tasks.Context(tmp_path / "root", lock_timeout=5)

    first = reconcile.make_plan(ctx, specs, planner.Options(), with_probe=False)
    assert [(c.op, c.kind, c.name) for c in first.changes] == [
        ("create", "Mirror", "broken"), ("create", "Tag", "broken"), ("create", "Tag", "first")]

    report = reconcile.apply(ctx, specs, planner.Options(), echo=lambda line: None)
    assert "tag/first: created" in report.lines
    # what the tag is made from (Kind.requires) failed: apply skipped it, as it skips a snapshot of a failed mirror
    assert any(line.startswith("mirror/broken") for line in report.failures), report.failures
    assert any("tag/broken" in line and "mirror/broken" in line for line in report.failures), report.failures
    assert [r.name for r in toykind.Tags(ctx.store()).list()] == ["first"]

    again = reconcile.make_plan(ctx, specs, planner.Options(), with_probe=False)  # observe read the tag's row
    assert [(c.op, c.name) for c in again.changes if c.kind == "Tag"] == [("create", "broken"), ("noop", "first")]

    (tmp_path / "specs.yaml").write_text(TAGS.split("---")[2])  # the mirror only: the tag goes
    undeclared = reconcile.make_plan(ctx, load_specs([tmp_path / "specs.yaml"]), planner.Options(), with_probe=False)
    assert [(c.op, c.kind, c.name) for c in undeclared.changes] == [("create", "Mirror", "broken"),
                                                                     ("drop", "Tag", "first")]


def test_a_registered_kind_has_its_list_and_show_commands(tmp_path):
    (tmp_path / "specs.yaml").write_text(TAGS.split("---")[0])
    root = tmp_path / "root"
    planned = cli(root, "plan", "-f", str(tmp_path / "specs.yaml"))
    assert "+ create    tag/first: hello" in planned.stdout, planned.stdout + planned.stderr
    applied = cli(root, "apply", "-f", str(tmp_path / "specs.yaml"))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    listed = cli(root, "list", "tags")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["NAME", "TEXT", "first", "hello"]
    shown = cli(root, "show", "tag", "first", "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"text": "hello"' in shown.stdout
    assert "tags" in cli(root, "list", "--help").stdout


# Dispatch on a kind's name: `kind == "Mirror"`, `change.kind != "Publish"`, `kind in ("mirror", ...)`,
# a map from kind names to tables or models. The registry is where a kind is looked up.
NAMES = "|".join(n for k in kinds.all() for n in (k.name, k.word, k.plural))
DISPATCH = [
    re.compile(rf"""kind\s*[!=]=\s*["']({NAMES})["']"""),
    re.compile(rf"""kind\s+(not\s+)?in\s+[(\[{{]\s*["']({NAMES})["']"""),
    re.compile(rf"""\{{\s*["']({"|".join(kinds.names())})["']\s*:"""),  # {"Mirror": "mirrors", ...}
]
# What stays, and why: each compares with the one kind whose own rule it is.
ALLOWED = {
    # the spec models' own map, in the layer below the registry (kinds/ takes its models from there)
    ("reconciler/spec.py", 'KINDS = {"Mirror": MirrorDoc, "Snapshot": SnapshotDoc, "Publish": PublishDoc}'),
    ("reconciler/cli.py", 'if kind != "snapshot":'),  # `diff` compares snapshots only: its argument, not dispatch
    # the planner's cross-kind rules: renamed mirrors and snapshots are followed by the references to them,
    # and dropped snapshots free their mirrors
    ("reconciler/plan.py", 'dropped = {c.name for c in retention + drops if c.kind == "Snapshot" and c.op == "drop"}'),
    ("reconciler/plan.py", 'mirror_map = {c.detail["from"]: c.name for c in renames if c.kind == "Mirror"}'),
    ("reconciler/plan.py", 'snap_map = {c.detail["from"]: c.name for c in renames if c.kind == "Snapshot"}'),
}


def test_no_string_dispatch_on_kinds_is_left():
    found = []
    for path in sorted((ROOT / "reconciler").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("reconciler/debian/"):  # its `kind`s are query and dependency kinds, not these
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(p.search(line) for p in DISPATCH) and (rel, line.strip()) not in ALLOWED:
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "dispatch on kind names; look the kind up in reconciler.kinds instead:\n" + "\n".join(found)


def test_the_dispatch_check_finds_what_it_forbids():
    """The patterns above do match the dispatch that was replaced (so the test above can fail)."""
    replaced = ['    if change.kind == "Mirror":', '    elif change.kind != "Publish":',
                '    if not slash or kind not in ("mirror", "snapshot", "publish") or not name:',
                'TABLES = {"Mirror": "mirrors", "Snapshot": "snapshots", "Publish": "publishes"}',
                'KINDS = {"Mirror": MirrorDoc, "Snapshot": SnapshotDoc, "Publish": PublishDoc}']
    assert all(any(p.search(line) for p in DISPATCH) for line in replaced)
