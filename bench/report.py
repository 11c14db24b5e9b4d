"""The printed table and the JSON file: one row per step, both tools side by side."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.measure import Measurement
from bench.scenario import RESUME, STEPS, ToolRun

COLUMNS = ("step", "reconciler s", "aptly s", "aptly/ours", "reconciler MB", "aptly MB", "reconciler cpu s",
           "aptly cpu s")


@dataclass
class Row:
    step: str
    reconciler_s: float | None
    aptly_s: float | None
    ratio: float | None  # aptly seconds / reconciler seconds: > 1 means reconciler is faster
    reconciler_rss_mb: float | None
    aptly_rss_mb: float | None
    reconciler_cpu_s: float | None  # user + system: how much of the wall time the tool itself worked
    aptly_cpu_s: float | None

    @classmethod
    def of(cls, step: str, ours: Measurement | None, theirs: Measurement | None) -> "Row":
        ratio = round(theirs.seconds / ours.seconds, 2) if ours and theirs and ours.seconds else None
        return cls(step, ours and ours.seconds, theirs and theirs.seconds, ratio,
                   ours and ours.peak_rss_mb, theirs and theirs.peak_rss_mb,
                   ours and ours.cpu_seconds, theirs and theirs.cpu_seconds)

    def cells(self) -> list[str]:
        values = (self.reconciler_s, self.aptly_s, self.ratio, self.reconciler_rss_mb, self.aptly_rss_mb,
                  self.reconciler_cpu_s, self.aptly_cpu_s)
        return [self.step, *(_cell(v) for v in values)]


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def rows(ours: ToolRun, aptly: ToolRun) -> list[Row]:
    return [Row.of(s, ours.steps.get(s), aptly.steps.get(s)) for s in STEPS
            if s in ours.steps or s in aptly.steps]


def table(title: str, the_rows: list[Row], notes: list[str]) -> str:
    cells = [list(COLUMNS)] + [r.cells() for r in the_rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = [title]
    for i, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)


def resume_notes(ours: ToolRun, aptly: ToolRun) -> list[str]:
    notes = [f"{RESUME}: package requests of the rerun, against what the kill left missing:"]
    for run in (ours, aptly):
        r = run.resume
        if r is None:
            continue
        notes.append(f"  {run.tool.name:<10} {r.rerun_requests:>6} requests for {r.missing} missing of "
                     f"{r.packages} ({r.rerun_range_requests} Range continuations, "
                     f"{r.rerun_refetched} files fetched again although complete before the kill)")
    return notes


def size_result(n: int, info: dict, ours: ToolRun, aptly: ToolRun) -> dict:
    return {"packages": n, **info, "rows": [asdict(r) for r in rows(ours, aptly)],
            "steps": {run.tool.name: {k: m.to_json() for k, m in run.steps.items()} for run in (ours, aptly)},
            "resume": {run.tool.name: _resume_json(run) for run in (ours, aptly)}}


def _resume_json(run: ToolRun) -> dict | None:
    return asdict(run.resume) if run.resume else None


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
