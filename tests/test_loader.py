"""Spec loading: every bad input gets a clear `file:line: kind/name: field: message`, exit 1, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.errors import SpecError
from reconciler.loader import load_specs

MIRROR = """\
apiVersion: reconciler/v1
kind: Mirror
metadata:
  name: {name}
spec:
  url: http://127.0.0.1:1/debian
  distribution: stable
  keyrings: [keys/archive.gpg]
"""

SNAPSHOT = """\
apiVersion: reconciler/v1
kind: Snapshot
metadata:
  name: {name}
spec:
  {source}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def issues_of(paths, env=None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_specs(paths, env=env or {})
    return [str(i) for i in info.value.issues]


def test_valid_specs_load_with_paths_resolved(tmp_path):
    write(tmp_path, "a/mirror.yaml", MIRROR.format(name="m1") + "---\n" + SNAPSHOT.format(name="s1", source="mirror: m1"))
    specs = load_specs([tmp_path], env={})
    assert list(specs.mirrors) == ["m1"] and list(specs.snapshots) == ["s1"]
    assert specs.mirrors["m1"].spec.keyrings == [str(tmp_path / "a/keys/archive.gpg")]
    assert specs.origins[("Mirror", "m1")].line == 4


def test_env_substitution_and_default(tmp_path):
    text = MIRROR.format(name="m1").replace("http://127.0.0.1:1/debian", "${UP:-http://default/x}/${SUB}")
    path = write(tmp_path, "m.yaml", text)
    specs = load_specs([path], env={"SUB": "debian"})
    assert specs.mirrors["m1"].spec.url == "http://default/x/debian"
    assert any("SUB is not set" in i for i in issues_of([path]))


def test_an_unset_variable_is_reported_at_its_own_line(tmp_path):
    """Not at the document's start: in a second document, in a list item, in a flow list."""
    text = (MIRROR.format(name="m0") + "---\n"
            + MIRROR.format(name="m1").replace("http://127.0.0.1:1/debian", "${UP}/debian")
            .replace("  keyrings: [keys/archive.gpg]\n", "  keyrings:\n    - keys/a.gpg\n    - ${KEYS}/b.gpg\n")
            + "  components: [main, '${COMP}']\n")
    path = write(tmp_path, "m.yaml", text)
    found = issues_of([path])
    assert f"{path}:15: Mirror/m1: spec.url: environment variable UP is not set" in "\n".join(found)
    assert f"{path}:19: Mirror/m1: spec.keyrings.1: environment variable KEYS is not set" in "\n".join(found)
    assert f"{path}:20: Mirror/m1: spec.components.1: environment variable COMP is not set" in "\n".join(found)


def test_relative_file_url_is_resolved_against_the_spec(tmp_path):
    path = write(tmp_path, "m.yaml", MIRROR.format(name="m1").replace("http://127.0.0.1:1/debian", "file:upstream"))
    assert load_specs([path], env={}).mirrors["m1"].spec.url == f"file://{tmp_path / 'upstream'}"


@pytest.mark.parametrize("text, expected", [
    ("kind: Mirror\nmetadata: {name: x\n", "malformed YAML"),
    ("apiVersion: reconciler/v1\nmetadata: {name: x}\nspec: {}\n", "kind: missing"),
    (MIRROR.format(name="m1") + "  distribution: testing\n", "m.yaml:9: malformed YAML: duplicate key 'distribution' (first on line 7)"),
    ("apiVersion: reconciler/v1\nkind: Bucket\nmetadata: {name: x}\nspec: {}\n", "unknown kind 'Bucket'"),
    (MIRROR.format(name="m1") + "  colour: blue\n", "m.yaml:9: Mirror/m1: spec.colour: unknown field"),
    (MIRROR.format(name="Bad_Name"), "m.yaml:4: Mirror/Bad_Name: metadata.name: String should match pattern"),
    (MIRROR.format(name="m1").replace("  keyrings: [keys/archive.gpg]\n", ""), "keyrings: required unless"),
    (MIRROR.format(name="m1") + "  filter: 'nginx ('\n", "spec.filter: does not parse"),
    (SNAPSHOT.format(name="s1", source="snapshots: [nope]"), "Snapshot/s1: spec.snapshots: snapshot 'nope' is not declared"),
    (SNAPSHOT.format(name="s1", source="mirror: m\n  snapshots: [a]"), "exactly one of mirror, snapshots"),
])
def test_bad_documents_are_reported_with_location(tmp_path, text, expected):
    path = write(tmp_path, "m.yaml", text)
    found = issues_of([path])
    assert any(expected in issue for issue in found), found
    assert all(issue.startswith(str(path)) for issue in found)


PUBLISH = """\
---
apiVersion: reconciler/v1
kind: Publish
metadata: {{name: p}}
spec:
  distribution: stable
  components: {{main: s1}}
  signing: {{skip: true}}
  compression: {compression}
"""


@pytest.mark.parametrize("compression, expected", [
    ("{xz: 10}", "spec.compression.xz: Input should be less than or equal to 9"),
    ("{gz: 0}", "spec.compression.gz: Input should be greater than or equal to 1"),
    ("{zstd: 3}", "spec.compression.zstd: unknown field"),
])
def test_bad_compression_is_refused(tmp_path, compression, expected):
    text = MIRROR.format(name="m") + "---\n" + SNAPSHOT.format(name="s1", source="mirror: m") + \
        PUBLISH.format(compression=compression)
    found = issues_of([write(tmp_path, "m.yaml", text)])
    assert any(expected in issue for issue in found), found


def test_compression_defaults_and_a_form_left_out(tmp_path):
    text = MIRROR.format(name="m") + "---\n" + SNAPSHOT.format(name="s1", source="mirror: m")
    write(tmp_path, "m.yaml", text + PUBLISH.format(compression="{xz: null}"))
    publish = load_specs([tmp_path]).publishes["p"]
    assert publish.spec.compression.levels() == {".gz": 3}
    write(tmp_path, "m.yaml", text + PUBLISH.format(compression="{}"))
    publish = load_specs([tmp_path]).publishes["p"]
    assert publish.spec.compression.levels() == {".gz": 3, ".xz": 0}


def test_duplicate_name_in_two_files(tmp_path):
    write(tmp_path, "a.yaml", MIRROR.format(name="m1"))
    write(tmp_path, "b.yaml", MIRROR.format(name="m1"))
    found = issues_of([tmp_path])
    assert len(found) == 1
    assert "b.yaml:4: Mirror/m1: metadata.name: duplicate name, first declared at" in found[0]
    assert "a.yaml:4" in found[0]


def test_merge_cycle(tmp_path):
    write(tmp_path, "s.yaml", "---\n".join([
        SNAPSHOT.format(name="a", source="snapshots: [b]"),
        SNAPSHOT.format(name="b", source="snapshots: [c]"),
        SNAPSHOT.format(name="c", source="snapshots: [a]"),
    ]))
    found = issues_of([tmp_path])
    assert any("merge cycle: a -> b -> c -> a" in i for i in found), found


def test_publish_reference_to_undeclared_snapshot(tmp_path):
    write(tmp_path, "p.yaml", """\
apiVersion: reconciler/v1
kind: Publish
metadata: {name: p}
spec:
  distribution: stable
  components: {main: ghost}
  signing: {skip: true}
""")
    assert any("spec.components.main: snapshot 'ghost' is not declared" in i for i in issues_of([tmp_path]))


def test_snapshot_of_undeclared_mirror_is_only_a_warning(tmp_path):
    write(tmp_path, "s.yaml", SNAPSHOT.format(name="s1", source="mirror: gone"))
    specs = load_specs([tmp_path], env={})
    assert [w.field for w in specs.warnings] == ["spec.mirror"]


def test_all_errors_reported_together(tmp_path):
    write(tmp_path, "a.yaml", MIRROR.format(name="m1") + "  colour: blue\n")
    write(tmp_path, "b.yaml", "kind: [\n")
    write(tmp_path, "c.yaml", SNAPSHOT.format(name="s1", source="snapshots: [nope]"))
    found = issues_of([tmp_path])
    assert len(found) == 3
    assert {Path(i.split(":")[0]).name for i in found} == {"a.yaml", "b.yaml", "c.yaml"}


def test_unreadable_file_and_empty_directory(tmp_path):
    path = write(tmp_path, "m.yaml", MIRROR.format(name="m1"))
    path.chmod(0)
    empty = tmp_path / "empty"
    empty.mkdir()
    try:
        found = issues_of([path, empty, tmp_path / "missing.yaml"])
    finally:
        path.chmod(0o644)
    text = "\n".join(found)
    if path.stat().st_uid == 0 and not text.count("cannot read"):
        pass  # root reads any file; the other two cases still count
    else:
        assert "cannot read" in text
    assert "no *.yaml or *.yml spec files in this directory" in text
    assert "no such file or directory" in text


def test_unreadable_file_as_bytes(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    assert any("cannot read" in i for i in issues_of([path]))


def run_cli(*args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60)


def test_validate_cli_exit_codes_and_nothing_written(tmp_path):
    good = write(tmp_path, "good/m.yaml", MIRROR.format(name="m1"))
    bad = write(tmp_path, "bad/m.yaml", MIRROR.format(name="m1") + "  colour: blue\n")
    root = tmp_path / "root"
    ok = run_cli("validate", "-f", str(good), root=root)
    assert ok.returncode == 0, ok.stderr
    assert "1 mirror(s)" in ok.stdout
    failed = run_cli("validate", "-f", str(bad), root=root)
    assert failed.returncode == 1
    assert f"{bad}:9: Mirror/m1: spec.colour: unknown field" in failed.stderr
    assert not root.exists()


def test_schema_is_json_schema_refusing_unknown_fields(tmp_path):
    out = run_cli("schema", root=tmp_path / "root")
    schema = json.loads(out.stdout)
    assert schema["$defs"]["MirrorSpec"]["additionalProperties"] is False
    assert set(schema["discriminator"]["mapping"]) == {"Mirror", "Snapshot", "Publish"}
