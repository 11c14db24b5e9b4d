"""SIGKILL `apply` at many points, then run it again: it completes, everything verifies,
no package file that reached the disk is downloaded again, no lock or running task is left behind, and a
reader polling the published tree never sees a Release that mismatches its index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support import statesql
from tests.support.cli import reconciler

from tests.test_publish_e2e import _consistent

SPECS = """\
apiVersion: reconciler/v1
kind: Mirror
metadata: {{name: m}}
spec:
  url: {url}
  distribution: stable
  withSources: true
  keyrings: [{keyring}]
---
apiVersion: reconciler/v1
kind: Snapshot
metadata: {{name: s}}
spec: {{mirror: m}}
---
apiVersion: reconciler/v1
kind: Publish
metadata: {{name: pub}}
spec:
  prefix: debian
  distribution: stable
  components: {{main: s}}
  signing: {{keyFile: {signing}}}
"""


run = reconciler


def killed_apply(root: Path, specs: Path, delay: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "--root", str(root), "apply", "-f", str(specs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.mark.parametrize("delay", [1.0, 1.6, 2.2, 2.8, 3.4])
def test_apply_killed_at_any_point_then_rerun(tmp_path, http_archive, gpg_key, delay):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "all.yaml").write_text(SPECS.format(url=http_archive.url, keyring=http_archive.key.public_armored,
                                                 signing=gpg_key.secret_armored))
    root = tmp_path / "root"
    server = http_archive.server
    server.slow(lambda p: p.endswith((".deb", ".dsc", ".tar.gz", ".tar.xz")), 0.15)
    dist = root / "public/debian/dists/stable"
    seen, stop = [], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            problem = _consistent(dist)
            if problem:
                seen.append(problem)
            time.sleep(0.005)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        killed_apply(root, specs, delay)
        final = run(root, "apply", "-f", str(specs))
    finally:
        stop.set()
        reader.join()
    assert final.returncode == 0, final.stdout + final.stderr
    verify = run(root, "verify", "--deep")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Only bytes in flight when the kill landed can be fetched again: at most one file
    # per download slot (4), never twice. Everything that reached the disk is kept.
    complete = Counter(r.path for r in server.requests(status=200) if r.complete and "/pool/" in r.path)
    again = [p for p, n in complete.items() if n > 1]
    assert complete and max(complete.values()) <= 2 and len(again) <= 4, again
    assert seen == []
    assert statesql.query(root, "SELECT count(*) FROM tasks WHERE state IN ('running', 'queued')") == [(0,)]
    assert statesql.query(root, "SELECT count(*) FROM locks") == [(0,)]
    assert statesql.query(root, "SELECT name FROM snapshots") == [("s",)]
