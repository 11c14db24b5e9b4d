"""bench/report.py: the PostgreSQL column beside SQLite, its ratio per step and the flag
on steps more than 1.3x slower (issue #13); columns of tools that did not run are left out."""

from __future__ import annotations

from pathlib import Path

from bench import report
from bench.measure import Measurement
from bench.scenario import ToolRun


class _Tool:
    notes = ()

    def __init__(self, name: str):
        self.name = name


def _run(name: str, seconds: dict[str, float]) -> ToolRun:
    run = ToolRun(_Tool(name), Path("logs"))
    run.steps = {step: Measurement(s, 50.0, 0, "log", cpu_seconds=s / 2) for step, s in seconds.items()}
    return run


def test_each_step_has_its_pg_ratio_and_the_slow_ones_are_flagged():
    runs = [_run("reconciler", {"full sync": 2.0, "next-day update": 1.0}),
            _run("reconciler-pg", {"full sync": 2.5, "next-day update": 1.4})]
    sync, update = report.rows(runs)
    assert (sync.pg_ratio, sync.pg_slow) == (1.25, False)
    assert (update.pg_ratio, update.pg_slow) == (1.4, True)
    text = report.table("t", runs, report.notes(runs))
    assert "pg/sqlite" in text and "best peer" not in text  # no peer ran
    assert "1.40 !" in text and "1.25 !" not in text
    assert "more than 1.3x slower on PostgreSQL than on SQLite: next-day update (1.40x)" in text


def test_peers_keep_their_ratio_to_sqlite_and_pg_is_not_a_peer():
    runs = [_run("reconciler", {"full sync": 2.0}), _run("reconciler-pg", {"full sync": 2.2}),
            _run("aptly", {"full sync": 4.0}), _run("reprepro", {"full sync": 3.0})]
    (row,) = report.rows(runs)
    assert row.ratio_to_ours == {"aptly": 2.0, "reprepro": 1.5}
    assert (row.best_peer, row.best_peer_ratio, row.pg_ratio) == ("reprepro", 1.5, 1.1)
    assert report.columns([r.tool.name for r in runs])[:7] == [
        "step", "reconciler s", "reconciler-pg s", "aptly s", "reprepro s", "pg/sqlite", "best peer/ours"]
    assert "no step more than 1.3x slower on PostgreSQL" in "\n".join(report.notes(runs))


def test_without_postgresql_the_table_is_as_before():
    runs = [_run("reconciler", {"full sync": 2.0}), _run("aptly", {"full sync": 4.0})]
    assert "pg/sqlite" not in report.table("t", runs, report.notes(runs))
    assert report.rows(runs)[0].pg_ratio is None
