"""Which indexes of an upstream are read: apt's rules, so every suite apt uses mirrors.

apt reads `COMP/binary-all/Packages` only when the Release's `Architectures` lists `all`
(or is absent) and its `No-Support-for-Architecture-all` does not name `Packages`
(debReleaseIndex::IsArchitectureAllSupportedFor). Debian's security suite lists a
`binary-all/Packages.xz` that does not match what it serves and has no `all` in
`Architectures`: apt never fetches it, and neither may a mirror. Real archives on
127.0.0.1, the real CLI; the live test against the real security suite is opt-in
(RECONCILER_LIVE=1).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support import debs, hostile
from tests.test_mirror_sync import Rig, apply_live, cli

ALL_PACKAGES = {"greet-data", "hello-doc", "mailnotify", "fetch-fonts"}  # arch `all` in the example


@pytest.fixture
def rig(tmp_path, http_server, gpg_key) -> Rig:
    return Rig(tmp_path, http_server, gpg_key)


def _serve_a_binary_all_that_does_not_match(rig: Rig) -> None:
    """List main/binary-all/Packages.xz in the Release with digests of other bytes than
    those served, and re-sign: upstream's own inconsistency, validly signed."""
    archive = rig.archive
    path = archive.index("main", "all", ext="xz")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(debs.xz(b"Package: stale\n", 0))
    listed = debs.xz(b"Package: other\nVersion: 1\n", 0)
    hostile.relist(archive, rig.key, {"main/binary-all/Packages.xz": (len(listed), hostile._digests(listed))})


def _names(rig: Rig) -> set[str]:
    return {ref.split(":", 1)[1].split("_", 1)[0] for ref in rig.packages()}


@pytest.mark.parametrize("all_index", [False, True],
                         ids=["architectures-without-all", "no-support-for-architecture-all"])
def test_a_binary_all_index_apt_does_not_read_is_not_read(rig, all_index):
    """Without the rule, the listed binary-all is downloaded, fails its checksum and the
    mirror cannot be created; with it the `all` packages come from the per-arch indexes."""
    rig.build(all_index=all_index)
    release = rig.archive.release.read_text()
    assert ("all" in re.search(r"^Architectures:(.*)$", release, re.MULTILINE).group(1).split()) == all_index
    _serve_a_binary_all_that_does_not_match(rig)
    rig.mirror()
    out = rig.apply()
    assert "mirror/up: created" in out.stdout
    assert ALL_PACKAGES <= _names(rig)
    assert not rig.server.requests(lambda p: "binary-all" in p)
    assert rig.plan("--detailed-exitcode").returncode == 0


def test_architectures_with_all_and_no_opt_out_reads_binary_all(rig):
    """An archive that ships its `all` packages only in binary-all (Architectures lists
    `all`, no No-Support-for-Architecture-all): those packages are mirrored."""
    archive = rig.build(all_index=True)
    amd64 = [s for s in hostile.stanzas(archive, "main", "amd64") if s["Package"] != "hello-doc"]
    hostile.write_stanzas(archive, rig.key, amd64, "main", "amd64")
    hostile.edit_release(archive, rig.key,
                         lambda text: re.sub(r"^No-Support-for-Architecture-all:.*\n", "", text, flags=re.MULTILINE))
    assert "hello-doc" in {s["Package"] for s in hostile.stanzas(archive, "main", "all")}
    rig.mirror()
    rig.apply()
    assert "hello-doc" in _names(rig)
    assert rig.server.requests(lambda p: "main/binary-all/" in p)


# --- the real Debian security suite (opt-in) ----------------------------------------------------


def security_uri() -> str:
    """The base URI of the stanza in this machine's debian.sources that names bookworm-security."""
    text = Path("/etc/apt/sources.list.d/debian.sources").read_text()
    for stanza in re.split(r"\n\s*\n", text):
        suites = re.search(r"^Suites:(.*)$", stanza, re.MULTILINE)
        uri = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
        if suites and uri and "bookworm-security" in suites.group(1).split():
            return uri.group(1)
    raise AssertionError("no stanza with Suites: bookworm-security in debian.sources")


@pytest.mark.live
@pytest.mark.skipif(os.environ.get("RECONCILER_LIVE") != "1", reason="set RECONCILER_LIVE=1 (downloads some MB)")
def test_live_debian_security_mirrors(tmp_path):
    """bookworm-security lists a binary-all/Packages.xz that is not what it serves."""
    listed = apply_live(tmp_path, "bookworm-security", {
        "url": security_uri(), "distribution": "bookworm-security", "components": ["main"],
        "architectures": ["amd64"], "filter": "Priority (required)"})
    assert listed["numPackages"] >= 1
    again = cli(tmp_path / "root", "plan", "-f", str(tmp_path / "specs"), "--detailed-exitcode", expect=None)
    assert again.returncode == 0, again.stdout + again.stderr
