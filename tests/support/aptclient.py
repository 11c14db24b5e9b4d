"""The real `apt-get` as a throwaway client of a repository, outside the machine's apt.

The final judge of an archive (upstream or published) is apt itself: if `apt-get
update` accepts the signature and indexes and `install --download-only` fetches the
dependency closure, a Debian machine would too. Every apt directory (state, cache,
sources, preferences, config parts) points into a private work directory, and the
dpkg status is empty, so apt resolves the full closure and the host's apt state is
never read or written.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class AptResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class AptClient:
    """apt-get confined to `workdir`, reading only the given sources.list lines."""

    def __init__(self, workdir: Path | str, sources: str | list[str], *,
                 arch: str = "amd64"):
        self.dir = Path(workdir)
        for sub in ("etc/preferences.d", "etc/apt.conf.d", "state/lists/partial",
                    "cache/archives/partial"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "state/status").touch()
        lines = [sources] if isinstance(sources, str) else sources
        (self.dir / "etc/sources.list").write_text("\n".join(lines) + "\n")
        self.arch = arch

    def _options(self) -> list[str]:
        d = self.dir
        opts = {
            "Dir::Etc::sourcelist": d / "etc/sources.list", "Dir::Etc::sourceparts": "-",
            "Dir::Etc::preferencesparts": d / "etc/preferences.d",
            "Dir::Etc::parts": d / "etc/apt.conf.d", "Dir::State": d / "state",
            "Dir::State::status": d / "state/status", "Dir::Cache": d / "cache",
            "APT::Architecture": self.arch, "APT::Architectures": self.arch,
            "Debug::NoLocking": "1", "Acquire::Languages": "none",
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
        }
        return [arg for k, v in opts.items() if v != "" for arg in ("-o", f"{k}={v}")]

    def run(self, *args: str, check: bool = False, timeout: float = 120) -> AptResult:
        """Run `apt-get -q OPTIONS ARGS`; with check=True raise on a non-zero exit."""
        env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
        proc = subprocess.run(["apt-get", "-q", *self._options(), *args], env=env,
                              capture_output=True, text=True, timeout=timeout)
        result = AptResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"apt-get {' '.join(args)} failed:\n{result.output}")
        return result

    def update(self, *, check: bool = True) -> AptResult:
        """`update`; apt exits 0 on some fetch failures, so errors in output count too."""
        result = self.run("update", check=False)
        failed = result.returncode != 0 or "\nE: " in "\n" + result.stderr or \
            "\nW: Failed to fetch" in "\n" + result.stderr
        if check and failed:
            raise AssertionError(f"apt-get update failed:\n{result.output}")
        result.returncode = result.returncode or int(failed)
        return result

    def download(self, *packages: str, check: bool = True) -> AptResult:
        """`install -y --download-only`: the closure lands in the cache, nothing installs."""
        return self.run("install", "-y", "--download-only", *packages, check=check)

    def downloaded(self) -> list[str]:
        """File names of the .deb files in the cache, sorted."""
        return sorted(p.name for p in (self.dir / "cache/archives").glob("*.deb"))
