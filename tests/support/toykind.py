"""A kind that exists only in tests: `Tag`, a named text kept in a table of its own.

Registered in the kinds registry, it has to be picked up by the dispatch sites without
any of them naming it: the loader validates its documents, the planner plans it after
the built-in kinds, apply runs its changes as locked tasks, observe reads its rows, and
the CLI lists and shows it. Nothing here is a stand-in: its rows are real rows in the
root's real state database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from reconciler import kinds, spec
from reconciler.actions.result import Result, run
from reconciler.plan import Change

TABLE = "CREATE TABLE IF NOT EXISTS toy_tags (name TEXT PRIMARY KEY, text TEXT NOT NULL, owner TEXT NOT NULL)"


class TagSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class TagDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    apiVersion: Literal["reconciler/v1"]
    kind: Literal["Tag"]
    metadata: spec.Metadata
    spec: TagSpec


class TagView(kinds.Shape):
    name: str
    text: str
    numPackages: int


@dataclass(frozen=True)
class TagRow:
    name: str
    text: str
    owner: str
    protect: bool = False
    num_packages: int = 0


class Tags:
    """The rows of the kind, in a table of their own in the state database."""

    def __init__(self, store):
        self.db = store.db
        self.db.execute(TABLE)

    def list(self) -> list[TagRow]:
        return [TagRow(*r) for r in self.db.execute("SELECT name, text, owner FROM toy_tags ORDER BY name")]

    def get(self, name: str) -> TagRow | None:
        return next((r for r in self.list() if r.name == name), None)

    def create(self, name: str, text: str, owner: str) -> None:
        self.db.execute("INSERT INTO toy_tags (name, text, owner) VALUES (?, ?, ?)", (name, text, owner))


def view(row: TagRow) -> dict:
    return {"name": row.name, "text": row.text, "numPackages": row.num_packages}


def plan_tags(planning) -> list[Change]:
    rows = planning.rows["Tag"]
    return [Change("noop", "Tag", name, "exists") if name in rows else Change("create", "Tag", name, doc.spec.text)
            for name, doc in sorted(planning.specs.by_kind("Tag").items())]


def drop_tags(planning) -> list[Change]:
    declared = planning.specs.by_kind("Tag")
    return [Change("drop", "Tag", name, "no longer declared") for name in sorted(planning.rows["Tag"])
            if name not in declared]


def apply_tag(ctx, specs, change, options, echo) -> Result | None:
    if change.op != "create":
        return None
    text = specs.by_kind("Tag")[change.name].spec.text

    def body(task) -> Result:
        with task.transaction() as store:
            Tags(store).create(change.name, text, options.owner)
        return Result(f"tag/{change.name}: created")

    return run(ctx, f"create tag {change.name}", [f"tag/{change.name}"], body, pool=False)


KIND = kinds.Kind(
    name="Tag", word="tag", plural="tags", doc=TagDoc, view=view, model=TagView,
    columns=(("NAME", lambda i: i["name"]), ("TEXT", lambda i: i["text"])),
    list_help="List tags.  Example: reconciler list tags", store=Tags,
    requires=lambda doc: [("Mirror", doc.metadata.name)],
    parts=kinds.Parts(plan=plan_tags, drops=drop_tags, apply=apply_tag),
)


def main() -> None:
    """The real CLI with the toy kind registered first: `python -c 'from tests.support
    import toykind; toykind.main()' ARGS`."""
    kinds.register(KIND)
    from reconciler.cli import main as cli_main

    cli_main()
