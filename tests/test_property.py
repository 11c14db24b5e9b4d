"""Convergence as a property: whatever sequence of spec edits and world drift, apply converges.

A hypothesis `RuleBasedStateMachine` edits the specs an operator edits (mirror filters,
renames, plain/filter/merge/series snapshots, protect, publishes) and changes the world
under the root (upstream advances a day, a published file is deleted or edited, a pool
file is lost, time passes on the context's clock). After each step it applies through
the library in-process and checks the invariant:

- apply succeeds (no failure line, no refusal);
- the next plan has no change and no error (what `plan --detailed-exitcode` exits 0 on);
- `verify --deep` finds nothing;
- every few steps, the real `apt-get` installs a package from each publish.

After a drift step the plan before apply must show a change (a repair), or the drift
would be left in place. The upstream is the example archive served on 127.0.0.1 and
signed with a real gpg key; publishes are signed with another real key.

CI runs a few short derandomized examples; `RECONCILER_PROPERTY_EXAMPLES=N` runs N
(and `RECONCILER_PROPERTY_STEPS=M` makes each up to M steps long) to hunt for failures.
Each failure found becomes a plain regression test in tests/test_convergence.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from reconciler import plan as planner
from reconciler import reconcile, tasks
from reconciler.actions import maintenance
from reconciler.loader import load_specs
from tests.support import archive, examples, gpgkeys, statefixtures
from tests.support.aptclient import AptClient
from tests.support.server import ArchiveServer

EXAMPLES = int(os.environ.get("RECONCILER_PROPERTY_EXAMPLES", "3"))
STEPS = int(os.environ.get("RECONCILER_PROPERTY_STEPS", "8" if "RECONCILER_PROPERTY_EXAMPLES" not in os.environ
                           else "20"))
APT_EVERY = 4  # steps between apt-get checks (each costs about a second)
MIRROR_FILTERS = [None, "Priority (required)", "hello", "toolbox | mailnotify"]
INSTALLABLE = ("hello", "toolbox", "mailnotify", "basesys")
PREFIXES = [".", "debian"]  # publishes under one prefix share its pool/


class Keys:
    """The upstream's and the publisher's keys: made once per module (about a second each)."""

    upstream: gpgkeys.GpgKey
    signing: gpgkeys.GpgKey


@pytest.fixture(scope="module", autouse=True)
def keys(tmp_path_factory):
    Keys.upstream = gpgkeys.generate(tmp_path_factory.mktemp("gpg-up"), "Property Upstream")
    Keys.signing = gpgkeys.generate(tmp_path_factory.mktemp("gpg-sign"), "Property Signing")
    yield
    Keys.upstream.stop_agent()
    Keys.signing.stop_agent()


class States:
    """Where each example's root keeps its state. On the PostgreSQL leg the state is not per
    root (every root uses the test's one database), so each example gets a new database of
    its own: an example must not start from the objects the previous one left."""

    new: Callable[[str], str] | None = None


@pytest.fixture(scope="module", autouse=True)
def states(request):
    if statefixtures.state_mode(request.config) == "postgres":
        States.new = request.getfixturevalue("postgres_server").new_database
    yield
    States.new = None


def doc(kind: str, name: str, spec: dict, **meta) -> str:
    return json.dumps({"apiVersion": "reconciler/v1", "kind": kind, "metadata": {"name": name, **meta},
                       "spec": spec})


class World:
    """One example's upstream, root, clock and published-tree server; removed at teardown."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="reconciler-property-"))
        self.builder = examples.example_builder()
        self.day = 0
        self.build()
        self.upstream = ArchiveServer(self.dir / "up").start()
        (self.dir / "root/public").mkdir(parents=True)
        self.published = ArchiveServer(self.dir / "root/public").start()
        self.now = datetime.now(timezone.utc).replace(microsecond=0)
        self.specs = self.dir / "specs"
        self.specs.mkdir()
        self.state = States.new("property") if States.new else None  # None: SQLite under the root

    def build(self) -> None:
        self.builder.build(self.dir / "up", distribution="stable", sign_with=Keys.upstream,
                           date=archive.DEFAULT_DATE + timedelta(days=self.day))

    def context(self) -> tasks.Context:
        return tasks.Context(self.dir / "root", lock_timeout=10, clock=lambda: self.now, state=self.state)

    def close(self) -> None:
        self.upstream.stop()
        self.published.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Convergence(RuleBasedStateMachine):
    """Specs as plain data the rules edit; written out and applied after every step."""

    def __init__(self):
        super().__init__()
        self.world = World()
        self.mirrors: dict[str, dict] = {}  # name -> {"filter": ..., "renamedFrom": ...}
        self.snapshots: dict[str, dict] = {}  # name -> {"spec": {...}, "protect": bool, "renamedFrom": ...}
        self.publishes: dict[str, dict] = {}  # name -> {"source": snapshot or SERIES@latest, ...}
        self.counter = 0
        self.steps = 0
        self.history: list[str] = []

    def teardown(self) -> None:
        self.world.close()

    # ---- helpers -------------------------------------------------------------------------

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def text(self) -> str:
        w = self.world
        out = []
        for name, m in self.mirrors.items():
            spec = {"url": w.upstream.url, "distribution": "stable", "components": ["main"],
                    "architectures": ["amd64"], "keyrings": [str(Keys.upstream.public_armored)],
                    "maxRemovalPercent": 100}
            if m["filter"]:
                spec.update(filter=m["filter"], filterWithDeps=True)
            out.append(doc("Mirror", name, spec, **_meta(m)))
        for name, s in self.snapshots.items():
            out.append(doc("Snapshot", name, s["spec"], protect=s["protect"], **_meta(s)))
        for name, p in self.publishes.items():
            spec = {"prefix": p["prefix"], "distribution": p["distribution"], "components": {"main": p["source"]}}
            if p["signed"]:
                spec["signing"] = {"keyFile": str(Keys.signing.secret_armored)}
            else:
                spec["signing"] = {"skip": True}
            if p["validFor"]:
                spec["validFor"] = p["validFor"]
            out.append(doc("Publish", name, spec, protect=p["protect"]))
        return "\n---\n".join(out) + "\n"

    def load(self):
        (self.world.specs / "all.yaml").write_text(self.text())
        return load_specs([self.world.specs])

    def plan(self, specs, options: planner.Options = planner.Options()) -> planner.Plan:
        return reconcile.make_plan(self.world.context(), specs, options)

    def converge(self, what: str, *, drifted: bool = False, replace: frozenset[str] = frozenset()) -> None:
        """Apply (with `--replace` of `replace`) and check the invariant; with `drifted`,
        the plan first shows a repair."""
        self.history.append(what)
        specs = self.load()
        options = planner.Options(replace=replace)
        before = self.plan(specs, options)
        assert not before.errors, self.explain("plan has errors", before)
        if drifted:
            assert before.has_changes, self.explain("the drift is not planned as a change", before)
        lines: list[str] = []
        report = reconcile.apply(self.world.context(), specs, options, echo=lines.append)
        assert report.ok, self.explain("apply failed", before, lines)
        after = self.plan(specs)
        assert not after.errors and not after.has_changes, self.explain("not converged after apply", after, lines)
        problems = maintenance.verify(self.world.context(), deep=True)
        assert not problems, self.explain("verify --deep: " + "; ".join(problems), after, lines)
        self.steps += 1
        if self.steps % APT_EVERY == 0:
            self.check_apt()

    def explain(self, headline: str, the_plan: planner.Plan, lines: list[str] = ()) -> str:
        changes = "\n".join("  " + c.text() for c in the_plan.changes if c.op != "noop")
        return (f"{headline}\nsteps: {self.history}\nspecs:\n{self.text()}\nplan:\n{changes}\n"
                "apply:\n" + "\n".join("  " + line for line in lines))

    def check_apt(self) -> None:
        store = self.world.context().store()
        for name, row in ((r.name, r) for r in store.publishes.list()):
            snap = store.snapshots.get(row.sources["main"])
            names = {p.name for _id, p in store.packages.load(store.lists.ids(snap.list_digest))}
            target = next((n for n in INSTALLABLE if n in names), None)
            if target is None:
                continue
            signed = self.publishes[name]["signed"]
            option = f"signed-by={Keys.signing.public_keyring}" if signed else "trusted=yes"
            base = self.world.published.url + ("" if row.prefix == "." else f"/{row.prefix}")
            client = AptClient(self.world.dir / f"apt-{name}-{self.steps}",
                               f"deb [{option}] {base} {row.distribution} main")
            # The context's clock runs ahead of this machine's: the tree's Date is "in the future".
            result = client.run("-o", "Acquire::Check-Date=false", "update")
            assert result.returncode == 0 and "\nE: " not in "\n" + result.stderr, result.output
            client.run("-o", "Acquire::Check-Date=false", "install", "-y", "--download-only", target, check=True)
            assert any(f.startswith(f"{target}_") for f in client.downloaded()), client.downloaded()

    def plain_snapshots(self) -> list[str]:
        return sorted(n for n, s in self.snapshots.items() if not s["spec"].get("series"))

    def series(self) -> list[str]:
        return sorted(n for n, s in self.snapshots.items() if s["spec"].get("series"))

    def users(self, snapshot: str) -> list[str]:
        merges = [n for n, s in self.snapshots.items() if snapshot in s["spec"].get("snapshots", [])]
        pubs = [n for n, p in self.publishes.items() if p["source"].removesuffix("@latest") == snapshot]
        return merges + pubs

    def tree_files(self) -> list[Path]:
        """Published files to damage: every file of each tree's dists/ (by-hash names are
        hard links to the indexes, damaged with them)."""
        public = self.world.dir / "root/public"
        return sorted(p for p in public.rglob("dists/**/*") if p.is_file() and "by-hash" not in p.parts)

    # ---- rules: specs ---------------------------------------------------------------------

    @initialize()
    def start(self):
        self.mirrors["m0"] = {"filter": None}
        self.converge("mirror m0")

    @rule(filter=st.sampled_from(MIRROR_FILTERS), data=st.data())
    def set_mirror_filter(self, filter, data):
        name = data.draw(st.sampled_from(sorted(self.mirrors)))
        self.mirrors[name]["filter"] = filter
        self.converge(f"mirror {name} filter {filter!r}")

    @rule(data=st.data())
    def rename_mirror(self, data):
        old = data.draw(st.sampled_from(sorted(self.mirrors)))
        new = self.fresh("m")
        self.mirrors[new] = {**self.mirrors.pop(old), "renamedFrom": old}
        for s in self.snapshots.values():
            if s["spec"].get("mirror") == old:
                s["spec"]["mirror"] = new
        self.converge(f"rename mirror {old} -> {new}")

    @rule(kind=st.sampled_from(["plain", "filter", "merge", "series"]), data=st.data())
    def add_snapshot(self, kind, data):
        mirror = data.draw(st.sampled_from(sorted(self.mirrors)))
        spec: dict = {"mirror": mirror}
        if kind == "filter":
            spec.update(filter="basesys | toolbox | hello", filterWithDeps=True)
        elif kind == "series":
            spec["series"] = {"every": "1d", "keep": data.draw(st.integers(min_value=1, max_value=2))}
        elif kind == "merge":
            plain = self.plain_snapshots()
            if not plain:
                return
            spec = {"snapshots": data.draw(st.lists(st.sampled_from(plain), min_size=1, max_size=2, unique=True))}
        name = self.fresh("daily" if kind == "series" else kind)
        self.snapshots[name] = {"spec": spec, "protect": False}
        self.converge(f"add {kind} snapshot {name} {spec}")

    @precondition(lambda self: self.plain_snapshots())
    @rule(data=st.data())
    def rename_snapshot(self, data):
        old = data.draw(st.sampled_from(self.plain_snapshots()))
        new = self.fresh("s")
        self.snapshots[new] = {**self.snapshots.pop(old), "renamedFrom": old}
        for s in self.snapshots.values():
            if old in s["spec"].get("snapshots", []):
                s["spec"]["snapshots"] = [new if x == old else x for x in s["spec"]["snapshots"]]
        for p in self.publishes.values():
            if p["source"] == old:
                p["source"] = new
        self.converge(f"rename snapshot {old} -> {new}")

    @precondition(lambda self: self.plain_snapshots())
    @rule(data=st.data())
    def replace_snapshot(self, data):
        """New content under the same name (`apply --replace NAME`), also while published."""
        name = data.draw(st.sampled_from(self.plain_snapshots()))
        spec = self.snapshots[name]["spec"]
        if "mirror" not in spec:
            spec["latest"] = not spec.get("latest", False)
        elif spec.get("filter"):
            spec.pop("filter"), spec.pop("filterWithDeps", None)
        else:
            spec.update(filter="Priority (required)", filterWithDeps=True)
        self.converge(f"replace snapshot {name} with {spec}", replace=frozenset({name}))

    @rule()
    def add_mirror(self):
        name = self.fresh("m")
        self.mirrors[name] = {"filter": "hello"}
        self.converge(f"add mirror {name}")

    @precondition(lambda self: len(self.mirrors) > 1)
    @rule(data=st.data())
    def drop_mirror(self, data):
        used = {s["spec"].get("mirror") for s in self.snapshots.values()}
        unused = sorted(set(self.mirrors) - used)
        if not unused:
            return
        name = data.draw(st.sampled_from(unused))
        del self.mirrors[name]
        self.converge(f"drop mirror {name}")

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    def drop_snapshot(self, data):
        unused = sorted(n for n, s in self.snapshots.items() if not self.users(n) and not s["protect"])
        if not unused:
            return
        name = data.draw(st.sampled_from(unused))
        del self.snapshots[name]
        self.converge(f"drop snapshot {name}")

    @precondition(lambda self: self.snapshots or self.publishes)
    @rule(data=st.data())
    def toggle_protect(self, data):
        snapshots = sorted(self.snapshots)
        objects = [("snapshot", n) for n in snapshots] + [("publish", n) for n in sorted(self.publishes)]
        if not objects:
            return
        kind, name = data.draw(st.sampled_from(objects))
        entry = (self.snapshots if kind == "snapshot" else self.publishes)[name]
        entry["protect"] = not entry["protect"]
        self.converge(f"protect {kind} {name} = {entry['protect']}")

    def sources(self) -> list[str]:
        return self.plain_snapshots() + [f"{s}@latest" for s in self.series()]

    @precondition(lambda self: self.snapshots)
    @rule(signed=st.booleans(), valid=st.sampled_from([None, "7d"]), prefix=st.sampled_from(PREFIXES),
          data=st.data())
    def add_publish(self, signed, valid, prefix, data):
        source = data.draw(st.sampled_from(self.sources()))
        name = self.fresh("p")
        self.publishes[name] = {"source": source, "signed": signed, "validFor": valid, "protect": False,
                                "prefix": prefix, "distribution": name}
        self.converge(f"add publish {name} at {prefix} of {source} signed={signed} validFor={valid}")

    @precondition(lambda self: self.publishes)
    @rule(prefix=st.sampled_from(PREFIXES), data=st.data())
    def move_publish(self, prefix, data):
        name = data.draw(st.sampled_from(sorted(self.publishes)))
        entry = self.publishes[name]
        entry["prefix"], entry["distribution"] = prefix, self.fresh(name + "-")
        self.converge(f"move publish {name} to {prefix}/{entry['distribution']}")

    @precondition(lambda self: self.publishes)
    @rule(data=st.data())
    def switch_publish(self, data):
        name = data.draw(st.sampled_from(sorted(self.publishes)))
        source = data.draw(st.sampled_from(self.sources()))
        self.publishes[name]["source"] = source
        self.converge(f"switch publish {name} to {source}")

    @precondition(lambda self: self.publishes)
    @rule(data=st.data())
    def drop_publish(self, data):
        names = sorted(n for n, p in self.publishes.items() if not p["protect"])
        if not names:
            return
        name = data.draw(st.sampled_from(names))
        del self.publishes[name]
        self.converge(f"drop publish {name}")

    # ---- rules: the world -----------------------------------------------------------------

    @rule()
    def advance_upstream(self):
        w = self.world
        w.day += 1
        w.builder.add("hello", f"2.10-{w.day + 2}", section="utils", depends="libgreet1 (>= 1.1), greet-data")
        w.build()
        self.converge(f"upstream day {w.day}", drifted=True)

    @rule(days=st.integers(min_value=1, max_value=5))
    def let_time_pass(self, days):
        self.world.now += timedelta(days=days)
        self.converge(f"{days} day(s) pass")

    @precondition(lambda self: self.publishes)
    @rule(edit=st.booleans(), data=st.data())
    def damage_published_file(self, edit, data):
        files = self.tree_files()
        path = data.draw(st.sampled_from(files))
        if edit:
            path.write_bytes(path.read_bytes() + b"\n")
        else:
            path.unlink()
        self.converge(f"{'edit' if edit else 'delete'} {path.relative_to(self.world.dir)}", drifted=True)

    @rule(data=st.data())
    def lose_pool_file(self, data):
        store = self.world.context().store()
        listed = sorted({sha for r in store.mirrors.list()
                         for sha, _size, _path in store.packages.files(store.lists.ids(r.list_digest))})
        if not listed:
            return
        sha = data.draw(st.sampled_from(listed))
        path = self.world.context().pool.path(sha)
        if not path.exists():
            return
        path.unlink()
        self.converge(f"lose pool file {sha[:12]}", drifted=True)


def _meta(entry: dict) -> dict:
    return {"renamedFrom": entry["renamedFrom"]} if entry.get("renamedFrom") else {}


Convergence.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    derandomize="RECONCILER_PROPERTY_EXAMPLES" not in os.environ,
    suppress_health_check=list(HealthCheck), print_blob=True)
TestConvergence = Convergence.TestCase
