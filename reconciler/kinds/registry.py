"""The registry of kinds: what the dispatch sites look a kind up in, in dependency order.

A kind is declared once (`Kind`) and the loader, the planner, the lock order, the views,
the CLI's `list`/`show`/`packages`, the API's routes and apply's dispatch all iterate or
look up this registry instead of naming "Mirror", "Snapshot" and "Publish" themselves.

The layering splits a kind in two. The pure part (its document model, words, lock key,
JSON view and response model, list columns, what it is made from) is the `Kind` itself
and lives below the loader, so every layer may read it. The executable part belongs to
layers the planner must not import, so those layers attach it (`attach`, into `Parts`)
when they are imported: `plan` its planning rules (`plan`, `drops`), `reconcile` the
action that applies each change (`apply`), what a plan preview adds (`describe`) and
the API's drop by name (`drop`). A kind without a part is skipped by that dispatch site.

Registration order is dependency order and it is fixed at import: `locks.KINDS` (the
lock order) and the CLI's commands are built from the kinds registered when they are
imported, so a new kind registers in `reconciler/kinds/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict


class Shape(BaseModel):
    """The base of the API's response models: no key beyond those declared."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _name_key(word: str) -> Callable[[Any], str]:
    return lambda row: f"{word}/{row.name}"


@dataclass(frozen=True)
class Parts:
    """What the upper layers attach to a kind (see the module docstring)."""

    # plan: (planning) -> the kind's creates and updates; `plan.Planning` is its argument
    plan: Callable[..., list] | None = None
    # drops: (planning) -> the drops of its objects no longer declared (planned users first)
    drops: Callable[..., list] | None = None
    # apply: (ctx, specs, change, options, echo) -> Result | None: runs one change of the kind
    apply: Callable[..., Any] | None = None
    # describe: (store, specs, change, upcoming, diffs) -> None: what a plan preview adds to a change
    describe: Callable[..., None] | None = None
    # drop: (ctx, name, *, force) -> Result: the API's DELETE /api/KINDS/NAME
    drop: Callable[..., Any] | None = None


@dataclass(frozen=True)
class Kind:
    name: str  # the spec document's `kind` and `Change.kind`: "Mirror"
    word: str  # lock keys, `show KIND`, `packages --in KIND/NAME`: "mirror"
    plural: str  # Specs/Observed field, store accessor, `list KINDS`, /api/KINDS: "mirrors"
    doc: type[BaseModel]  # the pydantic model of its spec document
    view: Callable[[Any], dict]  # row -> the JSON shape `--json` and the API return
    model: type[BaseModel]  # that shape as a model: the API's response schema (tests/test_api_shapes.py)
    columns: tuple[tuple[str, Callable[[dict], str]], ...]  # `list` as text: (header, cell of a view)
    list_help: str  # the help of `list KINDS`
    lock_key: Callable[[Any], str] = field(default=None)  # type: ignore[assignment]  # row -> its lock key
    # (kind name, object name) of the declared objects it is made from: apply skips it when one failed
    requires: Callable[[Any], list[tuple[str, str]]] = lambda doc: []
    renamable: bool = False  # `metadata.renamedFrom` renames a row in place
    users: str = ""  # what may use an object of the kind, so that dropping it is refused ("snapshots")
    path_key: bool = False  # the API addresses it by a path of its own (PREFIX/DIST), not /api/KINDS/NAME
    # store -> the repository of its rows (list, get); default: the store's attribute named `plural`
    store: Callable[[Any], Any] | None = None
    components: bool = False  # its packages are its components' lists, not one list of its own
    parts: Parts = Parts()

    def __post_init__(self) -> None:
        if self.lock_key is None:
            object.__setattr__(self, "lock_key", _name_key(self.word))

    def rows(self, store) -> Any:
        """The store's repository of this kind's rows (`store.mirrors`)."""
        return self.store(store) if self.store is not None else getattr(store, self.plural)


_REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind after those registered so far: registration order is dependency order."""
    if kind.name in _REGISTRY or any(k.word == kind.word or k.plural == kind.plural for k in _REGISTRY.values()):
        raise ValueError(f"kind {kind.name} ({kind.word}, {kind.plural}) is registered already")
    _REGISTRY[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def attach(name: str, **parts: Callable) -> None:
    """Attach an upper layer's parts (`plan=`, `apply=`) to a registered kind."""
    kind = _REGISTRY[name]
    _REGISTRY[name] = replace(kind, parts=replace(kind.parts, **parts))


def all() -> list[Kind]:  # noqa: A001 - read qualified: kinds.all()
    """Every kind, in dependency order (users after what they are made from)."""
    return list(_REGISTRY.values())


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Kind:
    return _REGISTRY[name]


def find(name: str) -> Kind | None:
    return _REGISTRY.get(name)


def of_word(word: str) -> Kind | None:
    """The kind a command line or a KIND/NAME names (`mirror`), or None."""
    return next((k for k in _REGISTRY.values() if k.word == word), None)


def words(joiner: str = " or ", suffix: str = "") -> str:
    """`mirror, snapshot or publish` (each word + suffix), for messages and help."""
    found = [k.word + suffix for k in _REGISTRY.values()]
    return ", ".join(found[:-1]) + joiner + found[-1] if len(found) > 1 else "".join(found)


def text(value) -> str:
    """One value as `show` and `list` print it: lists as comma lists, mappings as k=v, None as `-`."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={text(v)}" for k, v in value.items())
    return str(value)
