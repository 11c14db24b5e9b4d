"""Rows → the stable JSON shapes that `--json` and the HTTP API both return.

One place, so the CLI and the API can never disagree on a field name. Every item has
`name` and `numPackages`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from reconciler.debian import query
from reconciler.errors import BadRequest, NotFound
from reconciler.state.rows import MirrorRow, PublishRow, SnapshotRow
from reconciler.state.stores import Store


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
        published = store.publishes.get(name)
        if published is None:
            raise NotFound(f"publish {name!r} does not exist (`reconciler list publishes` names them)")
        out: list[tuple[str, str | None, list[int]]] = []
        for comp, snapshot_name in sorted(published.sources.items()):
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


def task(row: dict) -> dict:
    """A task row (snake_case columns) in the camelCase every other shape uses."""
    return {_camel(key): value for key, value in row.items()}


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


# -- the shapes above as models: the API's response schemas in /openapi.json ----------
# tests/test_api_shapes.py checks that each model has exactly the keys its view returns.


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MirrorView(_Shape):
    name: str
    url: str | None = Field(description="Archive root, as the spec gives it")
    distribution: str | None
    components: list[str] = Field(description="As declared, else all the upstream Release lists")
    architectures: list[str] = Field(description="As declared, else all the upstream Release lists")
    filter: str | None
    numPackages: int
    status: str = Field(description="ready, or failed (lastError says why; the previous list is kept)")
    updateComplete: bool
    lastUpdate: str | None = Field(description="ISO time of the last successful update")
    lastError: str | None
    upstreamDate: str | None = Field(description="Date of the upstream Release last read")
    owner: str
    protect: bool
    createdAt: str


class SnapshotView(_Shape):
    name: str
    numPackages: int
    digest: str = Field(description="SHA256 of the package list: equal digests, equal content")
    mirror: str | None = Field(description="The mirror it was taken from (null for a merge)")
    snapshots: list[str] = Field(description="The snapshots it merges (empty when taken from a mirror)")
    series: str | None = Field(description="The series it belongs to")
    filter: str | None
    owner: str
    protect: bool
    createdAt: str


class PublishView(_Shape):
    name: str
    prefix: str
    distribution: str
    components: dict[str, str] = Field(description="component -> the snapshot it serves")
    numPackages: int
    releaseSha256: str | None
    owner: str
    protect: bool
    publishedAt: str


class TaskView(_Shape):
    id: int
    name: str
    resources: list[str] = Field(description="The lock keys the task held")
    state: str = Field(description="queued, running, succeeded or failed")
    pid: int | None
    host: str | None
    createdAt: str
    startedAt: str | None
    endedAt: str | None
    output: str
    error: str | None


class PackageView(_Shape):
    name: str
    version: str
    arch: str
    type: str = Field(description="deb, udeb or source")
    in_: str = Field(alias="in", description="The list it is in: mirror/NAME, snapshot/NAME, publish/NAME")
    component: str | None = Field(description="The component of a publish (null otherwise)")


class PackagePage(_Shape):
    total: int = Field(description="Matching packages in all pages")
    offset: int
    limit: int | None
    query: str | None
    in_: str | None = Field(alias="in")
    packages: list[PackageView]
