"""The operator's spec files fail closed: a file that cannot be used is an error naming it.

A spec file that vanished, turned into a directory or a dangling link, or was emptied
must never read as "this file declares nothing" (apply would prune what it declared).
Hostile YAML (alias bombs, merge chains, deep nesting, odd keys and kinds) is refused
quickly with a message, never a traceback, a hang or a MemoryError. The end-to-end test
applies two real mirrors, breaks one file in each way, and checks that validate, plan
and apply exit 1, name the file and drop nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from reconciler import loader
from reconciler.errors import SpecError
from reconciler.loader import load_specs
from tests.support import examples
from tests.support.cli import reconciler
from tests.support.server import ArchiveServer
from tests.support.specs import mirror as mirror_spec

MIRROR = """\
apiVersion: reconciler/v1
kind: Mirror
metadata: {{name: {name}}}
spec: {{url: "http://127.0.0.1:1/debian", distribution: stable, verifySignature: false}}
"""


def issues_of(paths) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_specs(paths, env={})
    return [str(i) for i in info.value.issues]


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "gone.yaml")


def _directory(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)  # opening it for reading would block a careless loader for ever


def _huge(path: Path) -> None:
    path.write_text("# padding\n" * (loader.MAX_FILE_BYTES // 10 + 1) + MIRROR.format(name="b"))


BROKEN = {
    "dangling symlink": (_dangling, "dangling symlink to"),
    "a directory": (_directory, "is a directory, not a spec file"),
    "a fifo": (_fifo, "is not a regular file"),
    "emptied": (lambda p: p.write_text(""), "no spec documents found"),
    "only comments and ---": (lambda p: p.write_text("# was: Mirror b\n---\n...\n---\n"), "no spec documents found"),
    "over the size cap": (_huge, f"larger than {loader.MAX_FILE_BYTES // 1024} KiB"),
    "not UTF-8": (lambda p: p.write_bytes(b"kind: \xff\xfe\n"), "not UTF-8"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_spec_file_that_cannot_be_used_is_an_error_naming_it(tmp_path, case):
    make, expected = BROKEN[case]
    (tmp_path / "a.yaml").write_text(MIRROR.format(name="a"))
    make(tmp_path / "b.yaml")
    found = issues_of([tmp_path])
    assert found == [f"{tmp_path / 'b.yaml'}: " + found[0].split(": ", 1)[1]], found
    assert expected in found[0], found


def test_a_dangling_symlink_given_directly_is_named(tmp_path):
    _dangling(tmp_path / "b.yaml")
    assert issues_of([tmp_path / "b.yaml"]) == [f"{tmp_path / 'b.yaml'}: dangling symlink to {tmp_path / 'gone.yaml'}"]


def test_hidden_entries_stay_skipped(tmp_path):
    """A ConfigMap mount: `..data` (hidden) links to the payload; the visible links load once."""
    payload = tmp_path / "..2026_12_01_00_00_00.000000001"
    payload.mkdir()
    (payload / "a.yaml").write_text(MIRROR.format(name="a"))
    (tmp_path / "..data").symlink_to(payload.name)
    (tmp_path / "a.yaml").symlink_to("..data/a.yaml")
    (tmp_path / ".old.yaml").symlink_to("gone.yaml")  # hidden and dangling: not a spec file
    (tmp_path / ".cache.yaml").mkdir()
    assert list(load_specs([tmp_path], env={}).mirrors) == ["a"]


def _laughs() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9^10 nodes
    return "\n".join(lines) + "\n"


def _merge_chain(depth: int = 3000) -> str:
    lines = ["k0: &k0 {f0: 0}"] + [f"k{i}: &k{i} {{<<: *k{i - 1}, f{i}: {i}}}" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


HOSTILE = {
    "kind: [Mirror]": ("apiVersion: reconciler/v1\nkind: [Mirror]\nmetadata: {name: x}\nspec: {}\n",
                       "kind: unknown kind ['Mirror']"),
    "kind: {Mirror: 1}": ("apiVersion: reconciler/v1\nkind: {Mirror: 1}\nmetadata: {name: x}\nspec: {}\n",
                          "kind: unknown kind {'Mirror': 1}"),
    "kind: 7": ("apiVersion: reconciler/v1\nkind: 7\nmetadata: {name: x}\nspec: {}\n", "kind: unknown kind 7"),
    "apiVersion: [reconciler/v1]": (MIRROR.format(name="x").replace("reconciler/v1", "[reconciler/v1]"),
                                    "apiVersion: Input should be 'reconciler/v1'"),
    "name: [x]": (MIRROR.format(name="[x]"), "metadata.name: Input should be a valid string"),
    "complex key": ("? [a, b]\n: x\n", "b.yaml:1: malformed YAML: a mapping key must be a plain value"),
    "complex key in spec": (MIRROR.format(name="x").replace("spec: {", "spec: {? {a: 1} : x, "),
                            "malformed YAML: a mapping key must be a plain value"),
    "billion laughs": (_laughs(), f"expands to more than {loader.MAX_NODES} nodes through its aliases"),
    "3000-deep merge chain": (_merge_chain(), "nested more than 64 levels deep once aliases and merge keys (<<) "
                                              "are expanded"),
    "recursive alias": ("a: &a [*a]\n", "nested more than 64 levels deep once aliases"),
    "5000-deep nesting": ("[" * 5000 + "]" * 5000 + "\n", "b.yaml:1: malformed YAML: nested more than 64 levels deep"),
    "a 100,000-item list": ("[" + "a, " * 100_000 + "a]\n", f"more than {loader.MAX_NODES} nodes in one document"),
    "deep aliases": ("a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 100)),
                     "nested more than 64 levels deep once aliases and merge keys (<<) are expanded"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_yaml_is_refused_quickly_with_a_message(tmp_path, case):
    text, expected = HOSTILE[case]
    (tmp_path / "b.yaml").write_text(text)
    started = time.monotonic()
    found = issues_of([tmp_path / "b.yaml"])  # SpecError, not TypeError/RecursionError/MemoryError
    seconds = time.monotonic() - started
    assert seconds < 3, seconds
    assert any(expected in issue for issue in found), found
    assert all(issue.startswith(str(tmp_path / "b.yaml")) for issue in found), found


def test_the_limits_leave_room_for_large_real_spec_sets(tmp_path):
    """500 mirrors in one file, each using a merge key, load well within the limits."""
    doc = """\
apiVersion: reconciler/v1
kind: Mirror
metadata: {{name: m{i}}}
spec:
  <<: &common {{url: "http://127.0.0.1:1/debian", distribution: stable, verifySignature: false}}
  components: [main, contrib, non-free]
  architectures: [amd64, arm64]
"""
    (tmp_path / "many.yaml").write_text("---\n".join(doc.format(i=i) for i in range(500)))
    started = time.monotonic()
    specs = load_specs([tmp_path / "many.yaml"], env={})
    assert len(specs.mirrors) == 500 and specs.mirrors["m7"].spec.architectures == ["amd64", "arm64"]
    print(f"500 mirrors loaded in {time.monotonic() - started:.2f}s")


def test_merge_keys_override_without_counting_as_duplicates(tmp_path):
    (tmp_path / "m.yaml").write_text("""\
apiVersion: reconciler/v1
kind: Mirror
metadata: {name: m}
spec:
  <<: {url: "http://127.0.0.1:1/debian", distribution: stable, verifySignature: false}
  distribution: testing
""")
    assert load_specs([tmp_path / "m.yaml"], env={}).mirrors["m"].spec.distribution == "testing"
    (tmp_path / "m.yaml").write_text(MIRROR.format(name="m").replace("spec: {", "spec: {distribution: a, "))
    assert any("duplicate key 'distribution'" in i for i in issues_of([tmp_path / "m.yaml"]))


# -- end to end: nothing declared in a broken file is dropped ------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, gpg_key):
    built = examples.build_example(tmp_path_factory.mktemp("upstream"), gpg_key)
    with ArchiveServer(built.root) as server:
        yield server.url, gpg_key.public_armored


def listed(root: Path) -> list[str]:
    out = reconciler(root, "list", "mirrors", "--json", check=True).stdout
    return [m["name"] for m in json.loads(out)]


def test_a_broken_file_fails_validate_plan_and_apply_and_drops_nothing(tmp_path, upstream):
    url, key = upstream
    specs, root = tmp_path / "specs", tmp_path / "root"
    specs.mkdir()
    good = {name: mirror_spec(name, url, key) for name in ("a", "b")}
    for name, text in good.items():
        (specs / f"{name}.yaml").write_text(text)
    reconciler(root, "apply", "-f", str(specs), check=True)
    assert listed(root) == ["a", "b"]
    faults = {"emptied": lambda p: p.write_text(""), "dangling symlink": _dangling, "a directory": _directory}
    for fault, make in faults.items():
        (specs / "b.yaml").unlink()
        make(specs / "b.yaml")
        for command in ("validate", "plan", "apply"):
            out = reconciler(root, command, "-f", str(specs))
            assert out.returncode == 1, (fault, command, out.stdout, out.stderr)
            assert f"{specs / 'b.yaml'}: " in out.stderr, (fault, command, out.stderr)
            assert "Traceback" not in out.stderr
            assert "drop" not in out.stdout, (fault, command, out.stdout)
        assert listed(root) == ["a", "b"], fault
        (specs / "b.yaml").rmdir() if (specs / "b.yaml").is_dir() else (specs / "b.yaml").unlink()
        (specs / "b.yaml").write_text(good["b"])
    plan = reconciler(root, "plan", "-f", str(specs), "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr
