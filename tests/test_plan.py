"""The planner is pure: literal specs and rows in, ordered changes out."""

from __future__ import annotations

from dataclasses import replace

from datetime import datetime, timezone

import pytest

from reconciler import plan as planner
from reconciler.loader import Specs
from reconciler.spec import DOCUMENT
from reconciler.state.rows import MirrorRow, PublishRow, SnapshotRow

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
MIRROR_SPEC = {"url": "http://x/debian", "distribution": "stable", "keyrings": ["/k.gpg"]}


def doc(kind: str, name: str, spec: dict, **meta):
    return DOCUMENT.validate_python({"apiVersion": "reconciler/v1", "kind": kind,
                                     "metadata": {"name": name, **meta}, "spec": spec})


def specs(*docs) -> Specs:
    out = Specs()
    for d in docs:
        out.by_kind(d.kind)[d.metadata.name] = d
    return out


def mirror_row(name, *, owner="default", protect=False, spec=None, complete=True, count=10) -> MirrorRow:
    full = doc("Mirror", name, spec or MIRROR_SPEC).spec.model_dump(mode="json")
    return MirrorRow(1, name, owner, full, protect, "d", "ready", complete, "r", None, {}, None, None, "t", "t", count)


def snap_row(name, *, mirror="m", owner="default", series=None, created="2026-11-20T00:00:00+00:00",
             spec=None, protect=False) -> SnapshotRow:
    full = doc("Snapshot", name, spec or {"mirror": mirror}).spec.model_dump(mode="json")
    return SnapshotRow(1, name, owner, full, protect, mirror, [], series, "d", created, 5)


def pub_row(name, sources, *, owner="default", spec=None) -> PublishRow:
    spec = spec or doc("Publish", name, {"distribution": "stable", "components": sources,
                                         "signing": {"skip": True}}).spec.model_dump(mode="json")
    digest = planner.inputs_digest(spec, {c: "d" for c in sources})  # what snap_row's lists give
    return PublishRow(1, name, owner, ".", "stable", spec, False, sources, digest, None, "t", 5)


def ops(p: planner.Plan) -> list[tuple[str, str, str]]:
    return [(c.op, c.kind, c.name) for c in p.changes]


def test_creates_in_dependency_order():
    s = specs(doc("Publish", "p", {"distribution": "stable", "components": {"main": "s"}, "signing": {"skip": True}}),
              doc("Snapshot", "s", {"mirror": "m"}), doc("Mirror", "m", MIRROR_SPEC))
    assert ops(planner.plan(s, planner.Observed())) == [
        ("update" if False else "create", "Mirror", "m"), ("create", "Snapshot", "s"), ("create", "Publish", "p")]


def test_up_to_date_mirror_and_upstream_change():
    s = specs(doc("Mirror", "m", MIRROR_SPEC))
    observed = planner.Observed(mirrors={"m": mirror_row("m")}, probes={"m": planner.Probe(changed=False)})
    assert ops(planner.plan(s, observed)) == [("noop", "Mirror", "m")]
    observed.probes["m"] = planner.Probe(changed=True, added=2, updated=1, removed=1, download_bytes=5_000_000)
    [change] = planner.plan(s, observed).changes
    assert change.op == "update" and "+2 ~1 -1" in change.reason and "5.0 MB" in change.reason


def test_plan_shows_the_refusals_the_update_would_make():
    s = specs(doc("Mirror", "m", MIRROR_SPEC))
    row = replace(mirror_row("m"), release_date="2026-11-20T00:00:00+00:00")
    shrunk = planner.Probe(changed=True, removed=3, release_date="2026-11-21T00:00:00+00:00")  # 3 of 10 > 20%
    observed = planner.Observed(mirrors={"m": row}, probes={"m": shrunk})
    [change] = planner.plan(s, observed).changes
    assert change.op == "error" and "maxRemovalPercent 20%" in change.reason
    assert planner.plan(s, observed, planner.Options(force=True)).changes[0].op == "update"
    observed.probes["m"] = planner.Probe(changed=True, release_date="2026-11-19T00:00:00+00:00")
    [change] = planner.plan(s, observed).changes
    assert change.op == "error" and "possible replay" in change.reason


def test_interrupted_update_is_never_up_to_date():
    s = specs(doc("Mirror", "m", MIRROR_SPEC))
    observed = planner.Observed(mirrors={"m": mirror_row("m", complete=False)},
                                probes={"m": planner.Probe(changed=False)})
    [change] = planner.plan(s, observed).changes
    assert change.op == "update" and "did not complete" in change.reason


def test_edit_names_the_fields():
    s = specs(doc("Mirror", "m", {**MIRROR_SPEC, "filter": "nginx", "components": ["main"]}))
    observed = planner.Observed(mirrors={"m": mirror_row("m")}, probes={"m": planner.Probe(changed=True)})
    [change] = planner.plan(s, observed).changes
    assert change.op == "edit" and change.detail["fields"] == ["components", "filter"]


def test_drops_users_first_and_refuses_in_use():
    observed = planner.Observed(mirrors={"m": mirror_row("m")}, snapshots={"s": snap_row("s")},
                                publishes={"p": pub_row("p", {"main": "s"})})
    assert ops(planner.plan(specs(), observed)) == [("drop", "Publish", "p"), ("drop", "Snapshot", "s"),
                                                    ("drop", "Mirror", "m")]
    keep_snapshot = specs(doc("Snapshot", "s", {"mirror": "m"}))
    [*_, mirror_change] = planner.plan(keep_snapshot, observed).changes
    assert mirror_change.op == "error" and "snapshot/s" in mirror_change.reason
    forced = planner.plan(keep_snapshot, observed, planner.Options(force=True))
    assert forced.changes[-1].op == "drop"


def test_other_owners_objects_are_not_managed_but_still_block():
    observed = planner.Observed(mirrors={"m": mirror_row("m"), "theirs": mirror_row("theirs", owner="team-b")},
                                snapshots={"s": snap_row("s", owner="team-b")})
    p = planner.plan(specs(), observed)
    assert ("unmanaged", "Mirror", "theirs") in ops(p) and ("unmanaged", "Snapshot", "s") in ops(p)
    [mirror_change] = [c for c in p.changes if c.name == "m"]
    assert mirror_change.op == "error" and "snapshot/s" in mirror_change.reason


def test_protected_objects_are_never_dropped_even_forced():
    observed = planner.Observed(mirrors={"m": mirror_row("m", protect=True)})
    [change] = planner.plan(specs(), observed, planner.Options(force=True)).changes
    assert change.op == "error" and "protected" in change.reason


def test_changed_snapshot_is_an_error_or_a_replace():
    s = specs(doc("Snapshot", "s", {"mirror": "m", "filter": "nginx"}), doc("Mirror", "m", MIRROR_SPEC))
    observed = planner.Observed(mirrors={"m": mirror_row("m")}, snapshots={"s": snap_row("s")},
                                probes={"m": planner.Probe(changed=False)})
    change = planner.plan(s, observed).changes[1]
    assert change.op == "error" and "--replace s" in change.reason
    replaced = planner.plan(s, observed, planner.Options(replace=frozenset({"s"}))).changes[1]
    assert replaced.op == "replace" and replaced.detail["fields"] == ["filter"]


def test_rename_keeps_the_row_and_publishes_follow():
    s = specs(doc("Mirror", "new", MIRROR_SPEC, renamedFrom="old"), doc("Snapshot", "s2", {"mirror": "new"},
                                                                        renamedFrom="s"),
              doc("Publish", "p", {"distribution": "stable", "components": {"main": "s2"}, "signing": {"skip": True}}))
    observed = planner.Observed(mirrors={"old": mirror_row("old")}, snapshots={"s": snap_row("s", mirror="old")},
                                publishes={"p": pub_row("p", {"main": "s"})}, probes={"new": planner.Probe(changed=False)})
    result = ops(planner.plan(s, observed))
    assert result[:2] == [("rename", "Mirror", "new"), ("rename", "Snapshot", "s2")]
    assert ("noop", "Mirror", "new") in result and ("noop", "Snapshot", "s2") in result
    assert not any(op == "drop" for op, _k, _n in result)


SERIES = {"mirror": "m", "series": {"every": "1d", "keep": 2}}


@pytest.mark.parametrize("members, expected", [
    ({}, [("create", "Snapshot", "daily-20261125")]),
    ({"daily-20261125": "2026-11-25T01:00:00+00:00"}, [("noop", "Snapshot", "daily")]),
    ({"daily-20261123": "2026-11-23T00:00:00+00:00", "daily-20261124": "2026-11-24T00:00:00+00:00"},
     [("create", "Snapshot", "daily-20261125"), ("drop", "Snapshot", "daily-20261123")]),
])
def test_series_takes_members_and_keeps_only_keep(members, expected):
    s = specs(doc("Snapshot", "daily", SERIES), doc("Mirror", "m", MIRROR_SPEC))
    observed = planner.Observed(mirrors={"m": mirror_row("m")}, probes={"m": planner.Probe(changed=False)},
                                snapshots={n: snap_row(n, series="daily", created=c) for n, c in members.items()})
    got = [o for o in ops(planner.plan(s, observed, planner.Options(now=NOW))) if o[1] == "Snapshot"]
    assert got == expected


def test_publish_follows_series_latest_and_retention_spares_published_members():
    s = specs(doc("Snapshot", "daily", SERIES), doc("Mirror", "m", MIRROR_SPEC),
              doc("Publish", "p", {"distribution": "stable", "components": {"main": "daily@latest"},
                                   "signing": {"skip": True}}))
    members = {"daily-20261122": "2026-11-22T00:00:00+00:00", "daily-20261124": "2026-11-24T00:00:00+00:00"}
    observed = planner.Observed(
        mirrors={"m": mirror_row("m")}, probes={"m": planner.Probe(changed=False)},
        snapshots={n: snap_row(n, series="daily", created=c) for n, c in members.items()},
        publishes={"p": pub_row("p", {"main": "daily-20261124"})})
    changes = {(c.kind, c.name): c for c in planner.plan(s, observed, planner.Options(now=NOW)).changes}
    assert changes[("Publish", "p")].op == "switch"
    assert changes[("Publish", "p")].detail["sources"] == {"main": "daily-20261125"}
    assert changes[("Snapshot", "daily-20261122")].op == "drop"
    assert ("Snapshot", "daily-20261124") not in changes or changes[("Snapshot", "daily-20261124")].op != "drop"


def test_plan_json_shape():
    s = specs(doc("Mirror", "m", MIRROR_SPEC))
    data = planner.plan(s, planner.Observed()).to_json()
    assert data["hasChanges"] is True and data["errors"] == 0
    assert data["changes"][0]["op"] == "create" and data["summary"] == {"create": 1}


def test_a_publish_stored_before_compression_existed_is_up_to_date_at_the_defaults():
    inputs_digest = planner.inputs_digest
    declared = {"distribution": "stable", "components": {"main": "s"}, "signing": {"skip": True}}
    stored = pub_row("p", {"main": "s"})
    stored.spec.pop("compression")  # as a version before the field wrote it
    assert stored.inputs_digest == inputs_digest(stored.spec, {"main": "d"})
    observed = planner.Observed(snapshots={"s": snap_row("s")}, publishes={"p": stored})
    declared_all = [doc("Mirror", "m", MIRROR_SPEC), doc("Snapshot", "s", {"mirror": "m"})]
    observed.mirrors = {"m": mirror_row("m")}
    observed.probes = {"m": planner.Probe(changed=False)}
    assert ("noop", "Publish", "p") in ops(planner.plan(specs(*declared_all, doc("Publish", "p", declared)), observed))
    now = doc("Publish", "p", declared).spec.model_dump(mode="json")
    assert inputs_digest(now, {"main": "d"}) == inputs_digest(stored.spec, {"main": "d"})
    changed = {**declared, "compression": {"xz": 6}}
    [change] = [c for c in planner.plan(specs(*declared_all, doc("Publish", "p", changed)), observed).changes
                if c.kind == "Publish"]
    assert change.op == "update" and "compression" in change.reason
    assert inputs_digest(doc("Publish", "p", changed).spec.model_dump(mode="json"), {"main": "d"}) != \
        inputs_digest(stored.spec, {"main": "d"})


def test_a_publish_whose_snapshot_content_changed_under_the_same_name_is_switched():
    declared = [doc("Mirror", "m", MIRROR_SPEC), doc("Snapshot", "s", {"mirror": "m"}),
                doc("Publish", "p", {"distribution": "stable", "components": {"main": "s"}, "signing": {"skip": True}})]
    stored = pub_row("p", {"main": "s"})
    replaced = replace(snap_row("s"), list_digest="other")  # a --replace that the publish did not follow yet
    observed = planner.Observed(mirrors={"m": mirror_row("m")}, snapshots={"s": replaced}, publishes={"p": stored},
                                probes={"m": planner.Probe(changed=False)})
    [change] = [c for c in planner.plan(specs(*declared), observed).changes if c.kind == "Publish"]
    assert change.op == "switch" and "other packages" in change.reason


def test_pool_damage_becomes_repairs_and_files_no_mirror_lists_become_snapshot_errors():
    """The caller gathers what the pool lost; the plan decides: the mirror listing a file
    re-fetches it, the publishes linking it link again, a file no declared mirror lists
    is an error on each snapshot holding it."""
    s = specs(doc("Mirror", "m", MIRROR_SPEC), doc("Snapshot", "s", {"mirror": "m"}),
              doc("Snapshot", "t", {"mirror": "m"}),
              doc("Publish", "p", {"distribution": "stable", "components": {"main": "s"}, "signing": {"skip": True}}))
    observed = planner.Observed(
        mirrors={"m": mirror_row("m")}, snapshots={"s": snap_row("s"), "t": snap_row("t")},
        publishes={"p": pub_row("p", {"main": "s"})}, probes={"m": planner.Probe(changed=False)},
        pool=planner.PoolDamage(mirrors={"m": 2}, publishes={"p": 2},
                                lost={"ab" * 32: ("pool/main/x/x_1_amd64.deb", ["t"])}))
    changes = {(c.kind, c.name): c for c in planner.plan(s, observed).changes}
    assert (changes[("Mirror", "m")].op, changes[("Mirror", "m")].reason) == \
        ("repair", "2 pool file(s) missing, re-fetched from upstream")
    assert changes[("Publish", "p")].op == "repair" and "re-link 2 pool file(s)" in changes[("Publish", "p")].reason
    assert changes[("Snapshot", "s")].op == "noop"
    lost = changes[("Snapshot", "t")]
    assert lost.op == "error" and "pool/main/x/x_1_amd64.deb (abababababab)" in lost.reason
    assert not planner.plan(s, planner.Observed(mirrors=observed.mirrors, snapshots=observed.snapshots,
                                                publishes=observed.publishes, probes=observed.probes)).has_changes


# --- files named by path are compared by what they hold ---------------------------------------


def _keyed_publish(path: str) -> dict:
    return {"distribution": "stable", "components": {"main": "s"}, "signing": {"keyFile": path}}


def _publish_world(stored_digest_key: str | None):
    """A mirror, a snapshot and a publish signed from /a/key.asc, stored with the inputs
    digest of a key file holding `stored_digest_key` (None: a row from before key files
    were compared by content, whose digest covers the path)."""
    spec = doc("Publish", "p", _keyed_publish("/a/key.asc")).spec.model_dump(mode="json")
    row = replace(pub_row("p", {"main": "s"}, spec=spec),
                  inputs_digest=planner.inputs_digest(spec, {"main": "d"}, stored_digest_key))
    observed = planner.Observed(mirrors={"m": mirror_row("m")}, snapshots={"s": snap_row("s")}, publishes={"p": row},
                                probes={"m": planner.Probe(changed=False)})
    return [doc("Mirror", "m", MIRROR_SPEC), doc("Snapshot", "s", {"mirror": "m"})], observed


def _publish_change(declared, observed, path: str, held: str) -> planner.Change:
    s = specs(*declared, doc("Publish", "p", _keyed_publish(path)))
    s.digests = {path: held, "/k.gpg": None}
    return next(c for c in planner.plan(s, observed).changes if c.kind == "Publish")


def test_a_moved_key_file_with_the_same_content_is_no_change_and_other_content_is():
    declared, observed = _publish_world("K")
    assert _publish_change(declared, observed, "/b/key.asc", "K").op == "noop"
    change = _publish_change(declared, observed, "/a/key.asc", "K2")
    assert change.op == "switch" and "signing key file holds another key" in change.reason


def test_a_publish_stored_before_key_contents_were_compared_is_up_to_date_at_its_path():
    declared, observed = _publish_world(None)
    assert _publish_change(declared, observed, "/a/key.asc", "K").op == "noop"
    assert _publish_change(declared, observed, "/b/key.asc", "K").op == "switch"  # moved: it cannot tell


def _mirror_change(row: MirrorRow, keyring: str, held: str | None, probe=planner.Probe(changed=False)):
    s = specs(doc("Mirror", "m", {**MIRROR_SPEC, "keyrings": [keyring]}))
    s.digests = {keyring: held}
    return planner.plan(s, planner.Observed(mirrors={"m": row}, probes={"m": probe})).changes[0]


def test_mirror_keyrings_are_compared_by_content_once_recorded_and_by_path_before():
    recorded = replace(mirror_row("m"), upstream={"keyrings": ["K"]})
    assert _mirror_change(recorded, "/elsewhere/k.gpg", "K").op == "noop"
    change = _mirror_change(recorded, "/k.gpg", "K2")
    assert change.op == "edit" and change.detail["fields"] == ["keyrings"]
    legacy = mirror_row("m")  # stored before the sync recorded keyring digests
    assert _mirror_change(legacy, "/k.gpg", "K").op == "noop"
    assert _mirror_change(legacy, "/elsewhere/k.gpg", "K").op == "edit"


def test_a_moved_file_url_serving_the_same_release_is_no_edit():
    row = mirror_row("m", spec={**MIRROR_SPEC, "url": "file:///a/upstream"})
    moved = doc("Mirror", "m", {**MIRROR_SPEC, "url": "file:///b/upstream"})
    same = planner.Observed(mirrors={"m": row}, probes={"m": planner.Probe(changed=False, release_sha256="r")})
    assert planner.plan(specs(moved), same).changes[0].op == "noop"
    other = planner.Observed(mirrors={"m": row}, probes={"m": planner.Probe(changed=True, release_sha256="r2")})
    change = planner.plan(specs(moved), other).changes[0]
    assert change.op == "edit" and change.detail["fields"] == ["url"]
    assert not planner.same_content({**MIRROR_SPEC, "url": "http://a/"}, {**MIRROR_SPEC, "url": "http://b/"}, "r", "r")
