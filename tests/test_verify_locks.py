"""`verify` reads under locks: a publish switching while it runs is waited for, not reported.

The switch is held half-way by a helper process that takes the publish's key through
the real lock API, as a publish task does, and moves the tree's Release away (the
first thing a switch or a drop does to a client's view) until it lets go. A verify
started meanwhile must wait for the key and then find the tree sound; without the
locks it reported the Release missing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.support.cli import reconciler, start
from tests.support.specs import mirror, publish, snapshot


def hold_switch(root: Path, marks: Path, seconds: float) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from reconciler import locks, tasks
        ctx = tasks.Context({str(root)!r})
        db = ctx.connect()
        release = ctx.publish_root / "dists" / "stable" / "Release"
        marks = Path({str(marks)!r})
        with ctx.locks.hold([locks.publish(".", "stable"), locks.prefix(".")], timeout=10,
                            description="a publish switching", shared=[locks.POOL], db=db):
            release.rename(release.with_name("Release.switching"))
            (marks / "held").touch()
            time.sleep({seconds})
            release.with_name("Release.switching").rename(release)
            (marks / "released").touch()
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_verify_waits_for_a_switch_in_progress_and_reports_no_problem(tmp_path, http_archive):
    root, specs = tmp_path / "root", tmp_path / "specs.yaml"
    specs.write_text(mirror("up", http_archive.url, http_archive.key.public_armored)
                     + "---\n" + snapshot("s1", "up") + "---\n" + publish("pub", "s1"))
    reconciler(root, "apply", "-f", str(specs), check=True)
    marks = tmp_path / "marks"
    marks.mkdir()
    holder = hold_switch(root, marks, 2.0)
    try:
        deadline = time.monotonic() + 30
        while not (marks / "held").exists():
            assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()
            time.sleep(0.05)
        checking = start(root, "verify")
        out, err = checking.communicate(timeout=60)
        assert checking.returncode == 0, out + err
        assert "verify: 0 problem(s)" in out
        assert (marks / "released").exists(), "verify finished before the switch let go of its lock"
    finally:
        holder.communicate(timeout=30)
    assert holder.returncode == 0
