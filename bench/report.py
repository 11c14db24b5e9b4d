"""The printed table and the JSON file: one row per step, every tool side by side.

`reconciler` is ours, `reconciler-pg` is ours with the state on PostgreSQL, the others
are the peers. `pg/sqlite` divides reconciler-pg's seconds by reconciler's: a step more
than PG_LIMIT times slower on PostgreSQL is flagged. `best peer/ours` divides the
seconds of the faster peer that has the step by ours (SQLite): above 1, reconciler
beats every peer on that step. A column whose tools did not run is left out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.scenario import RESUME, STEPS, ToolRun
from bench.tools import OURS, OURS_PG

PG_LIMIT = 1.3  # issue #13: no step more than 1.3x slower on PostgreSQL than on SQLite
SLOW = " !"  # after a pg/sqlite ratio above PG_LIMIT


@dataclass
class Row:
    step: str
    seconds: dict[str, float | None]  # tool name -> wall seconds (None: no such step)
    rss_mb: dict[str, float | None]  # tool name -> peak RSS of the step
    cpu_s: dict[str, float | None]  # user + system: how much of the wall time the tool itself worked
    ratio_to_ours: dict[str, float | None]  # peer name -> peer seconds / ours: > 1 means reconciler is faster
    best_peer: str | None  # the faster of the peers that have the step (None when ours has none)
    best_peer_ratio: float | None  # best peer's seconds / ours
    pg_ratio: float | None = None  # reconciler-pg's seconds / reconciler's: > 1 means PostgreSQL is slower
    pg_slow: bool = False  # pg_ratio above PG_LIMIT

    @classmethod
    def of(cls, step: str, runs: list[ToolRun]) -> "Row":
        measured = {run.tool.name: run.steps.get(step) for run in runs}
        peers = _peers(list(measured))
        seconds = {name: m and m.seconds for name, m in measured.items()}
        ours = seconds.get(OURS)
        ratios = {peer: _ratio(seconds[peer], ours) for peer in peers}
        timed = [(seconds[peer], peer) for peer in peers if ratios[peer] is not None]
        best = min(timed)[1] if timed else None
        pg = _ratio(seconds.get(OURS_PG), ours)
        return cls(step, seconds, {name: m and m.peak_rss_mb for name, m in measured.items()},
                   {name: m and m.cpu_seconds for name, m in measured.items()}, ratios,
                   best, ratios[best] if best else None, pg, pg is not None and pg > PG_LIMIT)

    def cells(self) -> list[str]:
        names = list(self.seconds)
        pg = [_cell(self.pg_ratio) + (SLOW if self.pg_slow else "")] if _compares_pg(names) else []
        peers = [_cell(self.best_peer_ratio), self.best_peer or "—"] if _peers(names) else []
        return [self.step, *(_cell(self.seconds[n]) for n in names), *pg, *peers,
                *(_cell(self.rss_mb[n]) for n in names), *(_cell(self.cpu_s[n]) for n in names)]


def columns(names: list[str]) -> list[str]:
    pg = ["pg/sqlite"] if _compares_pg(names) else []
    peers = ["best peer/ours", "best peer"] if _peers(names) else []
    return ["step", *(f"{n} s" for n in names), *pg, *peers, *(f"{n} MB" for n in names),
            *(f"{n} cpu s" for n in names)]


def _peers(names: list[str]) -> list[str]:
    return [n for n in names if n not in (OURS, OURS_PG)]


def _compares_pg(names: list[str]) -> bool:
    return OURS in names and OURS_PG in names


def _ratio(theirs: float | None, ours: float | None) -> float | None:
    return round(theirs / ours, 2) if theirs and ours else None


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def rows(runs: list[ToolRun]) -> list[Row]:
    return [Row.of(s, runs) for s in STEPS if any(s in run.steps for run in runs)]


def table(title: str, runs: list[ToolRun], notes: list[str]) -> str:
    header = columns([run.tool.name for run in runs])
    cells = [header] + [r.cells() for r in rows(runs)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = [title]
    for i, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)


def notes(runs: list[ToolRun]) -> list[str]:
    """What the table cannot say: each tool's own notes, the steps PostgreSQL is too slow
    at, then the resume counts."""
    return [line for run in runs for line in run.tool.notes] + pg_notes(runs) + resume_notes(runs)


def pg_notes(runs: list[ToolRun]) -> list[str]:
    if not _compares_pg([run.tool.name for run in runs]):
        return []
    slow = [f"{r.step} ({r.pg_ratio:.2f}x)" for r in rows(runs) if r.pg_slow]
    if not slow:
        return [f"pg/sqlite: no step more than {PG_LIMIT}x slower on PostgreSQL"]
    return [f"pg/sqlite{SLOW}: more than {PG_LIMIT}x slower on PostgreSQL than on SQLite: {', '.join(slow)}"]


def resume_notes(runs: list[ToolRun]) -> list[str]:
    notes = [f"{RESUME}: package requests of the rerun, against what the kill left missing:"]
    width = max((len(run.tool.name) for run in runs), default=0)
    for run in runs:
        r = run.resume
        if r is None:
            continue
        notes.append(f"  {run.tool.name:<{width}} {r.rerun_requests:>6} requests for {r.missing} missing of "
                     f"{r.packages} ({r.rerun_range_requests} Range continuations, "
                     f"{r.rerun_refetched} files fetched again although complete before the kill)")
    return notes


def size_result(n: int, info: dict, runs: list[ToolRun]) -> dict:
    return {"packages": n, **info, "rows": [asdict(r) for r in rows(runs)],
            "steps": {run.tool.name: {k: m.to_json() for k, m in run.steps.items()} for run in runs},
            "resume": {run.tool.name: _resume_json(run) for run in runs}}


def _resume_json(run: ToolRun) -> dict | None:
    return asdict(run.resume) if run.resume else None


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
