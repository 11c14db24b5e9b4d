"""The events `reconcile.apply` emits for each change of the plan it applies.

`serve` (its status and log), the metrics and `watch` need to know what each change did:
whether it changed anything, how long it took, which task ran it, why it failed. serve
used to find out by matching the printed result lines with regular expressions, which
would go wrong, silently, the day an action's wording changed. Now each action says what it did
in a value (`actions.result.Result`), reconcile turns that into typed events here, and
the CLI's lines are rendered from the same events (`printer`), so they read as before.

For every change: `started` when it begins, then `finished` with its outcome:

- `changed`: the action changed state; `message` is its line, `task_id` its task;
- `unchanged`: there was nothing to do (up to date, exists, already gone); a change the
  plan only reports (a snapshot that exists, an unmanaged object) runs no task and has
  no message;
- `failed`: `error` is the error's text, `message` the failure line, `task_id` the task
  when one ran (none when, say, its locks timed out);
- `skipped`: not attempted, because a change it depends on failed; a skipped change has
  only the `finished` event (it never started), and `error` names what failed.

This module imports nothing of the project, so any layer can subscribe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

STARTED, FINISHED = "started", "finished"
CHANGED, UNCHANGED, FAILED, SKIPPED = "changed", "unchanged", "failed", "skipped"

Subscriber = Callable[["Event"], None]


@dataclass(frozen=True)
class Event:
    phase: str  # started | finished
    kind: str  # Mirror | Snapshot | Publish
    name: str
    op: str  # the plan's op: create, update, switch, drop, ...
    outcome: str | None = None  # finished: changed | unchanged | failed | skipped
    seconds: float = 0.0  # finished: how long the change took, lock waits included
    task_id: int | None = None
    message: str = ""  # finished: the change's line for people ("" for none)
    error: str | None = None  # failed, skipped: why

    @property
    def finished(self) -> bool:
        return self.phase == FINISHED

    def text(self) -> str:
        """The line the CLI prints for this event ("" for none)."""
        if not self.finished:
            return ""
        return f"FAILED {self.message}" if self.outcome == FAILED else self.message

    def to_json(self) -> dict:
        return asdict(self)


def started(kind: str, name: str, op: str) -> Event:
    return Event(STARTED, kind, name, op)


def finished(kind: str, name: str, op: str, *, changed: bool, seconds: float, line: str | None,
             task_id: int | None) -> Event:
    return Event(FINISHED, kind, name, op, CHANGED if changed else UNCHANGED, seconds, task_id, line or "")


def failed(kind: str, name: str, op: str, *, error: str, seconds: float, task_id: int | None) -> Event:
    return Event(FINISHED, kind, name, op, FAILED, seconds, task_id, f"{kind.lower()}/{name}: {error}", error)


def skipped(kind: str, name: str, op: str, *, blocker: str) -> Event:
    why = f"{blocker} failed"
    return Event(FINISHED, kind, name, op, SKIPPED, message=f"{kind.lower()}/{name}: skipped, {why}", error=why)


def printer(echo: Callable[[str], None]) -> Subscriber:
    """A subscriber that prints each finished change's line to `echo`, as the CLI shows it."""

    def show(event: Event) -> None:
        text = event.text()
        if text:
            echo(text)

    return show


def log_to(log: logging.Logger) -> Subscriber:
    """A subscriber that logs each finished change's line as one record, with its task id
    and duration as the extras `task` and `seconds` (`--log-format json` copies them);
    at WARNING when the change failed or was skipped."""

    def record(event: Event) -> None:
        text = event.text()
        if text:
            level = logging.WARNING if event.outcome in (FAILED, SKIPPED) else logging.INFO
            log.log(level, "%s", text, extra={"seconds": round(event.seconds, 3), "task": event.task_id})

    return record
