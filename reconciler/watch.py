"""`reconciler watch -f PATHS`: validate, plan and apply again whenever the spec files change.

The edit loop of someone writing specs: save a file, see the plan, see it applied. It is
the CLI's `plan` and `apply` run back to back (the same `reconcile` functions; apply is
given the plan just shown, so what is shown is what runs, each action re-checking it
inside its lock), with
two guards that matter while a file is half-edited: changes are debounced (nothing runs
until the files have been quiet for a second, so an editor's save-in-several-writes is
one run), and an invalid edit prints its errors with file:line and applies nothing, not
even the parts that would load. A plan with errors (an in-use drop, an edited snapshot)
is shown and not applied either. The state stays as the last good run left it.

Ctrl-C or SIGTERM stops it; a task interrupted that way is rolled back and resumed by
the next run, as with `apply`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from reconciler import events, reconcile, tasks
from reconciler.errors import ReconcilerError, SpecError
from reconciler.loader import load_specs, source_identity
from reconciler.plan import Options

DEBOUNCE_MS = 1000  # quiet time before a run
STOP_CHECK_MS = 500  # how often the watcher looks at signals


def run(ctx: tasks.Context, paths: Iterable[Path], *, owner: str = "default",
        echo: Callable[[str], None] = print, subscribers: list[events.Subscriber] | None = None) -> int:
    """Apply now, then after every change; returns 0 when stopped by a signal.

    `subscribers` receive apply's events (default: each change's line printed to `echo`;
    `--log-format json` logs them with their task and duration instead)."""
    import watchfiles

    paths = [Path(p).absolute() for p in paths]
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    try:
        events = watchfiles.watch(*_targets(paths), watch_filter=_filter(paths), step=DEBOUNCE_MS,
                                  debounce=10 * DEBOUNCE_MS, rust_timeout=STOP_CHECK_MS, yield_on_timeout=True)
        next(events)  # the watcher is live from here: an edit made during a run is kept for the next one
        apply_once(ctx, paths, owner=owner, echo=echo, subscribers=subscribers)
        for changes in events:
            if not changes:
                continue  # a timeout: the moment to notice a signal
            names = sorted({Path(p).name for _change, p in changes})
            echo(f"[{datetime.now():%H:%M:%S}] changed: {', '.join(names)}")
            apply_once(ctx, paths, owner=owner, echo=echo, subscribers=subscribers)
    except KeyboardInterrupt:
        echo("watch: stopped")
    return 0


def apply_once(ctx: tasks.Context, paths: list[Path], *, owner: str, echo: Callable[[str], None],
               subscribers: list[events.Subscriber] | None = None) -> bool:
    """Validate, plan, print the plan, apply; True when everything was applied."""
    ok = _apply(ctx, paths, owner, echo, subscribers)
    echo(f"watch: waiting for changes in {', '.join(map(str, paths))}")
    return ok


def _apply(ctx: tasks.Context, paths: list[Path], owner: str, echo: Callable[[str], None],
           subscribers: list[events.Subscriber] | None) -> bool:
    try:
        specs = load_specs(paths)
    except SpecError as exc:
        for issue in exc.issues:
            echo(str(issue))
        echo(f"{sum(1 for i in exc.issues if not i.warning)} error(s) in the specs; nothing applied")
        return False
    for warning in specs.warnings:
        echo(str(warning))
    options = Options(owner=owner, source=source_identity(paths))
    try:
        the_plan = reconcile.make_plan(ctx, specs, options)
        for change in the_plan.changes:
            echo(change.text())
        if the_plan.errors:
            echo(f"the plan has {len(the_plan.errors)} error(s); nothing applied")
            return False
        if not the_plan.has_changes:
            echo("no changes")
            return True
        report = reconcile.apply(ctx, specs, options, echo=echo, subscribers=subscribers,
                                 plan=the_plan)  # the plan just shown
    except ReconcilerError as exc:
        echo(f"error: {exc}")
        return False
    echo("applied" if report.ok else f"{len(report.failures)} change(s) failed")
    return report.ok


def _targets(paths: list[Path]) -> list[Path]:
    """Directories as given; a file through its directory, so an editor's rename-on-save is seen."""
    return sorted({p if p.is_dir() else p.parent for p in paths})


def _filter(paths: list[Path]):
    import watchfiles

    default = watchfiles.DefaultFilter()
    files = {p for p in paths if not p.is_dir()}
    dirs = [p for p in paths if p.is_dir()]

    def wanted(change, raw: str) -> bool:
        path = Path(raw)
        if path in files:
            return True
        inside = next((d for d in dirs if path.is_relative_to(d)), None)
        if inside is None or not default(change, raw):
            return False
        return not any(part.startswith(".") for part in path.relative_to(inside).parts)

    return wanted
