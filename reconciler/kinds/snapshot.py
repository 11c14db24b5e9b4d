"""The Snapshot kind: an immutable package list taken from a mirror or merged (pure part)."""

from __future__ import annotations

from pydantic import Field

from reconciler import spec
from reconciler.kinds.registry import Kind, Shape, text


def view(row) -> dict:
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


def requires(doc) -> list[tuple[str, str]]:
    """A snapshot is taken from its mirror, or merged from its snapshots."""
    if doc.spec.mirror:
        return [("Mirror", doc.spec.mirror)]
    return [("Snapshot", s) for s in doc.spec.snapshots]


class SnapshotView(Shape):
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


KIND = Kind(
    name="Snapshot", word="snapshot", plural="snapshots", doc=spec.SnapshotDoc, view=view, model=SnapshotView,
    requires=requires, renamable=True, users="publishes",
    list_help="List snapshots with their package counts.  Example: reconciler list snapshots",
    columns=(("NAME", lambda i: i["name"]), ("PACKAGES", lambda i: str(i["numPackages"])),
             ("SOURCE", lambda i: f"mirror/{i['mirror']}" if i["mirror"] else "merge " + text(i["snapshots"])),
             ("DIGEST", lambda i: (i["digest"] or "")[:12] or "-"), ("CREATED", lambda i: i["createdAt"] or "-")),
)
