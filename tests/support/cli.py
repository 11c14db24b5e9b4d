"""The real `reconciler` command as a subprocess, and the spec documents tests write.

One place for both, so every end-to-end test runs the CLI the same way and writes
specs of the same shape.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def reconciler(root: Path, *args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m reconciler --root ROOT ARGS`; with check=True a non-zero exit fails the test."""
    out = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(root), *args],
                         capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"reconciler {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def start(root: Path, *args: str) -> subprocess.Popen:
    """The CLI in its own process group, so a test can SIGKILL it and its children."""
    return subprocess.Popen([sys.executable, "-m", "reconciler", "--root", str(root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
