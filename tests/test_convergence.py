"""After apply, plan is empty: regressions where the next plan was not, through the real CLI.

Each test applies, changes something an operator changes (a rename, a flag, time
passing for a series), applies again, and then asks `plan --detailed-exitcode` for the
verdict a CI job would get: 0, nothing to do and nothing refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.cli import reconciler
from tests.support.specs import mirror as mirror_spec


def doc(kind: str, name: str, spec: str, meta: str = "") -> str:
    return f"---\napiVersion: reconciler/v1\nkind: {kind}\nmetadata: {{name: {name}{meta}}}\nspec: {spec}\n"


def publish(name: str, components: str, meta: str = "") -> str:
    return doc("Publish", name, f"{{distribution: {name}, components: {components}, signing: {{skip: true}}}}", meta)


class Specs:
    def __init__(self, tmp_path: Path, http_archive):
        self.root, self.dir, self.up = tmp_path / "root", tmp_path / "specs", http_archive
        self.dir.mkdir()

    def mirror(self, name: str = "m", meta: str = "") -> str:
        return mirror_spec(name, self.up.url, self.up.key.public_armored, meta=meta)

    def apply(self, text: str, *args: str, expect: int = 0) -> str:
        (self.dir / "all.yaml").write_text(text)
        out = reconciler(self.root, "apply", "-f", str(self.dir), *args)
        assert out.returncode == expect, out.stdout + out.stderr
        return out.stdout + out.stderr

    def converged(self) -> None:
        out = reconciler(self.root, "plan", "-f", str(self.dir), "--detailed-exitcode")
        assert out.returncode == 0, out.stdout + out.stderr

    def names(self, kind: str) -> list[str]:
        return [i["name"] for i in json.loads(reconciler(self.root, "list", kind, "--json", check=True).stdout)]

    def show(self, kind: str, name: str) -> dict:
        return json.loads(reconciler(self.root, "show", kind, name, "--json", check=True).stdout)


@pytest.fixture
def specs(tmp_path, http_archive) -> Specs:
    return Specs(tmp_path, http_archive)


def test_renaming_a_mirror_leaves_its_snapshots_converged(specs):
    specs.apply(specs.mirror("old") + doc("Snapshot", "s", "{mirror: old}"))
    specs.apply(specs.mirror("new", meta=", renamedFrom: old") + doc("Snapshot", "s", "{mirror: new}"))
    specs.converged()
    assert specs.show("snapshot", "s")["mirror"] == "new"


def test_renaming_a_snapshot_updates_merges_and_publishes(specs):
    base = specs.mirror() + doc("Snapshot", "s", "{mirror: m}")
    specs.apply(base + doc("Snapshot", "merged", "{snapshots: [s]}") + publish("p", "{main: s}"))
    renamed = specs.mirror() + doc("Snapshot", "s2", "{mirror: m}", ", renamedFrom: s")
    specs.apply(renamed + doc("Snapshot", "merged", "{snapshots: [s2]}") + publish("p", "{main: s2}"))
    specs.converged()
    assert specs.show("snapshot", "merged")["snapshots"] == ["s2"]
    assert specs.show("publish", "p")["components"] == {"main": "s2"}


@pytest.mark.parametrize("kind", ["Snapshot", "Publish"])
def test_protect_can_be_cleared_and_the_object_then_dropped(specs, kind):
    def text(meta: str, with_object: bool = True) -> str:
        out = specs.mirror() + doc("Snapshot", "s", "{mirror: m}", meta if kind == "Snapshot" else "")
        if kind == "Publish" and with_object:
            out += publish("p", "{main: s}", meta)
        return out

    specs.apply(text(", protect: true"))
    specs.converged()
    specs.apply(text(", protect: false"))  # the planner saw no change here before
    specs.converged()
    assert specs.show(kind.lower(), "s" if kind == "Snapshot" else "p")["protect"] is False
    if kind == "Snapshot":
        specs.apply(specs.mirror())
        assert specs.names("snapshots") == []
    else:
        specs.apply(text("", with_object=False))
        assert specs.names("publishes") == []
    specs.converged()


def test_a_series_rotates_under_its_latest_publish_without_refusals(specs):
    text = specs.mirror() + doc("Snapshot", "daily", "{mirror: m, series: {every: 1s, keep: 2}}") + \
        publish("p", "{main: daily@latest}")
    for _ in range(4):  # each member has the same content as the one before: the tree stays, the row moves
        specs.apply(text)
        members = specs.names("snapshots")
        assert len(members) <= 2
        assert specs.show("publish", "p")["components"] == {"main": members[-1]}
        time.sleep(1.1)
    assert len(set(members)) == 2


def test_a_failed_update_is_recorded_shown_and_retried_until_it_succeeds(specs):
    from tests.support import examples

    specs.apply(specs.mirror())
    newer = examples.example_builder()
    newer.add("hello", "2.12-1", depends="libgreet1 (>= 1.1)")
    newer.build(specs.up.archive.root, distribution="stable", sign_with=specs.up.key)
    specs.up.server.fail(lambda p: p.endswith(".deb"), 404, times=None)  # package files gone upstream
    out = specs.apply(specs.mirror(), expect=1)
    assert "failed" in out
    shown = specs.show("mirror", "m")
    assert shown["status"] == "failed" and "HTTP 404" in shown["lastError"]
    planned = reconciler(specs.root, "plan", "-f", str(specs.dir), "--detailed-exitcode")
    assert planned.returncode == 2 and "update" in planned.stdout
    specs.up.server.reset()
    specs.apply(specs.mirror())
    shown = specs.show("mirror", "m")
    assert shown["status"] == "ready" and shown["lastError"] is None
    specs.converged()


def publish_text(specs: Specs, extra: str = "") -> str:
    return specs.mirror() + doc("Snapshot", "s", "{mirror: m}") + doc(
        "Publish", "p", f"{{distribution: stable, components: {{main: s}}, signing: {{skip: true}}{extra}}}")


@pytest.mark.parametrize("damage", ["delete", "edit", "edit-packages", "delete-packages-xz"])
def test_a_damaged_release_is_planned_as_a_repair_and_rebuilt(specs, damage):
    specs.apply(publish_text(specs))
    release = specs.root / "public/dists/stable/Release"
    packages = specs.root / "public/dists/stable/main/binary-amd64/Packages"
    if damage == "delete":
        release.unlink()
    elif damage == "edit":
        release.write_text(release.read_text().replace("Suite: stable", "Suite: hostile"))
    elif damage == "edit-packages":  # the same size, other content: only a hash sees it
        packages.write_text(packages.read_text().replace("Package: hello", "Package: hellO"))
    else:
        packages.with_name("Packages.xz").unlink()
    planned = reconciler(specs.root, "plan", "-f", str(specs.dir), "--detailed-exitcode")
    assert planned.returncode == 2 and "rebuild it" in planned.stdout, planned.stdout
    specs.apply(publish_text(specs))
    assert "Suite: stable" in release.read_text() and "Package: hellO" not in packages.read_text()
    specs.converged()
    assert reconciler(specs.root, "verify").returncode == 0


def test_valid_until_is_renewed_once_less_than_half_is_left(specs):
    from reconciler.metrics import Metrics
    from reconciler.tasks import Context

    text = publish_text(specs, ", validFor: 8s")
    specs.apply(text)
    specs.converged()
    release = specs.root / "public/dists/stable/Release"
    first = release.read_text()
    metrics = Metrics(Context(specs.root)).render().decode()
    assert 'reconciler_publish_valid_until_seconds{publish="p"}' in metrics
    time.sleep(4.5)  # less than half of the 8 s validity is left now
    planned = reconciler(specs.root, "plan", "-f", str(specs.dir), "--detailed-exitcode")
    assert planned.returncode == 2 and "re-sign it" in planned.stdout
    specs.apply(text)
    assert release.read_text() != first
    specs.converged()


def signed_publish_text(specs: Specs, key) -> str:
    return specs.mirror() + doc("Snapshot", "s", "{mirror: m}") + doc(
        "Publish", "p", f"{{distribution: stable, components: {{main: s}}, signing: {{keyFile: {key.secret_armored}}}}}")


# Found by tests/test_property.py: the plan compared only the top Release with the
# database, so damage elsewhere in a tree was planned "up to date" while `verify`
# reported it, and apply left it broken.
@pytest.mark.parametrize("damage", ["delete InRelease", "delete Release.gpg", "edit main/binary-amd64/Packages.gz",
                                    "delete main/binary-amd64/Packages.gz", "edit main/binary-amd64/Release"])
def test_damage_below_the_release_is_planned_as_a_repair(specs, gpg_key, damage):
    text = signed_publish_text(specs, gpg_key)
    specs.apply(text)
    verb, name = damage.split(" ", 1)
    path = specs.root / "public/dists/stable" / name
    if verb == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes() + b"\n")
    planned = reconciler(specs.root, "plan", "-f", str(specs.dir), "--detailed-exitcode")
    assert planned.returncode == 2, planned.stdout
    specs.apply(text)
    specs.converged()
    assert reconciler(specs.root, "verify").returncode == 0


def test_the_context_clock_drives_series_and_valid_until(specs):
    """Time passes on `Context.clock`, in-process: no sleep, no test switch in a signature."""
    from datetime import datetime, timedelta, timezone

    from reconciler import plan as planner
    from reconciler import reconcile
    from reconciler.loader import load_specs
    from reconciler.tasks import Context

    clock = [datetime(2030, 5, 1, 12, tzinfo=timezone.utc)]
    ctx = Context(specs.root, clock=lambda: clock[0])
    (specs.dir / "all.yaml").write_text(
        specs.mirror() + doc("Snapshot", "hourly", "{mirror: m, series: {every: 1h, keep: 2}}")
        + doc("Publish", "p", "{distribution: stable, components: {main: hourly@latest}, validFor: 8d, "
                              "signing: {skip: true}}"))
    declared = load_specs([specs.dir])

    def converge() -> planner.Plan:
        assert reconcile.apply(ctx, declared, planner.Options(), echo=lambda line: None).ok
        after = reconcile.make_plan(ctx, declared, planner.Options())
        assert not after.has_changes and not after.errors, [c.text() for c in after.changes]
        return after

    converge()
    release = specs.root / "public/dists/stable/Release"
    assert "Valid-Until: Thu, 09 May 2030 12:00:00" in release.read_text()
    clock[0] += timedelta(days=5)  # less than half of 8 days left, and a new member due
    planned = reconcile.make_plan(ctx, declared, planner.Options())
    assert {(c.op, c.name) for c in planned.changes if c.changes_anything} >= {("create", "hourly-203005061200")}
    converge()
    assert "Valid-Until: Tue, 14 May 2030 12:00:00" in release.read_text()
    clock[0] += timedelta(minutes=30)  # the newest member is half an hour old on this clock
    assert not reconcile.make_plan(ctx, declared, planner.Options()).has_changes
    clock[0] += timedelta(minutes=30)
    converge()
    assert specs.names("snapshots") == ["hourly-203005061200", "hourly-203005061300"]


# Found by tests/test_property.py (shrunk by hand): a series declared `protect: true`
# gave its members protect; rotation then planned "drop beyond keep" (no error) and
# apply refused that drop on every run, even after the series was declared protect:
# false again. Now members follow the series' flag and retention keeps protected ones.
@pytest.mark.parametrize("later", [", protect: true", ""])
def test_a_protected_series_rotates_with_a_plan_that_apply_keeps(specs, later):
    from datetime import datetime, timedelta, timezone

    from reconciler import plan as planner
    from reconciler import reconcile
    from reconciler.loader import load_specs
    from reconciler.tasks import Context

    clock = [datetime(2030, 5, 1, 12, tzinfo=timezone.utc)]
    ctx = Context(specs.root, clock=lambda: clock[0])

    def apply(meta: str) -> None:
        (specs.dir / "all.yaml").write_text(
            specs.mirror() + doc("Snapshot", "daily", "{mirror: m, series: {every: 1d, keep: 1}}", meta))
        declared = load_specs([specs.dir])
        planned = reconcile.make_plan(ctx, declared, planner.Options())
        report = reconcile.apply(ctx, declared, planner.Options(), echo=lambda line: None)
        assert planned.errors or report.ok, (report.failures, [c.text() for c in planned.changes])
        after = reconcile.make_plan(ctx, declared, planner.Options())
        assert not after.has_changes and not after.errors, [c.text() for c in after.changes]

    apply(", protect: true")
    clock[0] += timedelta(days=1)
    apply(later)  # keep 1: the first member is beyond keep
