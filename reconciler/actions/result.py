"""What an action did, said in a value rather than in wording.

Every action returns a line for people ("snapshot/s: exists (3 packages)"). Whether it
changed anything used to be recoverable only by matching that wording, so `serve` kept
a regular expression of the phrasings of "nothing to do". The action knows: it says so
in `Result.changed`, and `run` stamps the id of the task it ran as on the result (and
on the error it raises), so reconcile's events can name the task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import Field, dataclass, replace
from typing import Any, ClassVar, Protocol, TypeVar

from reconciler import tasks
from reconciler.errors import ReconcilerError


class Stamped(Protocol):
    """What `run` stamps a task id on: a dataclass (for `replace`) with a `task_id` field."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def task_id(self) -> int | None: ...


R = TypeVar("R", bound=Stamped)


@dataclass(frozen=True)
class Result:
    """An action's outcome: its line, whether it changed state, the task it ran as."""

    line: str
    changed: bool = True
    task_id: int | None = None

    def __str__(self) -> str:
        return self.line


def unchanged(line: str) -> Result:
    return Result(line, changed=False)


def run(ctx: tasks.Context, name: str, keys: Iterable[str], body: Callable[[tasks.Task], R], **options) -> R:
    """`tasks.run`, with the task's id on what `body` returns (a dataclass with a
    `task_id` field) and on the `ReconcilerError` it raises."""

    def stamped(task: tasks.Task) -> R:
        try:
            done = body(task)
        except ReconcilerError as exc:
            exc.task_id = task.id
            raise
        return replace(done, task_id=task.id)

    return tasks.run(ctx, name, keys, stamped, **options)
