"""Benchmark reconciler against aptly and reprepro, side by side in one run.

    .venv/bin/python -m bench.run --sizes 2000,20000

For each size: build a signed synthetic archive, serve it on 127.0.0.1, run every step
of `bench.scenario` with every tool chosen by `--tools` (reconciler on SQLite, reconciler
on PostgreSQL, aptly, reprepro; each step a fresh child process, timed, peak RSS
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
from collections.abc import Callable
from pathlib import Path

from bench import pgserver, report, scenario
from bench.scenario import ToolRun
from bench.tools import APTLY, REPREPRO, TOOLS, Keys, ReconcilerPg
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
    p.add_argument("--tools", default=",".join(t.name for t in TOOLS),
                   help="comma-separated tools to run (default: all of them, %(default)s)")
    p.add_argument("--pg-log-statements", type=int, metavar="MS", default=None,
                   help="log PostgreSQL statements slower than MS ms (log_min_duration_statement) "
                        "into WORKDIR/postgres.log, to see where reconciler-pg's time goes")
    args = p.parse_args(argv)
    known = {t.name for t in TOOLS}
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(args.tools) - known)
    if unknown or not args.tools:
        p.error(f"--tools: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(sorted(known))}")
    return args


Maker = Callable[[Path, str, Keys], object]  # (root, upstream URL, keys) -> a tool of tools.py


def makers(chosen: list[str], server) -> dict[str, Maker]:
    """A constructor per chosen tool, in TOOLS order (ours first). reconciler-pg gets a
    fresh database for every root: one per size, one more for the resume run."""
    def pg(root: Path, url: str, keys: Keys) -> ReconcilerPg:
        return ReconcilerPg(root, url, keys, state=server.new_database(f"{root.parent.name}_{root.name}"))
    return {t.name: pg if t is ReconcilerPg else t for t in TOOLS if t.name in chosen}


def make_keys(work: Path) -> tuple[Keys, list[gpgkeys.GpgKey]]:
    """The upstream key, the publishing key, and a copy of the publishing key with the
    upstream public key beside it for reprepro. The first key returned is upstream's."""
    upstream = gpgkeys.generate(work / "keys" / "upstream", "Bench Upstream")
    signing = gpgkeys.generate(work / "keys" / "signing", "Bench Signing")
    reprepro = gpgkeys.load(work / "keys" / "reprepro", signing.secret_armored, "Bench Signing")
    reprepro.gpg("--import", upstream.public_keyring)
    keys = Keys(upstream.public_keyring, upstream.fingerprint, signing.fingerprint, signing.secret_armored,
                signing.public_keyring, signing.home, reprepro.home)
    return keys, [upstream, signing, reprepro]


def bench_size(n: int, args: argparse.Namespace, work: Path, keys: Keys, upstream_key,
               tools: dict[str, Maker]) -> dict:
    base = work / str(n)
    upstream = Upstream(n, base / "archive", upstream_key, pad=args.pad)
    started = time.perf_counter()
    upstream.day_one()
    built = time.perf_counter() - started
    try:
        runs = _run_days(upstream, base, keys, tools)
        _run_resume(upstream, base, keys, runs, tools)
    finally:
        upstream.stop()
    info = {"pad": args.pad, "deb_mb_day_one": _deb_mb(upstream.root), "archive_build_s": round(built, 1),
            "next_day": upstream.changed, "packages_day_two": upstream.package_count()}
    _print_size(n, info, runs)
    return report.size_result(n, info, runs)


def _run_days(upstream: Upstream, base: Path, keys: Keys, tools: dict[str, Maker]) -> list[ToolRun]:
    """Day one for every tool, then upstream's next day, then day two for every tool."""
    runs = [ToolRun(make(base / name, upstream.url, keys), base / "logs") for name, make in tools.items()]
    for run in runs:
        scenario.day_one(run)
    upstream.next_day()
    for run in runs:
        scenario.day_two(run)
    return runs


def _run_resume(upstream: Upstream, base: Path, keys: Keys, runs: list[ToolRun],
                tools: dict[str, Maker]) -> None:
    for main in runs:
        name = main.tool.name
        fresh = ToolRun(tools[name](base / f"{name}-resume", upstream.url, keys), main.logs)
        scenario.resume(fresh, upstream)
        main.steps[scenario.RESUME] = fresh.steps[scenario.RESUME]
        main.resume = fresh.resume


def _deb_mb(root: Path) -> float:
    total = sum(p.stat().st_size for p in (root / "pool").rglob("*.deb"))
    return round(total / 1e6, 1)


def _print_size(n: int, info: dict, runs: list[ToolRun]) -> None:
    title = (f"\n== {n} packages: {info['deb_mb_day_one']} MB of .deb (pad {info['pad']} B); next day "
             f"{info['next_day']['new_versions']} new versions, {info['next_day']['removed']} removed ==")
    print(report.table(title, runs, report.notes(runs)), flush=True)


def environment(args: argparse.Namespace) -> dict:
    versions = {}
    if "aptly" in args.tools:
        versions["aptly"] = subprocess.run([APTLY, "version"], capture_output=True, text=True).stdout.strip()
    if "reprepro" in args.tools:
        reprepro = subprocess.run([REPREPRO, "--version"], capture_output=True, text=True)
        versions["reprepro"] = (reprepro.stdout + reprepro.stderr).strip()
    if ReconcilerPg.name in args.tools:
        versions["postgresql"] = pgserver.version()
        versions["postgresql_settings"] = pgserver.settings(args.pg_log_statements)
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
            "tools": args.tools, **versions, "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
            "signing": "all sign with the same throwaway key; aptly verifies the upstream Release "
                       "with -keyring (gpgDisableVerify false), reprepro with VerifyRelease (the "
                       "upstream key's long ID, its public key in reprepro's GNUPGHOME)"}


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
    payload = {"environment": environment(args), "sizes": []}
    server = pgserver.start(args.pg_log_statements) if ReconcilerPg.name in args.tools else None
    try:
        tools = makers(args.tools, server)
        for n in (int(s) for s in args.sizes.split(",") if s.strip()):
            payload["sizes"].append(bench_size(n, args, work, keys, gpg_keys[0], tools))
            report.write_json(args.json, payload)
    except scenario.StepFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            pgserver.keep_log(server, work / "postgres.log")
            server.stop()
        for key in gpg_keys:
            key.stop_agent()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nwritten: {args.json}" + (f"; work dir kept: {work}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
