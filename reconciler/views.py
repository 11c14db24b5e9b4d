"""Rows → the stable JSON shapes that `--json` and the HTTP API both return.

One place, so the CLI and the API can never disagree on a field name. Every item has
`name` and `numPackages`.
"""

from __future__ import annotations

from pydantic import Field

from reconciler import kinds
from reconciler.debian import query
from reconciler.errors import BadRequest, NotFound
from reconciler.kinds.mirror import MirrorView  # noqa: F401 - the kinds' response models, by name
from reconciler.kinds.publish import PublishView  # noqa: F401
from reconciler.kinds.snapshot import SnapshotView  # noqa: F401
from reconciler.state.stores import Store


# The views of the kinds live with their kinds (kinds/mirror.py, ...); these names stay
# for the callers that want one by name.
mirror = kinds.get("Mirror").view
snapshot = kinds.get("Snapshot").view
publish = kinds.get("Publish").view
text = kinds.text


def kind_of(word: str) -> kinds.Kind:
    """The kind a command line names (`mirror`); BadRequest naming the kinds there are."""
    kind = kinds.of_word(word)
    if kind is None:
        raise BadRequest(f"unknown kind {word!r}: give {kinds.words()}")
    return kind


def table(word: str, items: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of `list KIND` as text: the columns an operator scans first."""
    columns = kind_of(word).columns
    return [header for header, _cell in columns], [[cell(i) for _header, cell in columns] for i in items]


# -- packages: `reconciler packages` and /api/.../packages ---------------------------


def package_lists(store: Store, where: str | None) -> list[tuple[str, str | None, list[int]]]:
    """(where, component, package ids) of each list `where` names: `mirror/NAME`,
    `snapshot/NAME`, `publish/NAME` (one per component), or every mirror and snapshot
    when `where` is None (a publish serves its snapshots' lists)."""
    if where is None:
        return [(f"{kind.word}/{r.name}", None, list(store.lists.ids(r.list_digest)))
                for kind in kinds.all() if not kind.components for r in kind.rows(store).list()]
    word, slash, name = where.partition("/")
    kind = kinds.of_word(word)
    if not slash or kind is None or not name:
        raise BadRequest(f"cannot list packages in {where!r}: give {kinds.words(suffix='/NAME')}")
    row = kind.rows(store).get(name)
    if row is None:
        raise NotFound(f"{word} {name!r} does not exist (`reconciler list {kind.plural}` names them)")
    if not kind.components:
        return [(where, None, list(store.lists.ids(row.list_digest)))]
    out: list[tuple[str, str | None, list[int]]] = []
    for comp, snapshot_name in sorted(row.sources.items()):
        snap = store.snapshots.get(snapshot_name)
        if snap is None:
            raise NotFound(f"{where}: component {comp} serves snapshot {snapshot_name!r}, which "
                           "no longer exists; run apply to republish it")
        out.append((where, comp, list(store.lists.ids(snap.list_digest))))
    return out


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
# The kinds' models live with their views, in kinds/.


_Shape = kinds.Shape


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
