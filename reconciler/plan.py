"""The planner: desired × observed → ordered changes. A pure function: no I/O.

`plan(specs, observed, ...)` returns a `Plan` of typed `Change`s in the order apply runs
them: renames, then mirrors, snapshots and publishes (creates and updates, in
dependency order), then drops in reverse (publishes, snapshots, mirrors), so the users
of an object always go before it. A change with `op == "error"` makes the plan
unappliable; apply changes nothing and reports every error.

Whatever needs I/O (what upstream looks like now, what a publish switch changes package
by package) is gathered by the caller into `Observed` and `Change.detail`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

from reconciler import kinds
from reconciler.loader import Specs
from reconciler.spec import Compression, Limits, Network, parse_duration
from reconciler.state.rows import MirrorRow, PublishRow, SnapshotRow

MIRROR_CONTENT = ("url", "distribution", "components", "architectures", "filter", "filterWithDeps",
                  "withSources", "withUdebs")
SNAPSHOT_CONTENT = ("mirror", "snapshots", "filter", "filterWithDeps", "latest")


@dataclass(frozen=True)
class Probe:
    """What upstream looks like now compared with a mirror's list (gathered by the caller)."""

    changed: bool
    added: int = 0
    updated: int = 0
    removed: int = 0
    packages: int = 0
    download_bytes: int = 0
    error: str | None = None
    release_date: str | None = None  # ISO date of the upstream Release read (when it changed)
    release_sha256: str | None = None  # of the upstream Release read


@dataclass(frozen=True)
class PublishedTree:
    """What is on disk where a publish lives (gathered by the caller from its Release)."""

    release_sha256: str | None  # None: there is no Release there
    valid_until: datetime | None = None
    damaged: tuple[str, ...] = ()  # files the Release lists that are missing or differ from it
    signatures: bool = True  # InRelease and Release.gpg are both there


@dataclass
class PoolDamage:
    """Pool files that lists refer to and the pool no longer holds (gathered by the caller)."""

    mirrors: dict[str, int] = field(default_factory=dict)  # declared mirror -> files it re-fetches
    publishes: dict[str, int] = field(default_factory=dict)  # publish -> files its tree re-links
    # sha256 -> (path, snapshots holding it): files no declared mirror lists
    lost: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


@dataclass
class Observed:
    mirrors: dict[str, MirrorRow] = field(default_factory=dict)
    snapshots: dict[str, SnapshotRow] = field(default_factory=dict)
    publishes: dict[str, PublishRow] = field(default_factory=dict)
    probes: dict[str, Probe] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # owner -> spec source that last applied
    trees: dict[str, PublishedTree] = field(default_factory=dict)  # publish name -> its tree on disk
    # (kind, name) -> why a declared object cannot be applied (a signing key file that is missing)
    problems: dict[tuple[str, str], str] = field(default_factory=dict)
    pool: PoolDamage = field(default_factory=PoolDamage)
    # rows of kinds registered beyond the built-in three: kind -> name -> row
    more: dict[str, dict] = field(default_factory=dict)

    def rows(self, kind: str) -> dict:
        """name -> row of one registered kind (`kinds.get(kind).plural` for the built-in ones)."""
        plural = kinds.get(kind).plural
        return getattr(self, plural) if plural in self.__dataclass_fields__ else self.more.get(kind, {})

    @classmethod
    def of(cls, rows: dict[str, dict], **facts) -> Observed:
        """What was observed, from the rows of every registered kind (kind -> name -> row)."""
        own = {kind: kinds.get(kind).plural in cls.__dataclass_fields__ for kind in rows}
        # Any: each built-in kind's rows go to its own field (mirrors, snapshots, ...)
        fields: dict[str, Any] = {kinds.get(k).plural: v for k, v in rows.items() if own[k]}
        return cls(**fields, more={k: v for k, v in rows.items() if not own[k]}, **facts)


@dataclass
class Change:
    op: str  # create | update | edit | rename | replace | switch | repair | drop | adopt | noop | unmanaged | error
    kind: str  # Mirror | Snapshot | Publish (Owner for a refused spec source)
    name: str
    reason: str = ""
    detail: dict = field(default_factory=dict)

    @property
    def changes_anything(self) -> bool:
        return self.op not in ("noop", "unmanaged")

    def to_json(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        sign = {"create": "+", "drop": "-", "error": "!", "noop": "=", "unmanaged": "?", "rename": ">",
                "replace": "±", "adopt": "^"}.get(self.op, "~")
        line = f"{sign} {self.op:<9} {self.kind.lower()}/{self.name}"
        return f"{line}: {self.reason}" if self.reason else line


@dataclass
class Plan:
    changes: list[Change]

    @property
    def errors(self) -> list[Change]:
        return [c for c in self.changes if c.op == "error"]

    @property
    def has_changes(self) -> bool:
        return any(c.changes_anything for c in self.changes)

    def to_json(self) -> dict:
        counts: dict[str, int] = {}
        for c in self.changes:
            counts[c.op] = counts.get(c.op, 0) + 1
        return {"changes": [c.to_json() for c in self.changes], "summary": counts,
                "hasChanges": self.has_changes, "errors": len(self.errors)}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


@dataclass(frozen=True)
class Options:
    owner: str = "default"
    force: bool = False
    replace: frozenset[str] = frozenset()
    now: datetime | None = None  # the planner's clock, for snapshot series; default: now
    source: str | None = None  # identity of the spec set (loader.source_identity); None: not checked
    take_over: bool = False  # this source becomes the owner's, and declared objects of other owners its own


def _pick(spec: dict, fields: tuple[str, ...]) -> dict:
    return {k: spec.get(k) for k in fields}


# Fields added to the Publish spec after trees were published, at their defaults: a
# stored spec from before does not have them, and must still compare equal.
_LATER_DEFAULTS = {"compression": Compression().model_dump(mode="json"), "renewBefore": None}


def publish_fields(spec: dict) -> dict:
    """A publish spec as plans compare it and its inputs digest covers: without its
    components (compared by snapshot), and without later-added fields at their
    defaults, so an upgrade does not re-publish every tree."""
    return {k: v for k, v in spec.items()
            if k != "components" and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}


def inputs_digest(spec: dict, digests: dict[str, str], key: str | None = None) -> str:
    """What a published tree depends on: the spec (minus snapshot names: a rename changes no
    byte), the content digest of each component's list and, given `key` (the SHA-256 of
    the signing key file), what the key file holds instead of where it is: a spec
    directory copied elsewhere publishes the same tree. Stored with the publish; a plan
    that finds another digest for the same names re-publishes (a replaced snapshot, a
    new key). Without `key` it is the digest of rows stored before key files were
    compared by content (`published_inputs` accepts both)."""
    body = {k: v for k, v in publish_fields(spec).items() if k != "signing"}
    body["signing"] = {k: v for k, v in spec["signing"].items() if k != "passphraseFile"}
    if key is not None and body["signing"].get("keyFile"):
        body["signing"]["keyFile"] = f"sha256:{key}"
    body["lists"] = digests
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def published_inputs(stored: str, spec: dict, digests: dict[str, str], key: str | None) -> bool:
    """Does a publish's stored inputs digest match these inputs? By the key file's content,
    or, for a row stored before that (its digest covers the key file's path), by path."""
    return stored in (inputs_digest(spec, digests, key), inputs_digest(spec, digests))


def _without_paths(fields: dict) -> dict:
    """Publish fields without the signing files' paths: what they hold is compared
    through the inputs digest, and the passphrase changes no byte of the tree."""
    signing = {k: v for k, v in fields.get("signing", {}).items() if k not in ("keyFile", "passphraseFile")}
    return {**fields, "signing": {**signing, "keyFile": bool(fields.get("signing", {}).get("keyFile"))}}


# The same for the Mirror spec: a mirror stored before these existed is not "edited".
_MIRROR_LATER_DEFAULTS = {"checkValidUntil": True, "network": Network().model_dump(mode="json"),
                          "limits": Limits().model_dump(mode="json")}


def mirror_fields(spec: dict) -> dict:
    """A mirror spec as plans compare it: without later-added fields at their defaults."""
    return {k: v for k, v in spec.items() if not (k in _MIRROR_LATER_DEFAULTS and v == _MIRROR_LATER_DEFAULTS[k])}


def _moved_file_url(before: dict, after: dict) -> bool:
    return before.get("url") != after.get("url") and all(str(s.get("url", "")).startswith("file:")
                                                         for s in (before, after))


def same_content(before: dict, after: dict, before_release: str | None, after_release: str | None) -> bool:
    """Do two mirror specs select the same packages? Their content fields are equal; a
    `file:` URL that moved (a copied spec directory, a fresh checkout) counts as the same
    when it serves the same Release. Shared by the plan, the probe and the sync."""
    if _pick(before, MIRROR_CONTENT) == _pick(after, MIRROR_CONTENT):
        return True
    return (_moved_file_url(before, after) and before_release is not None and before_release == after_release
            and _pick({**before, "url": None}, MIRROR_CONTENT) == _pick({**after, "url": None}, MIRROR_CONTENT))


def _mirror_edits(row: MirrorRow, wanted: dict, keyrings: list[str | None], probe: Probe | None) -> list[str]:
    """The mirror fields an apply would change. Keyrings are compared by what they hold
    once the row records it (`upstream.keyrings`, written by the sync), and a moved
    `file:` URL serving the same Release is no edit."""
    before, after = mirror_fields(row.spec), mirror_fields(wanted)
    stored = row.upstream.get("keyrings")
    if stored is not None and None not in keyrings:
        before, after = {**before, "keyrings": stored}, {**after, "keyrings": keyrings}
    if probe is not None and same_content(row.spec, wanted, row.release_sha256, probe.release_sha256):
        after["url"] = before.get("url")
    return _diff_fields(before, after)


def _diff_fields(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


@dataclass
class Planning:
    """What a kind's planner (`kinds.Parts.plan`) reads: the specs, the options, the rows as
    take-overs and renames leave them (kind -> name -> row), the observed state, and the
    creates and updates of the kinds planned before it (kind -> changes)."""

    specs: Specs
    observed: Observed
    options: Options
    rows: dict[str, dict]
    changes: dict[str, list[Change]] = field(default_factory=dict)


def plan(specs: Specs, observed: Observed, options: Options = Options()) -> Plan:
    rows = {kind.name: dict(observed.rows(kind.name)) for kind in kinds.all()}
    snapshot_rows = rows["Snapshot"]
    claims = _claim(observed, options) + _adoptions(specs, rows, options)
    observed = replace(observed, publishes=rows["Publish"])
    renames = [c for kind in kinds.all() if kind.renamable
               for c in _renames(kind.name, specs.by_kind(kind.name), rows[kind.name])]
    observed = _follow_renames(observed, renames, snapshot_rows)
    rows["Publish"] = observed.publishes
    planning = Planning(specs, observed, options, rows)
    for kind in kinds.all():  # dependency order: a kind's planner sees what those before it planned
        planning.changes[kind.name] = kind.parts.plan(planning) if kind.parts.plan else []
    snaps_up, pubs_up = planning.changes["Snapshot"], planning.changes["Publish"]
    planned = _planned(snapshot_rows, snaps_up)
    retention = _retention(specs, planned, observed, snaps_up, pubs_up)
    # drops in reverse dependency order: the users of an object go before it
    drops = [c for kind in reversed(kinds.all()) if kind.parts.drops for c in kind.parts.drops(planning)]
    dropped = {c.name for c in retention + drops if c.kind == "Snapshot" and c.op == "drop"}
    planning.changes.update(zip(("Mirror", "Snapshot", "Publish"),
                                _repairs(observed.pool, planning.changes["Mirror"], snaps_up, pubs_up, dropped)))
    problems = [Change("error", kind, name, why) for (kind, name), why in sorted(observed.problems.items())]
    ups = [c for kind in kinds.all() for c in planning.changes[kind.name]]
    return Plan(claims + problems + renames + ups + retention + drops)


def _plan_mirrors(planning: Planning) -> list[Change]:
    specs, rows = planning.specs, planning.rows["Mirror"]
    return [_mirror(name, doc, rows.get(name), planning.observed.probes.get(name), planning.options.force,
                    [specs.digests.get(k) for k in doc.spec.keyrings])
            for name, doc in specs.mirrors.items()]


def _plan_snapshots(planning: Planning) -> list[Change]:
    out: list[Change] = []
    rows, options = planning.rows["Snapshot"], planning.options
    for name, doc in planning.specs.snapshots.items():
        if doc.spec.series:
            out.extend(_series(name, doc, rows, options))
        else:
            out.extend(_snapshot(name, doc, rows.get(name), planning.specs, planning.rows["Mirror"], options))
    return out


def _planned(snapshot_rows: dict, snaps_up: list[Change]) -> dict:
    """The snapshots as they will be: the rows, and the series members this plan creates."""
    planned = dict(snapshot_rows)
    planned.update({c.name: SimpleNamespace(series=c.detail["series"]) for c in snaps_up
                    if c.op == "create" and "series" in c.detail})
    return planned


def _plan_publishes(planning: Planning) -> list[Change]:
    specs, observed = planning.specs, planning.observed
    snaps_up = planning.changes.get("Snapshot", [])
    planned = _planned(planning.rows["Snapshot"], snaps_up)
    out = []
    for name, doc in specs.publishes.items():
        key = specs.digests.get(doc.spec.signing.keyFile) if doc.spec.signing.keyFile else None
        change = _publish(name, doc, planning.rows["Publish"].get(name), planned, snaps_up, key)
        if change.op == "noop" and name in observed.trees:
            now = planning.options.now or datetime.now(timezone.utc)
            change = _repair(change, doc, observed.publishes[name], observed.trees[name], now)
        out.append(change)
    return out


def _claim(observed: Observed, options: Options) -> list[Change]:
    """A second spec source applied under the same owner would prune all that it does not declare."""
    held = observed.owners.get(options.owner)
    if options.source is None or held in (None, options.source) or options.take_over:
        return []
    return [Change("error", "Owner", options.owner,
                   f"owner {options.owner!r} was last applied from {held}, this is {options.source}: applying "
                   f"would drop every object of that owner these specs do not declare. Give this spec set its "
                   f"own --owner NAME, or pass --take-over to make it the source of owner {options.owner!r}",
                   {"source": held, "wanted": options.source})]


def _adoptions(specs: Specs, rows_of: dict[str, dict], options: Options) -> list[Change]:
    """Declared objects another owner holds: an error, or with --take-over a change of owner.

    Taken over rows are replaced in the caller's dicts, so the rest of the plan sees them as
    this owner's."""
    out = []
    for kind in kinds.names():
        declared, rows = specs.by_kind(kind), rows_of[kind]
        for name in sorted(declared):
            row = rows.get(name)
            if row is None or row.owner == options.owner:
                continue
            if options.take_over:
                out.append(Change("adopt", kind, name, f"take over from owner {row.owner!r}", {"from": row.owner}))
                rows[name] = replace(row, owner=options.owner)
            else:
                out.append(Change("error", kind, name,
                                  f"{kind.lower()}/{name} belongs to owner {row.owner!r}, not {options.owner!r}; "
                                  f"rename it here, apply with --owner {row.owner}, or pass --take-over to "
                                  f"take it over", {"owner": row.owner}))
    return out


def _repairs(damage: PoolDamage, mirrors: list[Change], snaps: list[Change], pubs: list[Change],
             dropped: set[str]) -> tuple[list[Change], list[Change], list[Change]]:
    """Lost pool files: a mirror that lists them re-fetches them (even with upstream
    unchanged) and the publishes whose trees link them link again; a file no declared
    mirror lists is an error on each snapshot holding it that this plan keeps."""
    def repaired(change: Change, count: int, what: str) -> Change:
        if not count:
            return change
        if change.op == "noop":
            return Change("repair", change.kind, change.name, what, {**change.detail, "poolFiles": count})
        return replace(change, reason=f"{change.reason}; {what}", detail={**change.detail, "poolFiles": count})

    mirrors = [repaired(c, damage.mirrors.get(c.name, 0), f"{damage.mirrors.get(c.name)} pool file(s) missing, "
                                                              "re-fetched from upstream")
               for c in mirrors]
    pubs = [repaired(c, damage.publishes.get(c.name, 0), f"re-link {damage.publishes.get(c.name)} pool file(s) "
                                                         "replaced by a mirror repair")
            for c in pubs]
    lost_by_snap: dict[str, list[str]] = {}
    for sha, (path, holders) in sorted(damage.lost.items()):
        for snap in holders:
            lost_by_snap.setdefault(snap, []).append(f"{path} ({sha[:12]})")
    out = []
    for c in snaps:
        files = lost_by_snap.pop(c.name, None) if c.op == "noop" else None
        out.append(c if files is None else _lost(c.name, files))
    out += [_lost(name, files) for name, files in sorted(lost_by_snap.items()) if name not in dropped]
    return mirrors, out, pubs


def _lost(snapshot: str, files: list[str]) -> Change:
    shown = ", ".join(files[:5]) + (f" (and {len(files) - 5} more)" if len(files) > 5 else "")
    return Change("error", "Snapshot", snapshot,
                  f"{len(files)} pool file(s) missing and no declared mirror lists them: {shown}; restore them "
                  "into the pool from a backup, or drop or replace the snapshot", {"lostFiles": files})


def series_member(name: str, every: str, now: datetime) -> str:
    """NAME-YYYYMMDD for daily or slower series, NAME-YYYYMMDDHHMM for hourly or faster,
    NAME-YYYYMMDDHHMMSS below a minute: unique at any allowed rate, and ordered by time."""
    seconds = parse_duration(every).total_seconds()
    fmt = "%Y%m%d" if seconds >= 86400 else "%Y%m%d%H%M" if seconds >= 60 else "%Y%m%d%H%M%S"
    return f"{name}-{now:{fmt}}"


def _series(name: str, doc, rows: dict, options: Options) -> list[Change]:
    """A series takes a new member when the newest is `every` old, and keeps `keep` of them.

    Members follow the series document's `protect`: a member whose flag differs is
    updated first, so clearing the flag on the series releases its old members too."""
    now = options.now or datetime.now(timezone.utc)
    members = sorted((r.created_at, n) for n, r in rows.items() if r.series == name)
    protect = doc.metadata.protect
    flags = [Change("update", "Snapshot", n, f"series {name}: metadata.protect -> {str(protect).lower()}",
                    {"fields": ["metadata.protect"], "protect": protect})
             for _created, n in members if rows[n].protect != protect]
    every = doc.spec.series.every
    if members:
        newest = datetime.fromisoformat(members[-1][0])
        if now - newest < parse_duration(every):
            return flags + [Change("noop", "Snapshot", name, f"series: newest {members[-1][1]}, next one due "
                                                             f"{(newest + parse_duration(every)).isoformat()}")]
    member = series_member(name, every, now)
    if member in rows:
        return flags + [Change("noop", "Snapshot", name, f"series: {member} exists")]
    return flags + [Change("create", "Snapshot", member, f"series {name}: from mirror {doc.spec.mirror}",
                           {"series": name, "source": f"mirror {doc.spec.mirror}"})]


def _retention(specs: Specs, planned: dict, observed: Observed, snaps: list[Change], pubs: list[Change]) -> list[Change]:
    """Drop the oldest members beyond `keep`, unless a publish still points at them."""
    used = {s for c in pubs for s in c.detail.get("sources", {}).values()}
    used |= {s for n, r in observed.publishes.items() if n not in specs.publishes for s in r.sources.values()}
    out = []
    for name, doc in specs.snapshots.items():
        if not doc.spec.series:
            continue
        members = sorted(n for n, r in planned.items() if getattr(r, "series", None) == name)
        for old in members[: max(0, len(members) - doc.spec.series.keep)]:
            if old in used:
                out.append(Change("noop", "Snapshot", old, f"series {name}: beyond keep but still published"))
            elif doc.metadata.protect:  # members follow the series' flag (see _series)
                out.append(Change("noop", "Snapshot", old, f"series {name}: beyond keep but protected "
                                                           "(metadata.protect on the series)"))
            else:
                out.append(Change("drop", "Snapshot", old, f"series {name}: beyond keep {doc.spec.series.keep}",
                                  {"series": name}))
    return out


def _renames(kind: str, declared: dict, rows: dict) -> list[Change]:
    """`metadata.renamedFrom`: rename in place; later steps see the row under its new name."""
    out = []
    for name, doc in declared.items():
        old = doc.metadata.renamedFrom
        if not old or old not in rows:
            continue  # nothing to rename, or done already
        if name in rows:
            out.append(Change("error", kind, name, f"cannot rename {old} to {name}: {name} exists too; "
                                                   f"drop one of them or remove renamedFrom"))
            continue
        rows[name] = rows.pop(old)
        out.append(Change("rename", kind, name, f"renamed from {old}", {"from": old}))
    return out


def _follow_renames(observed: Observed, renames: list[Change], snapshot_rows: dict) -> Observed:
    """What renames will do to references: snapshots name the new mirror, publishes the new snapshot."""
    mirror_map = {c.detail["from"]: c.name for c in renames if c.kind == "Mirror"}
    snap_map = {c.detail["from"]: c.name for c in renames if c.kind == "Snapshot"}
    if not renames:
        return observed
    for name, row in snapshot_rows.items():
        spec = dict(row.spec)
        if spec.get("mirror") in mirror_map:
            spec["mirror"] = mirror_map[spec["mirror"]]
        if spec.get("snapshots"):
            spec["snapshots"] = [snap_map.get(s, s) for s in spec["snapshots"]]
        snapshot_rows[name] = replace(row, spec=spec, source_mirror=mirror_map.get(row.source_mirror, row.source_mirror))
    publishes = {n: replace(r, sources={c: snap_map.get(s, s) for c, s in r.sources.items()})
                 for n, r in observed.publishes.items()}
    return replace(observed, publishes=publishes)


def removal_refusal(name: str, max_percent: float, before: int, removed: int) -> str | None:
    """The removal gate: an upstream that suddenly lost most of its packages is not trusted blindly."""
    share = 100.0 * removed / before if before else 0.0
    if share <= max_percent:
        return None
    return (f"mirror/{name}: the update would remove {removed} of {before} packages ({share:.0f}%), more than "
            f"maxRemovalPercent {max_percent:g}%; the mirror keeps its list. Pass --force if upstream really shrank")


def replay_refusal(name: str, last: str | None, seen: datetime | None) -> str | None:
    """A Release older than the last one seen may be a replay of old (vulnerable) content."""
    if not last or seen is None:
        return None
    previous = datetime.fromisoformat(last)
    if seen >= previous:
        return None
    return (f"mirror/{name}: upstream Release is dated {seen.isoformat()}, older than the last one seen "
            f"({previous.isoformat()}): a possible replay; pass --force to accept it")


def _refusal(name: str, doc, row: MirrorRow, probe: Probe, content_edited: bool) -> str | None:
    """What the update task would refuse, so that a green plan means apply will not refuse."""
    seen = datetime.fromisoformat(probe.release_date) if probe.release_date else None
    replay = replay_refusal(name, row.release_date, seen)
    if replay or content_edited:
        return replay
    return removal_refusal(name, doc.spec.maxRemovalPercent, row.num_packages, probe.removed)


def _mirror(name: str, doc, row: MirrorRow | None, probe: Probe | None, force: bool = False,
            keyrings: Sequence[str | None] = ()) -> Change:
    wanted = doc.spec.stored()  # compared with the row as stored: secrets by their digests
    counts = {}
    if probe is not None:
        if probe.error:
            return Change("error", "Mirror", name, f"cannot read upstream: {probe.error}")
        content_edited = row is not None and not same_content(row.spec, wanted, row.release_sha256,
                                                              probe.release_sha256)
        refusal = None if row is None or force or not probe.changed else \
            _refusal(name, doc, row, probe, content_edited)
        if refusal:
            return Change("error", "Mirror", name, refusal)
        counts = {"added": probe.added, "changed": probe.updated, "removed": probe.removed,
                  "numPackages": probe.packages, "downloadBytes": probe.download_bytes}
    if row is None:
        reason = f"{doc.spec.url} {doc.spec.distribution}"
        if counts:
            reason += f": {counts['numPackages']} packages, {counts['downloadBytes'] / 1e6:.1f} MB to download"
        return Change("create", "Mirror", name, reason, counts)
    edited = _mirror_edits(row, wanted, list(keyrings), probe)
    if row.protect != doc.metadata.protect:
        edited.append("metadata.protect")
    upstream_changed = probe.changed if probe else None
    if edited:
        reason = "edit " + ", ".join(edited)
        if counts and (counts["added"] or counts["changed"] or counts["removed"]):
            reason += f"; +{counts['added']} ~{counts['changed']} -{counts['removed']}"
        return Change("edit", "Mirror", name, reason, {"fields": edited, **counts})
    if upstream_changed or not row.update_complete:
        why = "previous update did not complete" if not row.update_complete else "upstream changed"
        reason = why + (f": +{counts['added']} ~{counts['changed']} -{counts['removed']}, "
                        f"{counts['downloadBytes'] / 1e6:.1f} MB" if counts else "")
        return Change("update", "Mirror", name, reason, counts)
    if probe is None:
        return Change("update", "Mirror", name, "check upstream", {})
    if row.status == "failed":
        return Change("update", "Mirror", name, f"the last update failed: {row.last_error}", counts)
    return Change("noop", "Mirror", name, f"up to date ({row.num_packages} packages)")


def _snapshot(name: str, doc, row: SnapshotRow | None, specs: Specs, mirrors: dict, options: Options) -> list[Change]:
    wanted = _pick(doc.spec.model_dump(mode="json"), SNAPSHOT_CONTENT)
    source = f"mirror {doc.spec.mirror}" if doc.spec.mirror else f"merge of {', '.join(doc.spec.snapshots)}"
    if row is None:
        if doc.spec.mirror and doc.spec.mirror not in specs.mirrors and doc.spec.mirror not in mirrors:
            return [Change("error", "Snapshot", name, f"mirror {doc.spec.mirror!r} is neither declared nor existing")]
        return [Change("create", "Snapshot", name, f"from {source}", {"source": source})]
    if _pick(row.spec, SNAPSHOT_CONTENT) == wanted:
        if row.protect != doc.metadata.protect:
            return [Change("update", "Snapshot", name, f"metadata.protect: {str(row.protect).lower()} -> "
                                                       f"{str(doc.metadata.protect).lower()}",
                           {"fields": ["metadata.protect"], "protect": doc.metadata.protect})]
        return [Change("noop", "Snapshot", name, f"exists ({row.num_packages} packages)")]
    fields = _diff_fields(_pick(row.spec, SNAPSHOT_CONTENT), wanted)
    if name in options.replace:
        return [Change("replace", "Snapshot", name, f"drop and recreate ({', '.join(fields)} changed)",
                       {"fields": fields})]
    return [Change("error", "Snapshot", name,
                   f"snapshots are immutable and the spec changed ({', '.join(fields)}): give the new content "
                   f"a new name, or pass --replace {name}")]


def resolve_sources(doc, snapshots: dict) -> dict[str, str]:
    """component → snapshot name, with SERIES@latest resolved to the newest member."""
    out = {}
    for comp, ref in doc.spec.components.items():
        if ref.endswith("@latest"):
            series = ref.removesuffix("@latest")
            members = sorted(n for n, r in snapshots.items() if getattr(r, "series", None) == series)
            out[comp] = members[-1] if members else ref
        else:
            out[comp] = ref
    return out


def _publish(name: str, doc, row: PublishRow | None, snapshots: dict, snap_changes: list[Change],
             key: str | None = None) -> Change:
    sources = resolve_sources(doc, snapshots)
    remade = {c.name for c in snap_changes if c.op in ("create", "replace")}
    where = f"{doc.spec.prefix}/{doc.spec.distribution}"
    comps = ", ".join(f"{c}={s}" for c, s in sources.items())
    if row is None:
        return Change("create", "Publish", name, f"{where}: {comps}", {"sources": sources})
    sources_noop = {"sources": sources}
    switched = {c: s for c, s in sources.items() if row.sources.get(c) != s or s in remade}
    fields = _diff_fields(_without_paths(publish_fields(row.spec)),
                          _without_paths(publish_fields(doc.spec.model_dump(mode="json"))))
    if row.protect != doc.metadata.protect:
        fields.append("metadata.protect")
    if switched or fields or set(row.sources) != set(sources):
        reason = f"{where}: " + (", ".join(f"{c}: {row.sources.get(c, '-')} -> {s}" for c, s in switched.items())
                                 or "edit " + ", ".join(fields))
        return Change("switch" if switched else "update", "Publish", name, reason,
                      {"sources": sources, "before": row.sources, "fields": fields})
    lists: dict[str, str | None] = {c: getattr(snapshots.get(s), "list_digest", None) for c, s in sources.items()}
    known = {c: d for c, d in lists.items() if d is not None}  # each source's list, where it has one yet
    wanted = doc.spec.model_dump(mode="json")
    if len(known) == len(lists) and not published_inputs(row.inputs_digest, wanted, known, key):
        why = "its snapshots hold other packages than the tree (a replace, or a switch that did not finish)"
        if doc.spec.signing.keyFile:  # the digest covers both; which one changed it cannot tell
            why = "the signing key file holds another key than the tree was signed with, or " + why
        return Change("switch", "Publish", name, f"{where}: {why}",
                      {"sources": sources, "before": row.sources, "fields": []})
    return Change("noop", "Publish", name, f"{where}: up to date", sources_noop)


def renew_before(spec) -> timedelta | None:
    """How long before Valid-Until a tree is re-signed: `renewBefore`, else half of `validFor`."""
    if not spec.validFor:
        return None
    return parse_duration(spec.renewBefore) if spec.renewBefore else parse_duration(spec.validFor) / 2


def tree_repair(spec, release_sha256: str | None, tree: PublishedTree, now: datetime) -> str | None:
    """Why a publish whose inputs are unchanged must be written again, or None.

    Shared by the plan and by the publish task, which re-derives it inside its lock."""
    if tree.release_sha256 is None:
        return "the published tree has no Release (deleted?): rebuild it"
    if release_sha256 and tree.release_sha256 != release_sha256:
        return "the Release on disk is not the one published (drift): rebuild it"
    if tree.damaged:
        more = f" (and {len(tree.damaged) - 3} more)" if len(tree.damaged) > 3 else ""
        return f"{', '.join(tree.damaged[:3])}{more} missing or not what the Release lists (drift): rebuild it"
    if not spec.signing.skip and not tree.signatures:
        return "InRelease or Release.gpg is missing (drift): rebuild it"
    window = renew_before(spec)
    if window is not None and tree.valid_until is not None and tree.valid_until - now < window:
        return f"Valid-Until {tree.valid_until.isoformat()} is less than {window} away: re-sign it"
    return None


def _repair(change: Change, doc, row: PublishRow, tree: PublishedTree, now: datetime) -> Change:
    why = tree_repair(doc.spec, row.release_sha256, tree, now)
    if why is None:
        return change
    where = f"{doc.spec.prefix}/{doc.spec.distribution}"
    return Change("repair", "Publish", change.name, f"{where}: {why}", {**change.detail, "repair": why})


def _own_undeclared(rows: dict, declared: dict, owner: str) -> set[str]:
    return {n for n, r in rows.items() if n not in declared and r.owner == owner}


def _drop_publishes(planning: Planning) -> list[Change]:
    declared = planning.specs.publishes
    return [_drop("Publish", name, row, planning.options, [])
            for name, row in sorted(planning.observed.publishes.items()) if name not in declared]


def _drop_snapshots(planning: Planning) -> list[Change]:
    specs, options, snapshots = planning.specs, planning.options, planning.rows["Snapshot"]
    declared_pub_snaps = {s for d in specs.publishes.values() for s in resolve_sources(d, snapshots).values()}
    kept_pubs = {n: r for n, r in planning.observed.publishes.items()
                 if n in specs.publishes or r.owner != options.owner}
    undeclared = {n for n, r in snapshots.items() if n not in specs.snapshots and
                  not (r.series and r.series in specs.snapshots)}
    out = []
    for name in sorted(undeclared):
        users = sorted(f"publish/{n}" for n, r in kept_pubs.items()
                       if name in r.sources.values() and n not in specs.publishes)
        if name in declared_pub_snaps:
            users.append("a declared publish")
        out.append(_drop("Snapshot", name, snapshots[name], options, users))
    return out


def _drop_mirrors(planning: Planning) -> list[Change]:
    """A mirror is in use by the snapshots taken from it that this plan keeps."""
    specs, options = planning.specs, planning.options
    mirrors, snapshots = planning.rows["Mirror"], planning.rows["Snapshot"]
    series_names = {n for n, d in specs.snapshots.items() if d.spec.series}
    dropped = {n for n in _own_undeclared(snapshots, specs.snapshots, options.owner)
               if snapshots[n].series not in series_names}
    remaining = {n: r for n, r in snapshots.items() if n not in dropped}
    out = []
    for name in sorted(set(mirrors) - set(specs.mirrors)):
        users = sorted(f"snapshot/{n}" for n, r in remaining.items() if r.source_mirror == name)
        out.append(_drop("Mirror", name, mirrors[name], options, users))
    return out


def _drop(kind: str, name: str, row, options: Options, users: list[str]) -> Change:
    if row.owner != options.owner:
        return Change("unmanaged", kind, name, f"not managed by owner {options.owner!r} (owner {row.owner!r})")
    if row.protect:
        return Change("error", kind, name, "no longer declared but protected (metadata.protect: true); "
                                           "declare it again, apply it with protect: false, then remove it")
    if users and not options.force:
        return Change("error", kind, name, f"no longer declared but in use by {', '.join(users)}; "
                                           "drop those first or pass --force")
    return Change("drop", kind, name, "no longer declared" + (f" (forced; used by {', '.join(users)})" if users else ""))


def package_diff(old, new) -> dict[str, list]:
    """Packages added, removed and changed between two package collections.

    Each package file counts on its own; where a (type, name, arch) slot both lost and
    gained one, the pair is reported as a change (an upgrade or a rebuild) instead.
    """
    old = {p.key: p for p in old}
    new = {p.key: p for p in new}
    came_by_slot: dict[tuple, list] = {}
    for pkg in sorted((new[k] for k in new.keys() - old.keys()), key=lambda p: p.ref):
        came_by_slot.setdefault((pkg.type, pkg.name, pkg.arch), []).append(pkg)
    changed, removed = [], []
    for pkg in sorted((old[k] for k in old.keys() - new.keys()), key=lambda p: p.ref):
        partners = came_by_slot.get((pkg.type, pkg.name, pkg.arch))
        if partners:
            changed.append([pkg.ref, partners.pop(0).ref])
        else:
            removed.append(pkg.ref)
    added = sorted(p.ref for group in came_by_slot.values() for p in group)
    return {"added": added, "removed": removed, "changed": changed}


def summary(diff: dict[str, list]) -> str:
    return f"+{len(diff['added'])} ~{len(diff['changed'])} -{len(diff['removed'])}"


# the planning rules of the built-in kinds (their executable part; see kinds.registry)
kinds.attach("Mirror", plan=_plan_mirrors, drops=_drop_mirrors)
kinds.attach("Snapshot", plan=_plan_snapshots, drops=_drop_snapshots)
kinds.attach("Publish", plan=_plan_publishes, drops=_drop_publishes)
