"""`reconciler watch -f DIR` as a real process over a real spec directory and upstream."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.serveproc import Proc
from tests.support.specs import mirror as mirror_spec

SNAPSHOT = """\
apiVersion: reconciler/v1
kind: Snapshot
metadata: {{name: s1}}
spec:
  mirror: up
  {field}: "Priority (required)"
"""
WAITING = "watch: waiting for changes"


def listed(root: Path, kind: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(root), "list", kind, "--json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return {item["name"]: item["numPackages"] for item in json.loads(out)}


def edit(watcher: Proc, path: Path, text: str) -> str:
    """Write a spec file and return what the watcher printed for that change."""
    mark = len(watcher.lines)
    path.write_text(text)
    watcher.wait_line(WAITING, after=mark, timeout=30)
    return "\n".join(watcher.lines[mark:])


def test_watch_applies_valid_edits_and_applies_nothing_of_an_invalid_one(tmp_path, http_archive):
    root, specs = tmp_path / "root", tmp_path / "specs"
    specs.mkdir()
    watcher = Proc(root, "watch", "-f", specs).start()
    try:
        watcher.wait_line(WAITING)
        assert "no *.yaml or *.yml spec files" in watcher.output

        out = edit(watcher, specs / "mirror.yaml",
                   mirror_spec("up", http_archive.url, http_archive.key.public_armored))
        assert "+ create    mirror/up" in out and "mirror/up: created" in out and "applied" in out, out
        assert listed(root, "mirrors") == {"up": 10}

        out = edit(watcher, specs / "snapshot.yaml", SNAPSHOT.format(field="filtr"))
        assert "snapshot.yaml:6: Snapshot/s1: spec.filtr" in out, out
        assert "1 error(s) in the specs; nothing applied" in out, out
        assert listed(root, "snapshots") == {}

        out = edit(watcher, specs / "snapshot.yaml", SNAPSHOT.format(field="filter"))
        assert "+ create    snapshot/s1" in out and "applied" in out, out
        assert listed(root, "snapshots") == {"s1": 2}

        stopping = time.monotonic()
        assert watcher.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - stopping < 5
        assert "watch: stopped" in watcher.output
    finally:
        watcher.kill()
