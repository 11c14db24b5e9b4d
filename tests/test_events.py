"""reconcile.apply tells what each change did in typed events, and serve reads those.

Real applies over the signed test archive on 127.0.0.1 (real gpg, SQLite, pool), in this
process so the events can be collected; serve's controller runs in a thread over a spec
directory, as `reconciler serve --specs` runs it.
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from reconciler import events, reconcile, tasks
from reconciler.loader import load_specs
from reconciler.plan import Options
from reconciler.serve import Controller, DirSource
from tests.support.serveproc import Proc
from tests.support.specs import mirror, publish, snapshot


@pytest.fixture
def world(tmp_path, http_archive):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "all.yaml").write_text(
        mirror("up", http_archive.url, http_archive.key.public_armored, extra="  network: {retries: 0}\n")
        + "---\n" + snapshot("s1", "up") + "---\n" + publish("pub", "s1"))
    return specs, tasks.Context(tmp_path / "root", lock_timeout=10), http_archive


def run_apply(ctx, specs_dir) -> tuple[reconcile.Report, list[events.Event], list[str]]:
    seen: list[events.Event] = []
    printed: list[str] = []
    report = reconcile.apply(ctx, load_specs([specs_dir]), Options(), echo=printed.append,
                             subscribers=[seen.append, events.printer(printed.append)])
    return report, seen, printed


def by_object(seen: list[events.Event]) -> dict[tuple[str, str], list[events.Event]]:
    out: dict[tuple[str, str], list[events.Event]] = {}
    for event in seen:
        out.setdefault((event.kind, event.name), []).append(event)
    return out


def test_a_create_is_changed_with_its_task_and_the_next_apply_unchanged(world):
    specs_dir, ctx, _archive = world
    report, seen, printed = run_apply(ctx, specs_dir)
    assert report.ok, report.failures
    up = by_object(seen)[("Mirror", "up")]
    assert [(e.phase, e.op) for e in up] == [("started", "create"), ("finished", "create")]
    done = up[1]
    assert done.outcome == events.CHANGED and done.message.startswith("mirror/up: created") and done.seconds > 0
    task = tasks.get_task(ctx.store(), done.task_id)
    assert (task["name"], task["state"]) == ("sync mirror up", "succeeded")
    assert [(e.kind, e.outcome) for e in seen if e.finished] == [
        ("Mirror", "changed"), ("Snapshot", "changed"), ("Publish", "changed")]
    assert printed == report.lines == [e.message for e in seen if e.finished]  # the CLI's lines, from events

    report, seen, printed = run_apply(ctx, specs_dir)
    assert report.ok and report.changed == []
    finished = [e for e in seen if e.finished]
    assert [(e.kind, e.outcome) for e in finished] == [
        ("Mirror", "unchanged"), ("Snapshot", "unchanged"), ("Publish", "unchanged")]
    assert finished[0].message.startswith("mirror/up: up to date") and finished[0].task_id > done.task_id
    assert (finished[1].op, finished[1].message, finished[1].task_id) == ("noop", "", None)  # only reported
    assert finished[2].message == "publish/pub: up to date" and finished[2].task_id is not None
    assert printed == [e.message for e in finished if e.message]


def test_a_failing_upstream_is_failed_with_the_error_and_its_users_skipped(world):
    specs_dir, ctx, archive = world
    archive.server.fail(lambda path: "/dists/" in path, 500, times=None)
    report, seen, printed = run_apply(ctx, specs_dir)
    assert not report.ok
    up = by_object(seen)[("Mirror", "up")]
    assert [e.phase for e in up] == ["started", "finished"]
    failed = up[1]
    assert failed.outcome == events.FAILED and "500" in failed.error, failed
    assert failed.message == f"mirror/up: {failed.error}" and printed[0] == f"FAILED mirror/up: {failed.error}"
    task = tasks.get_task(ctx.store(), failed.task_id)
    assert (task["name"], task["state"], task["error"]) == ("sync mirror up", "failed", failed.error)
    skipped = by_object(seen)[("Snapshot", "s1")]
    assert [(e.phase, e.outcome, e.error) for e in skipped] == [("finished", "skipped", "mirror/up failed")]
    assert report.failures[:2] == [failed.message, "snapshot/s1: skipped, mirror/up failed"]


def test_report_changed_follows_the_outcome_not_the_wording():
    report = reconcile.Report(claim="owner/default: applied from dir:/specs")
    for event in (events.finished("Mirror", "m", "update", changed=True, seconds=1.0,
                                  line="mirror/m: up to date (3 packages)", task_id=7),
                  events.finished("Snapshot", "s", "create", changed=False, seconds=0.1,
                                  line="snapshot/s: created, 3 packages", task_id=8)):
        report.record(event)
    assert report.changed == ["owner/default: applied from dir:/specs", "mirror/m: up to date (3 packages)"]


def wait_cycle(controller: Controller, ticket: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not controller.finished(ticket):
        assert time.monotonic() < deadline, controller.status()
        time.sleep(0.05)
    return controller.status()


def task_count(controller: Controller, kind: str, op: str) -> float:
    text = controller.metrics.render().decode()
    line = f'reconciler_task_duration_seconds_count{{kind="{kind}",operation="{op}"}} '
    return next((float(row[len(line):]) for row in text.splitlines() if row.startswith(line)), 0.0)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_serve_says_no_change_from_the_events_of_its_own_plan(world):
    specs_dir, ctx, _archive = world
    controller = Controller(ctx, DirSource(specs_dir), interval=3600)
    logged = Records()
    logger = logging.getLogger("reconciler.serve")
    logger.addHandler(logged)
    level, logger.level = logger.level, logging.INFO
    controller.start()
    try:
        first = wait_cycle(controller, 1)
        created = next(r for r in logged.records if r.getMessage().startswith("mirror/up: created"))
        task = tasks.get_task(ctx.store(), created.task)  # each change's log line names its task
        assert task["name"] == "sync mirror up" and isinstance(created.seconds, float)
        ready = next(c for c in first["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True" and ready["message"].endswith("(4 change(s))"), ready
        assert [line.split(":")[0] for line in first["lastReport"]["changed"]] == [
            "owner/default", "mirror/up", "snapshot/s1", "publish/pub"]
        assert task_count(controller, "Mirror", "create") == 1  # the metrics are fed by the events

        second = wait_cycle(controller, controller.request())
        ready = next(c for c in second["conditions"] if c["type"] == "Ready")
        assert ready["message"].endswith("(no change)"), ready
        assert second["lastReport"]["changed"] == []
        objects = {(o["kind"], o["name"]): o for o in second["objects"]}
        assert objects[("Mirror", "up")]["status"] == "Current"
        assert objects[("Mirror", "up")]["message"].startswith("mirror/up: up to date")
        assert objects[("Publish", "pub")]["message"] == "publish/pub: up to date"
        assert task_count(controller, "Mirror", "update") == 1
    finally:
        controller.stop()
        logger.removeHandler(logged)
        logger.setLevel(level)


def test_watch_logs_each_change_with_its_task(world):
    specs_dir, ctx, _archive = world
    watcher = Proc(ctx.root, "watch", "-f", specs_dir, "--log-format", "json").start()
    try:
        watcher.wait_line("waiting for changes", timeout=60)
    finally:
        watcher.stop()
    logged = [json.loads(line) for line in watcher.output.splitlines() if line.strip()]
    created = next(r for r in logged if r["message"].startswith("mirror/up: created"))
    assert (created["kind"], created["op"], created["level"]) == ("mirror", "created", "info")
    assert tasks.get_task(ctx.store(), created["task"])["name"] == "sync mirror up"
    assert isinstance(created["seconds"], float)
    assert sum(r["message"].startswith("mirror/up: created") for r in logged) == 1  # logged once, not printed too
