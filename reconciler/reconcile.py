"""load → observe → plan → run each change as a locked task → report.

The CLI (`plan`, `apply`), `watch` and `serve` all come through here, so there is one
reconcile loop. Apply does not replay the plan's findings: each action is a task that
re-derives inside its lock what is still to do (store the intent, recompute the delta inside the task); the plan only fixes the
order and refuses up front what must not start (errors, in-use drops).

What each change did is told in events (events.py), not in wording: its action returns
a `Result` saying whether it changed anything, and apply emits `started`/`finished`
around it to its subscribers (serve's status, log and metrics; by default a printer of
the CLI's lines).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler import events, kinds, tasks, treeverify, upstream
from reconciler import plan as planner
from reconciler.actions import mirrors, owners, publish, repair, snapshots
from reconciler.actions.result import Result
from reconciler.errors import ReconcilerError, Refused
from reconciler.events import Event
from reconciler.fetch import Fetcher
from reconciler.loader import Specs
from reconciler.state.stores import Store


def observe(store: Store, publish_root: Path | None = None) -> planner.Observed:
    """The rows, the owners and, with `publish_root`, each published tree's Release on disk."""
    trees = {}
    if publish_root is not None:
        trees = {r.name: treeverify.published(publish_root, r.prefix, r.distribution)
                 for r in store.publishes.list()}
    rows = {kind.name: {r.name: r for r in kind.rows(store).list()} for kind in kinds.all()}
    return planner.Observed.of(rows, trees=trees, owners=store.owners.all())


def probe(ctx: tasks.Context, specs: Specs, observed: planner.Observed,
          upcoming: dict[str, list] | None = None,
          diffs: dict[str, dict] | None = None) -> dict[str, planner.Probe]:
    """Read each mirror's upstream (Release, and indexes when it changed); download no package.

    Each mirror is read with its own network settings and limits, through the same
    `upstream` calls its sync makes, so what sync would refuse (an expired Release, a
    bomb, a stall) shows here as that mirror's error.

    `upcoming` receives, for each changed mirror that a declared snapshot is taken
    from, the package list its update would store: plan previews of those snapshots
    show what they will hold, not what the mirror holds now. `diffs` receives, for
    each changed mirror, the packages its update adds, changes and removes (only the
    refs are kept: a list of every mirror's packages could be gigabytes)."""
    store = ctx.store()
    wanted_by = {d.spec.mirror for d in specs.snapshots.values() if d.spec.mirror}
    out = {}
    for name, doc in specs.mirrors.items():
        row = observed.mirrors.get(name) or observed.mirrors.get(doc.metadata.renamedFrom or "")
        try:
            with Fetcher.of(doc.spec) as fetcher:  # the mirror's own limits, as its sync uses
                out[name], packages = _probe_one(ctx, store, fetcher, doc, row)
        except ReconcilerError as exc:
            out[name] = planner.Probe(changed=True, error=str(exc))
            continue
        if packages is None:
            continue
        if upcoming is not None and name in wanted_by:
            upcoming[name] = packages
        if diffs is not None:
            diffs[name] = planner.package_diff(_stored_list(store, row), packages)
    return out


def _probe_one(ctx, store: Store, fetcher: Fetcher, doc, row) -> tuple[planner.Probe, list | None]:
    release = upstream.read_release(fetcher, doc.spec, workdir=ctx.local("tmp"), now=ctx.clock)
    wanted = doc.spec.model_dump(mode="json")
    if (row is not None and row.update_complete and row.release_sha256 == release.sha256
            and planner.same_content(row.spec, wanted, row.release_sha256, release.sha256)):
        return planner.Probe(changed=False, packages=row.num_packages, release_sha256=release.sha256), None
    packages = upstream.read_packages(fetcher, release, doc.spec, cache=ctx.local("cache") / "indexes")
    old = mirrors.stored_identity_map(store, store.lists.ids(row.list_digest)) if row else {}
    new = mirrors.identity_map(packages)
    added, changed, removed = mirrors.diff_counts(old, new)
    sizes = {f.sha256: f.size for p in packages for f in p.files}
    download = sum(size for sha, size in sizes.items() if not ctx.pool.has(sha, size))
    return planner.Probe(changed=True, added=added, updated=changed, removed=removed,
                         packages=len(packages), download_bytes=download,
                         release_date=release.date.isoformat() if release.date else None,
                         release_sha256=release.sha256), packages


def make_plan(ctx: tasks.Context, specs: Specs, options: planner.Options, *, with_probe: bool = True) -> planner.Plan:
    options = clocked(ctx, options)
    observed = observe(ctx.store(), ctx.publish_root if with_probe else None)
    upcoming: dict[str, list] = {}
    diffs: dict[str, dict] = {}
    if with_probe:
        observed.probes = probe(ctx, specs, observed, upcoming, diffs)
        observed.pool = repair.pool_damage(ctx.store(), ctx.pool, set(specs.mirrors))
        observed.problems = unusable_files(specs)
    the_plan = planner.plan(specs, observed, options)
    if with_probe:
        describe(ctx.store(), specs, the_plan, upcoming, diffs)
    return the_plan


def clocked(ctx: tasks.Context, options: planner.Options) -> planner.Options:
    """The options with the planner's `now` read from the context's clock (unless given)."""
    return options if options.now is not None else replace(options, now=ctx.clock())


def unusable_files(specs: Specs) -> dict[tuple[str, str], str]:
    """Files a publish needs that cannot be read now: the publish task would fail on them,
    so the plan says so first. (A mirror's keyrings are read by its probe.)"""
    problems = {}
    for name, doc in specs.publishes.items():
        signing = doc.spec.signing
        for field_name, path in (("keyFile", signing.keyFile), ("passphraseFile", signing.passphraseFile)):
            if path is None:
                continue
            try:
                with open(path, "rb") as fh:
                    fh.read(1)
            except OSError as exc:
                problems[("Publish", name)] = f"signing.{field_name} {path}: {exc.strerror or exc}"
    return problems


def _preview(store: Store, specs: Specs, snapshot: str, upcoming: dict[str, list]) -> list | None:
    """The packages a snapshot has, or would have if this plan created it."""
    row = store.snapshots.get(snapshot)
    if row is not None:
        return [p for _id, p in store.packages.load(store.lists.ids(row.list_digest))]
    return _preview_new(store, specs, snapshot, upcoming)


def _preview_new(store: Store, specs: Specs, name: str, upcoming: dict[str, list]) -> list | None:
    """Packages a declared snapshot would get if this plan created it: from its mirror's
    list after the update the plan makes (`upcoming`), or from its list as stored."""
    doc = specs.snapshots.get(name)
    if doc is None or not doc.spec.mirror:
        return None
    packages = upcoming.get(doc.spec.mirror)
    if packages is None:
        mirror = store.mirrors.get(doc.spec.mirror)
        if mirror is None:
            return None
        packages = [p for _id, p in store.packages.load(store.lists.ids(mirror.list_digest))]
    return upstream.select_stored(packages, doc.spec.filter, doc.spec.filterWithDeps)


def _stored_list(store: Store, row) -> list:
    return [p for _id, p in store.packages.load(store.lists.ids(row.list_digest))] if row is not None else []


def _empty_filter(kind: str, name: str, spec) -> str:
    return (f"; WARNING: {kind}/{name}: filter {spec.filter!r} matches no package; check its spelling "
            f"(`reconciler packages QUERY` tries a query)")


def describe(store: Store, specs: Specs, the_plan: planner.Plan, upcoming: dict[str, list] | None = None,
             diffs: dict[str, dict] | None = None) -> None:
    """Add package counts to snapshot creates, the package diff (`diffs`) to mirror
    changes, a per-component package diff to publish changes, and a warning to a
    filter that selects nothing: each kind's attached `describe` part."""
    upcoming, diffs = upcoming or {}, diffs or {}
    for change in the_plan.changes:
        kind = kinds.find(change.kind)
        if kind is not None and kind.parts.describe is not None:
            kind.parts.describe(store, specs, change, upcoming, diffs)


def _describe_mirror(store: Store, specs: Specs, change: planner.Change, upcoming: dict, diffs: dict) -> None:
    if change.op in ("create", "edit", "update") and change.name in diffs:
        doc = specs.mirrors[change.name]
        change.detail["packages"] = diffs[change.name]
        if doc.spec.filter and not change.detail.get("numPackages"):
            change.reason += _empty_filter("mirror", change.name, doc.spec)


def _describe_snapshot(store: Store, specs: Specs, change: planner.Change, upcoming: dict, diffs: dict) -> None:
    if change.op not in ("create", "replace"):
        return
    name = change.detail.get("series") or change.name
    preview = _preview_new(store, specs, name, upcoming)
    if preview is not None:
        spec = specs.snapshots[name].spec
        source = "after the mirror's update" if spec.mirror in upcoming else "from the current mirror list"
        change.detail["numPackages"] = len(preview)
        change.reason += f": {len(preview)} packages ({source})"
        if spec.filter and not preview:
            change.reason += _empty_filter("snapshot", name, spec)


def _describe_publish(store: Store, specs: Specs, change: planner.Change, upcoming: dict, diffs: dict) -> None:
    if change.op not in ("create", "switch"):
        return
    before = change.detail.get("before", {})
    components = {}
    for comp, snap in change.detail["sources"].items():
        new = _preview(store, specs, snap, upcoming)
        old = _preview(store, specs, before[comp], upcoming) if comp in before else []
        if new is None or old is None:
            continue
        components[comp] = planner.package_diff(old, new)
    change.detail["packages"] = components
    if components:
        change.reason += " (" + ", ".join(f"{c}: {planner.summary(d)}" for c, d in components.items()) + ")"


@dataclass
class Report:
    """What apply did: the lines for people, the failures, and every event it emitted."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    events: list[events.Event] = field(default_factory=list)
    claim: str | None = None  # the owner's new spec source, when apply recorded one

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def changed(self) -> list[str]:
        """The lines of what changed state: the owner's claim, then each change's line."""
        made = [e.message for e in self.events if e.finished and e.outcome == events.CHANGED]
        return ([self.claim] if self.claim else []) + made

    def record(self, event: Event) -> None:  # `events` here is the field above, not the module
        if not event.finished:
            return
        self.events.append(event)
        if event.outcome in (events.FAILED, events.SKIPPED):
            self.failures.append(event.message)
        elif event.message:
            self.lines.append(event.message)


def apply(ctx: tasks.Context, specs: Specs, options: planner.Options, *, echo=print,
          subscribers: list[events.Subscriber] | None = None, plan: planner.Plan | None = None) -> Report:
    """Make the state match the specs. Refuses before touching anything when the plan has errors.

    Every change of the plan gives a `started` and a `finished` event (events.py) to each
    of `subscribers`; by default the one subscriber prints each change's line to `echo`.
    `echo` also gets the lines that belong to no change (the owner's claim, a download's
    retries, pool files lost). `plan`: the plan `make_plan` just made of these specs
    and options (serve shows it in its status, then applies it); made, like apply's own,
    from state read before any lock, because every action re-derives inside its lock
    what is still to do."""
    options = clocked(ctx, options)
    the_plan = plan if plan is not None else make_plan(ctx, specs, options, with_probe=False)
    if the_plan.errors:
        raise Refused("the plan has errors; nothing was changed:\n" + "\n".join(c.text() for c in the_plan.errors))
    report = Report()
    subscribers = [events.printer(echo)] if subscribers is None else subscribers

    def emit(event: events.Event) -> None:
        report.record(event)
        for subscriber in subscribers:
            subscriber(event)

    if options.source is not None:
        with tasks.scope():
            claimed = owners.claim(ctx, options.owner, options.source, take_over=options.take_over)
            if claimed:
                report.claim = claimed.line
                report.lines.append(claimed.line)
                echo(claimed.line)
    failed: set[str] = set()
    for change in the_plan.changes:
        with tasks.scope():  # what is logged about a change carries its task's id
            _attempt(ctx, specs, change, options, failed, echo, emit)
    for line in _lost_files(ctx, specs):
        report.failures.append(line)
        echo(f"FAILED {line}")
    return report


def _attempt(ctx: tasks.Context, specs: Specs, change: planner.Change, options: planner.Options,
             failed: set[str], echo, emit: events.Subscriber) -> None:
    """Run one change as its action, between its `started` and `finished` events."""
    kind, name, op = change.kind, change.name, change.op
    blocker = _blocked(change, specs, failed)
    if blocker:
        failed.add(f"{kind}/{name}")
        emit(events.skipped(kind, name, op, blocker=blocker))
        return
    emit(events.started(kind, name, op))
    began = time.monotonic()
    try:
        done = _run(ctx, specs, change, options, echo) or Result("", changed=False)
    except ReconcilerError as exc:
        failed.add(f"{kind}/{name}")
        emit(events.failed(kind, name, op, error=str(exc), seconds=time.monotonic() - began, task_id=exc.task_id))
        return
    emit(events.finished(kind, name, op, changed=done.changed, seconds=time.monotonic() - began, line=done.line,
                         task_id=done.task_id))


def _lost_files(ctx: tasks.Context, specs: Specs) -> list[str]:
    """Pool files still missing after the mirrors had their chance to re-fetch them,
    which no declared mirror lists: each names the snapshots holding it."""
    damage = repair.pool_damage(ctx.store(), ctx.pool, set(specs.mirrors))
    return [f"pool: {path} ({sha[:12]}) is missing and no declared mirror lists it; held by "
            f"{', '.join(f'snapshot/{s}' for s in snaps)}. Restore it into the pool from a backup, or drop or "
            "replace those snapshots" for sha, (path, snaps) in sorted(damage.lost.items())]


def _blocked(change: planner.Change, specs: Specs, failed: set[str]) -> str | None:
    """The failed object this change is made from (`mirror/m`), if any: it is skipped."""
    kind = kinds.find(change.kind)
    if kind is None:  # an Owner
        return None
    doc = specs.by_kind(change.kind).get(change.detail.get("series") or change.name)
    if doc is None:
        return None
    deps = [f"{dep_kind}/{dep}" for dep_kind, dep in kind.requires(doc)]
    return next((d.lower() for d in deps if d in failed), None)


def _run(ctx: tasks.Context, specs: Specs, change: planner.Change, options: planner.Options,
         echo=None) -> Result | None:
    """The change's action, and what it did; None for a change the plan only reports."""
    kind = kinds.find(change.kind)
    if change.op == "unmanaged" or kind is None or kind.parts.apply is None:
        return None
    if change.op == "adopt":
        return owners.adopt(ctx, change.kind, change.name, options.owner)
    return kind.parts.apply(ctx, specs, change, options, echo)


def _apply_mirror(ctx: tasks.Context, specs: Specs, change: planner.Change, options: planner.Options,
                  echo=None) -> Result | None:
    """A mirror change: every op but rename and drop is a sync, which re-checks upstream (noop too)."""
    if change.op == "rename":
        return mirrors.rename(ctx, change.detail["from"], change.name)
    if change.op == "drop":
        return mirrors.drop(ctx, change.name, force=options.force, missing_ok=True)
    return mirrors.sync(ctx, specs.mirrors[change.name], owner=options.owner, force=options.force, echo=echo).result()


def _apply_snapshot(ctx: tasks.Context, specs: Specs, change: planner.Change, options: planner.Options,
                    echo=None) -> Result | None:
    op, name, series = change.op, change.name, change.detail.get("series")
    if op == "noop":
        return None
    if op == "rename":
        return snapshots.rename(ctx, change.detail["from"], name)
    if op == "drop":  # a series member beyond keep: retention checked it is unused
        return snapshots.drop(ctx, name, missing_ok=True) if series else \
            snapshots.drop(ctx, name, force=options.force, missing_ok=True)
    if series:
        return snapshots.create(ctx, specs.snapshots[series], owner=options.owner, name=name, series=series)
    if op == "update":
        return snapshots.set_protect(ctx, name, change.detail["protect"])
    return snapshots.create(ctx, specs.snapshots[name], owner=options.owner, replace=op == "replace")


def _apply_publish(ctx: tasks.Context, specs: Specs, change: planner.Change, options: planner.Options,
                   echo=None) -> Result | None:
    """A publish change: drop, else publish, which re-derives inside its lock what to write (noop too)."""
    if change.op == "drop":
        return publish.drop(ctx, change.name, missing_ok=True)
    return publish.publish(ctx, specs.publishes[change.name], owner=options.owner)


# the executable part of the built-in kinds (see kinds.registry): how apply runs their
# changes, what a plan preview adds to them, and the API's drop by name
kinds.attach("Mirror", apply=_apply_mirror, describe=_describe_mirror, drop=mirrors.drop)
kinds.attach("Snapshot", apply=_apply_snapshot, describe=_describe_snapshot, drop=snapshots.drop)
kinds.attach("Publish", apply=_apply_publish, describe=_describe_publish)
