"""Benchmark reconciler against aptly, side by side in one run.

    .venv/bin/python -m bench.run --sizes 2000,20000

For each size: build a signed synthetic archive, serve it on 127.0.0.1, run every step
of `bench.scenario` with both tools (each step a fresh child process, timed, peak RSS
from its rusage), print a table and write bench/results/latest.json. See README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report, scenario
from bench.scenario import ToolRun
from bench.tools import APTLY, Aptly, Keys, Reconciler
from bench.upstream import Upstream
from tests.support import gpgkeys

RESULTS = Path(__file__).parent / "results" / "latest.json"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2000,20000", help="comma-separated package counts")
    p.add_argument("--pad", type=int, default=4096, help="incompressible bytes per .deb (default 4096)")
    p.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir, removed after")
    p.add_argument("--keep", action="store_true", help="keep the work dir (archives, roots, logs)")
    p.add_argument("--json", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    return p.parse_args(argv)


def make_keys(work: Path) -> tuple[Keys, list[gpgkeys.GpgKey]]:
    upstream = gpgkeys.generate(work / "keys" / "upstream", "Bench Upstream")
    signing = gpgkeys.generate(work / "keys" / "signing", "Bench Signing")
    keys = Keys(upstream.public_keyring, signing.fingerprint, signing.secret_armored,
                signing.public_keyring, signing.home)
    return keys, [upstream, signing]


def bench_size(n: int, args: argparse.Namespace, work: Path, keys: Keys, upstream_key) -> dict:
    base = work / str(n)
    upstream = Upstream(n, base / "archive", upstream_key, pad=args.pad)
    started = time.perf_counter()
    upstream.day_one()
    built = time.perf_counter() - started
    try:
        ours, aptly = _run_days(upstream, base, keys)
        _run_resume(upstream, base, keys, ours, aptly)
    finally:
        upstream.stop()
    info = {"pad": args.pad, "deb_mb_day_one": _deb_mb(upstream.root), "archive_build_s": round(built, 1),
            "next_day": upstream.changed, "packages_day_two": upstream.package_count()}
    _print_size(n, info, ours, aptly)
    return report.size_result(n, info, ours, aptly)


def _run_days(upstream: Upstream, base: Path, keys: Keys) -> tuple[ToolRun, ToolRun]:
    logs = base / "logs"
    ours = ToolRun(Reconciler(base / "reconciler", upstream.url, keys), logs)
    aptly = ToolRun(Aptly(base / "aptly", upstream.url, keys), logs)
    for run in (ours, aptly):
        scenario.day_one(run)
    upstream.next_day()
    for run in (ours, aptly):
        scenario.day_two(run)
    return ours, aptly


def _run_resume(upstream: Upstream, base: Path, keys: Keys, ours: ToolRun, aptly: ToolRun) -> None:
    for main, tool in ((ours, Reconciler(base / "reconciler-resume", upstream.url, keys)),
                       (aptly, Aptly(base / "aptly-resume", upstream.url, keys))):
        fresh = ToolRun(tool, main.logs)
        scenario.resume(fresh, upstream)
        main.steps[scenario.RESUME] = fresh.steps[scenario.RESUME]
        main.resume = fresh.resume


def _deb_mb(root: Path) -> float:
    total = sum(p.stat().st_size for p in (root / "pool").rglob("*.deb"))
    return round(total / 1e6, 1)


def _print_size(n: int, info: dict, ours: ToolRun, aptly: ToolRun) -> None:
    title = (f"\n== {n} packages: {info['deb_mb_day_one']} MB of .deb (pad {info['pad']} B); next day "
             f"{info['next_day']['new_versions']} new versions, {info['next_day']['removed']} removed ==")
    print(report.table(title, report.rows(ours, aptly), report.resume_notes(ours, aptly)), flush=True)


def environment() -> dict:
    aptly = subprocess.run([APTLY, "version"], capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
            "aptly": aptly, "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
            "signing": "both sign with the same throwaway key; aptly verifies the upstream Release "
                       "with -keyring (gpgDisableVerify false)"}


def compile_bytecode() -> None:
    """Byte-compile reconciler, as installing its wheel (pip, the Dockerfile) does.

    An editable checkout run with PYTHONDONTWRITEBYTECODE (set on these machines) would
    otherwise compile every module from source in every step: ~0.1 s that no installed
    copy pays.
    """
    package = Path(__file__).resolve().parent.parent / "reconciler"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="reconciler-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    keys, gpg_keys = make_keys(work)
    compile_bytecode()
    payload = {"environment": environment(), "sizes": []}
    try:
        for n in (int(s) for s in args.sizes.split(",") if s.strip()):
            payload["sizes"].append(bench_size(n, args, work, keys, gpg_keys[0]))
            report.write_json(args.json, payload)
    except scenario.StepFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        for key in gpg_keys:
            key.stop_agent()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nwritten: {args.json}" + (f"; work dir kept: {work}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
