"""The same steps through a running `reconciler serve`: what a step costs without start-up.

    .venv/bin/python -m bench.serve --sizes 2000,20000

`bench.run` starts a fresh process for every step, as CI's `reconciler apply` does;
Python's start-up and imports are then ~0.4 s of every step. In a deployment,
`reconciler serve` pays them once. Here one serve process (`--specs DIR`, a long
`--interval`) runs on a fresh root; each step writes the spec set as `bench.run` would
and then calls `POST /api/reconcile?wait=1`, which answers when a reconcile that
started after the call has finished. The figure is the wall time of that call. Peak
memory is the serve process's high-water mark (VmHWM) after the step, so it only
grows. The peers' figures (aptly, reprepro) to compare with are in the `bench.run`
table of the same size: take its best peer per step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from bench.run import compile_bytecode, make_keys
from bench.tools import RECONCILER, Reconciler
from bench.upstream import Upstream

STEPS = ("full sync", "no-change re-run", "snapshot create", "first publish",
         "next-day update", "day-two snapshot", "publish switch")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2000,20000")
    p.add_argument("--pad", type=int, default=4096)
    p.add_argument("--keep", action="store_true", help="keep the work dir (archives, root, serve.log)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="reconciler-bench-serve-"))
    keys, gpg_keys = make_keys(work)
    compile_bytecode()
    try:
        for n in (int(s) for s in args.sizes.split(",") if s.strip()):
            rows = run_size(n, args.pad, work / str(n), keys, gpg_keys[0])
            print(f"\n== {n} packages, through one `reconciler serve` process ==")
            print(f"{'step':<20}  {'seconds':>8}  {'serve MB':>8}")
            for step, seconds, mb in rows:
                print(f"{step:<20}  {seconds:>8.2f}  {mb:>8.1f}", flush=True)
    finally:
        for key in gpg_keys:
            key.stop_agent()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def run_size(n: int, pad: int, base: Path, keys, upstream_key) -> list[tuple[str, float, float]]:
    upstream = Upstream(n, base / "archive", upstream_key, pad=pad)
    upstream.day_one()
    tool = Reconciler(base / "reconciler", upstream.url, keys)
    tool.prepare()
    _write(tool)
    port = _free_port()
    log = open(base / "serve.log", "wb")
    proc = subprocess.Popen([RECONCILER, "--root", str(tool.root), "serve", "--specs", str(tool.specs),
                             "--listen", f"127.0.0.1:{port}", "--interval", "24h"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        _wait_ready(url, proc)  # the first reconcile (the full sync) runs at start
        rows.append(("full sync", *_since_start(proc)))
        rows.append(("no-change re-run", *_step(url, proc, tool)))
        tool.snapshots.append("day1")
        rows.append(("snapshot create", *_step(url, proc, tool)))
        tool.published = "day1"
        rows.append(("first publish", *_step(url, proc, tool)))
        upstream.next_day()
        rows.append(("next-day update", *_step(url, proc, tool)))
        tool.snapshots.append("day2")
        rows.append(("day-two snapshot", *_step(url, proc, tool)))
        tool.published = "day2"
        rows.append(("publish switch", *_step(url, proc, tool)))
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
        upstream.stop()
    return rows


_STARTED: dict[int, float] = {}


def _write(tool: Reconciler) -> None:
    (tool.specs / "bench.yaml").write_text(yaml.safe_dump_all(tool._documents(), sort_keys=False))


def _step(url: str, proc: subprocess.Popen, tool: Reconciler) -> tuple[float, float]:
    _write(tool)
    started = time.perf_counter()
    request = urllib.request.Request(f"{url}/api/reconcile?wait=1", method="POST")
    with urllib.request.urlopen(request, timeout=3600) as response:
        response.read()
    seconds = time.perf_counter() - started
    status = json.loads(urllib.request.urlopen(f"{url}/api/status", timeout=60).read())
    ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
    if ready != "True":
        raise SystemExit(f"the reconcile did not end Ready: {json.dumps(status)[:2000]}")
    return seconds, _peak_mb(proc)


def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    _STARTED[proc.pid] = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited {proc.returncode}")
        try:
            if urllib.request.urlopen(f"{url}/readyz", timeout=5).status == 200:
                _STARTED[-proc.pid] = time.perf_counter()
                return
        except OSError:
            pass
        time.sleep(0.05)


def _since_start(proc: subprocess.Popen) -> tuple[float, float]:
    """The first reconcile, including the process's own start (paid once)."""
    return _STARTED[-proc.pid] - _STARTED[proc.pid], _peak_mb(proc)


def _peak_mb(proc: subprocess.Popen) -> float:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    raise SystemExit(main())
