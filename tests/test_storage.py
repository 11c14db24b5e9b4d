"""A full disk and a read-only root: a clear error, the database unchanged, the work resumable.

The root lives on a small tmpfs the test mounts (root only; skipped where mounting is
not allowed), so the disk really fills and really turns read-only.
"""

from __future__ import annotations

import json
import subprocess

from tests.support import examples
from tests.support.cli import reconciler
from tests.support.disk import small_disk  # noqa: F401  (a fixture)

SPEC = """\
apiVersion: reconciler/v1
kind: Mirror
metadata: {{name: m}}
spec:
  url: {url}
  distribution: stable
  components: [main]
  keyrings: [{keyring}]
"""


cli = reconciler


def test_full_disk_then_more_room(small_disk, tmp_path, example_archive, http_server, gpg_key):
    builder = examples.example_builder()
    builder.add("bigdata", "1.0-1", arch="all", pad=4_000_000)
    built = example_archive(builder, distribution="stable")
    server = http_server(built.root)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "m.yaml").write_text(SPEC.format(url=server.url, keyring=gpg_key.public_armored))
    root = small_disk / "root"
    assert cli(root, "list", "mirrors").returncode == 0  # the database exists before the disk fills
    out = cli(root, "apply", "-f", str(specs))
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "No space left on device" in text or "disk is full" in text
    assert "Traceback" not in out.stdout + out.stderr
    assert json.loads(cli(root, "list", "mirrors", "--json").stdout) == []
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    server.clear()
    again = cli(root, "apply", "-f", str(specs))
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(cli(root, "list", "mirrors", "--json").stdout)[0]["numPackages"] == 11  # main + bigdata
    assert cli(root, "verify", "--deep").returncode == 0


def test_read_only_root_is_a_clear_error(small_disk, tmp_path, http_archive, gpg_key):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "m.yaml").write_text(SPEC.format(url=http_archive.url, keyring=gpg_key.public_armored))
    root = small_disk / "root"
    assert cli(root, "apply", "-f", str(specs)).returncode == 0
    before = cli(root, "list", "mirrors", "--json").stdout
    (specs / "m.yaml").write_text(SPEC.format(url=http_archive.url, keyring=gpg_key.public_armored)
                                  + "  filter: hello\n")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    out = cli(root, "apply", "-f", str(specs))
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    assert "read-only" in (out.stdout + out.stderr).lower() or "readonly" in (out.stdout + out.stderr).lower()
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert cli(root, "list", "mirrors", "--json").stdout == before
