"""`--log-format json` names the task behind each record: `task` is the id of the row in
the tasks table, for records made while the task runs and for the line that reports it.

Real processes (`python -m reconciler serve` / `watch`) over a real signed upstream on
127.0.0.1; the ids are checked against the API's task list and the real state.db."""

from __future__ import annotations

import io
import json
import logging
import sqlite3

from reconciler import logfmt, tasks
from tests.support.serveproc import Proc, Server
from tests.test_api import upstream  # noqa: F401 (the fixture)
from tests.test_logs import records, specs_dir


def task_ids(rows: list[dict]) -> dict[str, int]:
    return {row["name"]: row["id"] for row in rows}


def test_serve_records_carry_the_task_id_of_the_tasks_table(tmp_path, upstream):  # noqa: F811
    _built, archive, _key = upstream
    archive.fail(lambda path: path.endswith(".deb"), 503, times=1)  # a retry: a record logged while the mirror's task runs
    server = Server(tmp_path / "root", "--specs", specs_dir(tmp_path, upstream), "--interval", "1h",
                    "--log-format", "json").start()
    try:
        server.wait_ready()
        ids = task_ids(server.get("/api/tasks").json())
    finally:
        assert server.stop() == 0, server.output
        archive.reset()
    logged = records(server)
    reported = {r["kind"]: r for r in logged if r.get("kind") and r.get("op") in ("created", "published")}
    assert reported["mirror"]["task"] == ids["sync mirror up"]
    assert reported["snapshot"]["task"] == ids["create snapshot snap"]
    assert reported["publish"]["task"] == ids["publish pub"]
    retry = next(r for r in logged if "retrying" in r["message"])
    assert retry["task"] == ids["sync mirror up"]
    done = next(r for r in logged if r["message"].startswith("ReconciliationSucceeded"))
    assert "task" not in done  # outside any task: no stale id


def test_watch_records_carry_the_task_id_of_the_tasks_table(tmp_path, upstream):  # noqa: F811
    root = tmp_path / "root"
    watcher = Proc(root, "watch", "-f", specs_dir(tmp_path, upstream), "--log-format", "json").start()
    try:
        watcher.wait_line("waiting for changes", timeout=60)
    finally:
        watcher.stop()
    with sqlite3.connect(root / "state.db") as db:
        ids = dict(db.execute("SELECT name, id FROM tasks").fetchall())
    logged = records(watcher)
    snapshot = next(r for r in logged if r.get("kind") == "snapshot" and r.get("op") == "created")
    assert snapshot["task"] == ids["create snapshot snap"]
    assert all("task" not in r for r in logged if r["message"].startswith(("watch:", "no changes", "applied")))


def test_a_record_inside_a_task_gets_its_id_and_none_after(tmp_path):
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logfmt.TaskFilter())
    handler.setFormatter(logfmt.JsonFormatter())
    log = logging.getLogger("reconciler.test-task-ids")
    log.addHandler(handler)
    log.propagate = False
    try:
        ctx = tasks.Context(tmp_path / "root", lock_timeout=5)
        task_id = tasks.run(ctx, "log something", [], lambda task: log.warning("inside") or task.id)
        log.warning("after")
    finally:
        log.removeHandler(handler)
    inside, after = (json.loads(line) for line in out.getvalue().splitlines())
    row = tasks.get_task(ctx.store(), task_id)
    assert inside["task"] == row["id"] and row["name"] == "log something"
    assert "task" not in after
