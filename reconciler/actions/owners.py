"""Owners: which spec source applies under an owner, and taking objects over deliberately.

`apply --owner NAME` prunes the objects of NAME that its specs do not declare. Two spec
sets applied under one owner would therefore drop each other's objects, and a spec set
declaring a name another owner holds would rewrite that owner's object. So the source
that last applied under an owner is recorded (`claim`), another source is refused, and
an object changes owner only through `--take-over` (`adopt`). Both are locked tasks
that re-check inside the lock; `claim` runs no task at all when nothing changes, so a
routine apply pays one read.
"""

from __future__ import annotations

from reconciler import kinds, locks, tasks
from reconciler.actions.result import Result, run, unchanged
from reconciler.errors import NotFound, Refused


def claim(ctx: tasks.Context, owner: str, source: str, *, take_over: bool = False) -> Result | None:
    """Record `source` as the spec source of `owner`; refuse another source unless `take_over`."""
    if ctx.store().owners.get(owner) == source:
        return None  # the common case: the same source again, nothing to write

    def body(task: tasks.Task) -> Result:
        with task.transaction() as store:
            held = store.owners.get(owner)  # fresh, inside the lock
            if held not in (None, source) and not take_over:
                raise Refused(f"owner {owner!r} was last applied from {held}, this is {source}; give this spec "
                              f"set its own --owner NAME, or pass --take-over")
            store.owners.claim(owner, source)
        message = f"owner/{owner}: applied from {source}" + (f" (was {held})" if held else "")
        task.log(message)
        return Result(message)

    return run(ctx, f"claim owner {owner}", [locks.owner(owner)], body, pool=False)


def adopt(ctx: tasks.Context, kind: str, name: str, owner: str) -> Result:
    """Make `owner` the owner of object KIND/NAME (what `--take-over` plans)."""
    of = kinds.get(kind)
    before = of.rows(ctx.store()).get(name)
    if before is None:
        raise NotFound(f"{of.word} {name!r} does not exist")
    key = of.lock_key(before)  # a publish's key is where it is published: it must not move meanwhile

    def body(task: tasks.Task) -> Result:
        with task.transaction() as store:
            row = of.rows(store).get(name)  # fresh, inside the lock
            if row is None:
                raise NotFound(f"{of.word} {name!r} does not exist")
            if of.lock_key(row) != key:
                raise Refused(f"{of.word}/{name} moved while waiting for the lock; run again")
            if row.owner == owner:
                return unchanged(f"{kind.lower()}/{name}: already owned by {owner!r}")
            store.owners.adopt(of.plural, name, owner)
        message = f"{kind.lower()}/{name}: taken over from owner {row.owner!r} by {owner!r}"
        task.log(message)
        return Result(message)

    return run(ctx, f"adopt {of.word} {name}", [key], body, pool=False)
