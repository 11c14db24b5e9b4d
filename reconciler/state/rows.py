"""The rows the stores return: plain values, the same whatever database holds them.

The planner and the views read these and import no database module (an import-linter
contract says so): a backend is free to store them as it likes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MirrorRow:
    id: int
    name: str
    owner: str
    spec: dict
    protect: bool
    list_digest: str | None
    status: str
    update_complete: bool
    release_sha256: str | None
    release_date: str | None
    upstream: dict
    last_update: str | None
    last_error: str | None
    created_at: str
    updated_at: str
    num_packages: int


@dataclass(frozen=True)
class SnapshotRow:
    id: int
    name: str
    owner: str
    spec: dict
    protect: bool
    source_mirror: str | None
    source_snapshots: list[str]
    series: str | None
    list_digest: str
    created_at: str
    num_packages: int


@dataclass(frozen=True)
class PublishRow:
    id: int
    name: str
    owner: str
    prefix: str
    distribution: str
    spec: dict
    protect: bool
    sources: dict[str, str]
    inputs_digest: str
    release_sha256: str | None
    published_at: str
    num_packages: int
    linked_ns: int | None = None  # pool files recorded up to then (time.time_ns) are what the tree links
