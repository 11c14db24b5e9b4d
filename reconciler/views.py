"""Rows → the stable JSON shapes that `--json` and the HTTP API both return.

One place, so the CLI and the API can never disagree on a field name. Every item has
`name` and `numPackages`.
"""

from __future__ import annotations

from reconciler.debian import query
from reconciler.errors import BadRequest, NotFound
from reconciler.state.stores import MirrorRow, PublishRow, SnapshotRow, Store


def mirror(row: MirrorRow) -> dict:
    spec = row.spec
    return {
        "name": row.name,
        "url": spec.get("url"),
        "distribution": spec.get("distribution"),
        "components": spec.get("components") or row.upstream.get("components", []),
        "architectures": spec.get("architectures") or row.upstream.get("architectures", []),
        "filter": spec.get("filter"),
        "numPackages": row.num_packages,
        "status": row.status,
        "updateComplete": row.update_complete,
        "lastUpdate": row.last_update,
        "lastError": row.last_error,
        "upstreamDate": row.release_date,
        "owner": row.owner,
        "protect": row.protect,
        "createdAt": row.created_at,
    }


def snapshot(row: SnapshotRow) -> dict:
    return {
        "name": row.name,
        "numPackages": row.num_packages,
        "digest": row.list_digest,
        "mirror": row.source_mirror,
        "snapshots": row.source_snapshots,
        "series": row.series,
        "filter": row.spec.get("filter"),
        "owner": row.owner,
        "protect": row.protect,
        "createdAt": row.created_at,
    }


def publish(row: PublishRow) -> dict:
    return {
        "name": row.name,
        "prefix": row.prefix,
        "distribution": row.distribution,
        "components": row.sources,
        "numPackages": row.num_packages,
        "releaseSha256": row.release_sha256,
        "owner": row.owner,
        "protect": row.protect,
        "publishedAt": row.published_at,
    }


def rows_for(kind: str):
    """(list function name on the store, view) for a kind given on the command line."""
    return {
        "mirror": ("mirrors", mirror),
        "snapshot": ("snapshots", snapshot),
        "publish": ("publishes", publish),
    }[kind]


def text(value) -> str:
    """One value as `show` prints it: lists as comma lists, mappings as k=v, None as `-`."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={text(v)}" for k, v in value.items())
    return str(value)


def table(kind: str, items: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of `list KIND` as text: the columns an operator scans first."""
    if kind == "mirror":
        header = ["NAME", "PACKAGES", "STATUS", "UPDATED", "DISTRIBUTION", "COMPONENTS", "ARCHITECTURES", "URL"]
        rows = [[i["name"], str(i["numPackages"]), i["status"] or "-", i["lastUpdate"] or "never",
                 i["distribution"] or "-", text(i["components"]), text(i["architectures"]), i["url"] or "-"]
                for i in items]
    elif kind == "snapshot":
        header = ["NAME", "PACKAGES", "SOURCE", "DIGEST", "CREATED"]
        rows = [[i["name"], str(i["numPackages"]),
                 f"mirror/{i['mirror']}" if i["mirror"] else "merge " + text(i["snapshots"]),
                 (i["digest"] or "")[:12] or "-", i["createdAt"] or "-"] for i in items]
    else:
        header = ["NAME", "PACKAGES", "PREFIX", "DISTRIBUTION", "COMPONENTS", "PUBLISHED"]
        rows = [[i["name"], str(i["numPackages"]), i["prefix"], i["distribution"], text(i["components"]),
                 i["publishedAt"] or "-"] for i in items]
    return header, rows


# -- packages: `reconciler packages` and /api/.../packages ---------------------------

PACKAGE_KINDS = ("mirror", "snapshot", "publish")


def package_lists(store: Store, where: str | None) -> list[tuple[str, str | None, list[int]]]:
    """(where, component, package ids) of each list `where` names: `mirror/NAME`,
    `snapshot/NAME`, `publish/NAME` (one per component), or every mirror and snapshot
    when `where` is None (a publish serves its snapshots' lists)."""
    if where is None:
        return ([(f"mirror/{r.name}", None, list(store.lists.ids(r.list_digest))) for r in store.mirrors.list()]
                + [(f"snapshot/{r.name}", None, list(store.lists.ids(r.list_digest)))
                   for r in store.snapshots.list()])
    kind, slash, name = where.partition("/")
    if not slash or kind not in PACKAGE_KINDS or not name:
        raise BadRequest(f"cannot list packages in {where!r}: give mirror/NAME, snapshot/NAME or publish/NAME")
    if kind == "publish":
        row = store.publishes.get(name)
        if row is None:
            raise NotFound(f"publish {name!r} does not exist (`reconciler list publishes` names them)")
        out = []
        for comp, snapshot_name in sorted(row.sources.items()):
            snap = store.snapshots.get(snapshot_name)
            if snap is None:
                raise NotFound(f"publish/{name}: component {comp} serves snapshot {snapshot_name!r}, which "
                               "no longer exists; run apply to republish it")
            out.append((where, comp, list(store.lists.ids(snap.list_digest))))
        return out
    row = (store.mirrors if kind == "mirror" else store.snapshots).get(name)
    if row is None:
        raise NotFound(f"{kind} {name!r} does not exist (`reconciler list {kind}s` names them)")
    return [(where, None, list(store.lists.ids(row.list_digest)))]


def packages(store: Store, text: str | None = None, where: str | None = None, *,
             limit: int | None = None, offset: int = 0) -> dict:
    """Packages in the lists `where` names whose stanza matches the aptly query `text`
    (all without one), sorted by where, component, name, version (Debian order), arch.

    The shape `--json` and the API return: {"total", "offset", "limit", "query", "in",
    "packages": [{"name", "version", "arch", "type", "in", "component"}]}."""
    matcher = query.parse(text) if text and text.strip() else None
    rows = []
    for source, comp, ids in package_lists(store, where):
        if matcher is None:
            found = ((type_, name, arch, version) for _id, type_, name, arch, version in store.packages.versions(ids))
        else:
            found = ((p.type, p.name, p.arch, p.version) for _id, p in store.packages.load(ids) if matcher.matches(p))
        rows += [{"name": name, "version": version, "arch": arch, "type": type_, "in": source, "component": comp}
                 for type_, name, arch, version in found]
    rows.sort(key=lambda r: (r["in"], r["component"] or "", r["name"], query.version_key(r["version"]),
                             r["arch"], r["type"]))
    page = rows[offset:] if limit is None else rows[offset:offset + limit]
    return {"total": len(rows), "offset": offset, "limit": limit, "query": matcher and str(text).strip(),
            "in": where, "packages": page}
