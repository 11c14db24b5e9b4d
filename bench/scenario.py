"""The steps, run for every tool against one upstream, in the order that makes sense.

Day one: mirror create (aptly only), full sync, no-change re-run, snapshot, first
publish (not reprepro). Then upstream moves to day two: next-day update, second
snapshot, publish switch (not reprepro). Last, resume: a fresh mirror of the day-two
archive, killed with SIGKILL when the server has seen half of the package requests,
then run again. A step a tool has no equivalent for is left out of its `steps`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bench import measure
from bench.measure import Measurement
from bench.upstream import Upstream

STEPS = ("mirror create", "full sync", "no-change re-run", "snapshot create", "first publish",
         "next-day update", "day-two snapshot", "publish switch", "resume after SIGKILL")
RESUME = "resume after SIGKILL"
SLOW_PACKAGE_SECONDS = 0.005  # per .deb while the run to be killed downloads
DEB = ".deb"


class StepFailed(RuntimeError):
    pass


@dataclass
class ResumeCounts:
    """Package-file requests around a kill at ~50%, as the server logged them."""

    packages: int  # package files the mirror needs
    completed_before_kill: int  # .deb responses fully sent before the kill
    missing: int  # what an ideal resume still has to fetch
    rerun_requests: int  # .deb requests the rerun made
    rerun_range_requests: int  # of those, HTTP Range continuations
    rerun_refetched: int  # files fetched again although complete before the kill
    killed_after: Measurement | None = None


@dataclass
class ToolRun:
    """Every step of one tool: Measurement per step name, resume counts."""

    tool: object
    logs: Path
    steps: dict[str, Measurement] = field(default_factory=dict)
    resume: ResumeCounts | None = None

    def step(self, name: str, argv: list[str] | None) -> None:
        if argv is None:
            return
        log = self.logs / f"{self.tool.name}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.log"
        result = measure.run(argv, log, env=self.tool.env())
        self.steps[name] = result
        if not result.ok:
            raise StepFailed(f"{self.tool.name}: {name} exited {result.exit_code}:\n{measure.tail(result.log)}")


def day_one(run: ToolRun) -> None:
    tool = run.tool
    tool.prepare()
    run.step("mirror create", tool.create())
    run.step("full sync", tool.update())
    run.step("no-change re-run", tool.update())
    run.step("snapshot create", tool.snapshot("day1"))
    run.step("first publish", tool.publish("day1"))


def day_two(run: ToolRun) -> None:
    tool = run.tool
    run.step("next-day update", tool.update())
    run.step("day-two snapshot", tool.snapshot("day2"))
    run.step("publish switch", tool.publish("day2"))


def resume(run: ToolRun, upstream: Upstream) -> None:
    """`run.tool` must start empty (a fresh root). Fresh mirror of the current archive, SIGKILL at ~50% of package requests, rerun.

    The kill comes when the server has *started* half of the requests; those that were
    still in flight are not counted as complete, so `missing` is what a perfect resume
    must still fetch (plus, at most, Range continuations of the files in flight)."""
    tool, server = run.tool, upstream.server
    tool.prepare()
    run.step("resume: mirror create", tool.create())
    server.clear()
    server.slow(DEB, SLOW_PACKAGE_SECONDS)
    try:
        killed = _kill_half_way(run, server, upstream.package_count())
    finally:
        server.reset()
    tool.after_kill()
    complete = {r.path for r in server.requests(DEB, method="GET") if r.complete}
    server.clear()
    run.step(RESUME, tool.update())
    rerun = server.requests(DEB, method="GET")
    run.resume = ResumeCounts(
        packages=upstream.package_count(), completed_before_kill=len(complete),
        missing=upstream.package_count() - len(complete), rerun_requests=len(rerun),
        rerun_range_requests=sum(1 for r in rerun if r.range), killed_after=killed,
        rerun_refetched=len({r.path for r in rerun} & complete))


def _kill_half_way(run: ToolRun, server, packages: int) -> Measurement:
    log = run.logs / f"{run.tool.name}-resume-killed-run.log"
    child = measure.start(run.tool.update(), log, env=run.tool.env())
    while not server.wait_for(DEB, packages // 2, timeout=0.5):
        ended = measure.poll(child)
        if ended is not None:
            raise StepFailed(f"{run.tool.name}: the run to be killed ended first (exit {ended.exit_code}):\n"
                             f"{measure.tail(ended.log)}")
    return measure.kill(child)
