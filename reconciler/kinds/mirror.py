"""The Mirror kind: a copy of an upstream APT archive (its pure part; see kinds.registry)."""

from __future__ import annotations

from pydantic import Field

from reconciler import spec
from reconciler.kinds.registry import Kind, Shape, text


def view(row) -> dict:
    spec_ = row.spec
    return {
        "name": row.name,
        "url": spec_.get("url"),
        "distribution": spec_.get("distribution"),
        "components": spec_.get("components") or row.upstream.get("components", []),
        "architectures": spec_.get("architectures") or row.upstream.get("architectures", []),
        "filter": spec_.get("filter"),
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


class MirrorView(Shape):
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


KIND = Kind(
    name="Mirror", model=MirrorView, word="mirror", plural="mirrors", doc=spec.MirrorDoc, view=view, renamable=True, users="snapshots",
    list_help="List mirrors with their package counts.  Example: reconciler list mirrors --json",
    columns=(("NAME", lambda i: i["name"]), ("PACKAGES", lambda i: str(i["numPackages"])),
             ("STATUS", lambda i: i["status"] or "-"), ("UPDATED", lambda i: i["lastUpdate"] or "never"),
             ("DISTRIBUTION", lambda i: i["distribution"] or "-"), ("COMPONENTS", lambda i: text(i["components"])),
             ("ARCHITECTURES", lambda i: text(i["architectures"])), ("URL", lambda i: i["url"] or "-")),
)
