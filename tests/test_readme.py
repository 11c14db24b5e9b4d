"""The README's Quick tour works as written, line by line, right after `bash examples/run.sh`.

The tour is read out of README.md, so the test and the text cannot drift apart. It runs
in a copy of the repository's examples (the spec files, the signed upstream and the
keys) with the default root, as an operator's shell in the repository would; run.sh
itself is replaced by the `apply` it makes, because the venv already exists here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tour() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quick tour\n.*?```\n(.*?)```", text, re.S).group(1)
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [argv for argv in lines if argv and argv[0] == "reconciler"]


def run(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler", *argv[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


def test_the_quick_tour_runs_as_written_after_the_example(tmp_path):
    shutil.copytree(REPO / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns(".state", "__pycache__"))
    first = run(tmp_path, ["reconciler", "apply", "-f", "examples/repos"])  # what examples/run.sh does
    assert first.returncode == 0, first.stdout + first.stderr
    commands = tour()
    assert len(commands) >= 9
    for argv in commands:
        out = run(tmp_path, argv)
        assert out.returncode == 0, f"{shlex.join(argv)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
        assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".reconciler", "examples"]


def test_read_only_commands_on_a_fresh_directory_create_nothing(tmp_path):
    for argv in (["reconciler", "list", "mirrors"], ["reconciler", "verify"]):
        assert run(tmp_path, argv).returncode == 0
    assert list(tmp_path.iterdir()) == []


def test_the_spec_example_in_the_readme_is_valid(tmp_path):
    from reconciler.loader import load_specs

    text = (REPO / "README.md").read_text()
    block = re.search(r"## Specs\n.*?```yaml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "all.yaml").write_text(block)
    specs = load_specs([tmp_path], env={})
    assert set(specs.mirrors) == {"bookworm-main"} and set(specs.publishes) == {"bookworm"}
    assert set(specs.snapshots) == {"bookworm-2026-11-25", "daily"}


def test_every_test_the_guarantees_table_names_exists():
    """A guarantee without its test is a claim: each node id in the table must be collected."""
    import ast

    text = (REPO / "README.md").read_text()
    table = text[text.index("## Guarantees"):text.index("## Performance")]
    missing = []
    for row in table.splitlines():
        file = None
        for ref in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", row):
            file = ref[0] or file
            if file is None:
                continue
            path = REPO / file
            if not path.exists():
                missing.append(file)
                continue
            if ref[1]:
                names = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
                if ref[1] not in names:
                    missing.append(f"{file}::{ref[1]}")
    assert missing == []
