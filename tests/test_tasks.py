"""Locked tasks with real processes: serialise on one key, run in parallel on different
keys, survive a SIGKILLed holder, roll back on error, name the holder on timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reconciler import locks, tasks
from reconciler.errors import LockTimeout

HOLD = """
import json, sys, time
from reconciler import tasks
root, key, seconds, log = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
ctx = tasks.Context(root)
def body(task):
    start = time.time()
    print("locked", flush=True)
    time.sleep(seconds)
    with open(log, "a") as fh:
        fh.write(json.dumps([key, start, time.time()]) + "\\n")
tasks.run(ctx, "hold " + key, [key], body)
"""


def start_holder(root: Path, key: str, seconds: float, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(root), key, str(seconds), str(log)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def intervals(log: Path) -> list[tuple[float, float]]:
    return sorted((s, e) for _k, s, e in map(json.loads, log.read_text().splitlines()))


def test_two_processes_on_one_key_serialise(tmp_path):
    log = tmp_path / "log"
    procs = [start_holder(tmp_path, "mirror/m", 0.6, log) for _ in range(2)]
    for p in procs:
        assert p.wait(30) == 0
    (s1, e1), (s2, e2) = intervals(log)
    assert s2 >= e1, "the second holder started before the first released"


def test_different_keys_run_in_parallel(tmp_path):
    log = tmp_path / "log"
    procs = [start_holder(tmp_path, key, 1.0, log) for key in ("mirror/a", "mirror/b")]
    for p in procs:
        assert p.wait(30) == 0
    (s1, e1), (s2, e2) = intervals(log)
    assert s2 < e1, "different keys did not overlap"


def test_sigkilled_holder_never_leaves_the_lock_held(tmp_path):
    holder = start_holder(tmp_path, "mirror/m", 600, tmp_path / "never")
    assert holder.stdout.readline().strip() == "locked"
    ctx = tasks.Context(tmp_path, lock_timeout=1)
    with pytest.raises(LockTimeout) as info:
        tasks.run(ctx, "waiter", ["mirror/m"], lambda t: None)
    assert "hold mirror/m" in str(info.value) and f"pid {holder.pid}" in str(info.value)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    ctx = tasks.Context(tmp_path, lock_timeout=5)
    assert tasks.run(ctx, "after", ["mirror/m"], lambda t: "ran") == "ran"
    rows = {r["name"]: r for r in tasks.list_tasks(ctx.store())}
    assert rows["hold mirror/m"]["state"] == "failed"
    assert "interrupted" in rows["hold mirror/m"]["error"]
    assert rows["after"]["state"] == "succeeded"
    assert ctx.store().db.execute("SELECT count(*) FROM locks").fetchone()[0] == 0


HOLD_WITHOUT_TASK = """
import sys, time
from reconciler import tasks
ctx = tasks.Context(sys.argv[1])
with ctx.locks.hold([sys.argv[2]], timeout=10, description="a read-only check", db=ctx.connect()):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_holder_without_a_task_leaves_no_row(tmp_path):
    """A holder with no task row (as verify holds keys) killed: the next holder of the key
    removes the dead one's row, so `locks` names no one who is gone."""
    tasks.Context(tmp_path).store()  # the schema exists before the holder starts
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WITHOUT_TASK, str(tmp_path), "mirror/m"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    ctx = tasks.Context(tmp_path, lock_timeout=5)
    db = ctx.connect()
    try:
        with ctx.locks.hold(["mirror/m"], timeout=5, description="next", db=db):
            assert [r[0] for r in db.execute("SELECT description FROM locks").fetchall()] == ["next"]
        assert db.execute("SELECT count(*) FROM locks").fetchone()[0] == 0
    finally:
        db.close()


def test_a_failing_task_leaves_the_database_as_it_was(tmp_path):
    ctx = tasks.Context(tmp_path)

    def body(task):
        with task.transaction() as store:
            spec = {"url": "http://x", "distribution": "d", "verifySignature": False}
            store.mirrors.create("m", owner="default", spec=spec, protect=False)
            assert store.mirrors.get("m") is not None
            raise RuntimeError("boom after the write")

    with pytest.raises(RuntimeError):
        tasks.run(ctx, "create m", ["mirror/m"], body)
    assert ctx.store().mirrors.get("m") is None
    [row] = tasks.list_tasks(ctx.store())
    assert row["state"] == "failed" and "boom after the write" in row["error"]


def test_threads_exclude_each_other_too(tmp_path):
    ctx = tasks.Context(tmp_path)
    inside, overlap = [], []

    def body(task):
        inside.append(1)
        if len(inside) > 1:
            overlap.append(1)
        time.sleep(0.2)
        inside.pop()

    threads = [threading.Thread(target=tasks.run, args=(ctx, f"t{i}", ["snapshot/s"], body)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlap
    assert [r["state"] for r in tasks.list_tasks(ctx.store())] == ["succeeded"] * 3


def test_canonical_order_is_by_kind_then_name():
    keys = ["publish/./stable", "snapshot/b", "mirror/z", "snapshot/a", "pool", "mirror/a"]
    assert locks.order(keys) == ["pool", "mirror/a", "mirror/z", "snapshot/a", "snapshot/b", "publish/./stable"]


def test_shared_pool_lock_blocks_exclusive_gc(tmp_path):
    lk = locks.Locks(tmp_path)
    with lk.hold(["mirror/a"], timeout=1, description="update", shared=[locks.POOL]):
        with lk.hold(["mirror/b"], timeout=1, description="update b", shared=[locks.POOL]):
            pass  # shared holders coexist
        with pytest.raises(LockTimeout):
            with lk.hold([locks.POOL], timeout=0.3, description="gc"):
                pass
