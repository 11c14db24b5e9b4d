"""Rows → the stable JSON shapes that `--json` and the HTTP API both return.

One place, so the CLI and the API can never disagree on a field name. Every item has
`name` and `numPackages`.
"""

from __future__ import annotations

from reconciler.state.stores import MirrorRow, PublishRow, SnapshotRow


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
