"""The Publish kind: a signed APT tree serving snapshots as components (pure part)."""

from __future__ import annotations

from pydantic import Field

from reconciler import spec
from reconciler.kinds.registry import Kind, Shape, text


def view(row) -> dict:
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


def requires(doc) -> list[tuple[str, str]]:
    """A publish serves its components' snapshots (a series' newest for SERIES@latest)."""
    return [("Snapshot", s.removesuffix("@latest")) for s in doc.spec.components.values()]


class PublishView(Shape):
    name: str
    prefix: str
    distribution: str
    components: dict[str, str] = Field(description="component -> the snapshot it serves")
    numPackages: int
    releaseSha256: str | None
    owner: str
    protect: bool
    publishedAt: str


KIND = Kind(
    name="Publish", model=PublishView, word="publish", plural="publishes", doc=spec.PublishDoc, view=view, requires=requires,
    components=True, path_key=True, lock_key=lambda row: f"publish/{row.prefix}/{row.distribution}",
    list_help="List published trees.  Example: reconciler list publishes --json",
    columns=(("NAME", lambda i: i["name"]), ("PACKAGES", lambda i: str(i["numPackages"])),
             ("PREFIX", lambda i: i["prefix"]), ("DISTRIBUTION", lambda i: i["distribution"]),
             ("COMPONENTS", lambda i: text(i["components"])), ("PUBLISHED", lambda i: i["publishedAt"] or "-")),
)
