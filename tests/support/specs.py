"""Spec documents the end-to-end tests write: the one Mirror they all start from, and
the plain Snapshot and Publish that take it further."""

from __future__ import annotations


def mirror(name: str, url: str, keyring: str, *, meta: str = "", extra: str = "") -> str:
    """A Mirror of `url`'s stable/main for amd64, trusted through `keyring`.

    `meta` continues the metadata mapping (", protect: true"); `extra` adds spec lines
    (each indented two spaces and ending in a newline)."""
    return f"""\
apiVersion: reconciler/v1
kind: Mirror
metadata: {{name: {name}{meta}}}
spec:
  url: {url}
  distribution: stable
  components: [main]
  architectures: [amd64]
  keyrings: [{keyring}]
{extra}"""


def snapshot(name: str, mirror: str) -> str:
    """A Snapshot of mirror `mirror`."""
    return f"""\
apiVersion: reconciler/v1
kind: Snapshot
metadata: {{name: {name}}}
spec: {{mirror: {mirror}}}
"""


def publish(name: str, snapshot: str, *, distribution: str = "stable") -> str:
    """An unsigned Publish of `snapshot` as component main at the publish root."""
    return f"""\
apiVersion: reconciler/v1
kind: Publish
metadata: {{name: {name}}}
spec:
  distribution: {distribution}
  components: {{main: {snapshot}}}
  signing: {{skip: true}}
"""
