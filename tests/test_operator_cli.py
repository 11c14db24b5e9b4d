"""What an operator reads: `--version`, `list` and `show` as text, `plan -v` package
lists, warnings for filters that select nothing, errors that name the valid choices.

Each test runs the real CLI (typer's runner, the same code path below the parser as
`python -m reconciler`) against a real signed archive served on 127.0.0.1 and a fresh
root (real SQLite, real pool)."""

from __future__ import annotations

import json
import re

import pytest
import typer.main
from typer.testing import CliRunner

from reconciler import __version__
from reconciler.cli import app
from tests.test_mirror_sync import Rig


@pytest.fixture
def rig(tmp_path, http_server, gpg_key) -> Rig:
    made = Rig(tmp_path, http_server, gpg_key)
    made.build()
    return made


def test_version_prints_the_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"reconciler {__version__}"


def _command_paths(command, path=()) -> list[tuple[str, ...]]:
    """Every command and group below `command` (the whole tree, so a new one is covered)."""
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _command_paths(sub, (*path, name))
    return found


# typer's own labels: `<str>`, `<path>`, `<int>`, `<list[str]>`, `<text|json>`, `{NAME}`
PYTHON_TYPE = re.compile(r"<[a-z][^>]*>|\{[A-Z]+\}")


def test_help_names_metavars_instead_of_python_types():
    runner = CliRunner()
    commands = _command_paths(typer.main.get_command(app))
    assert len(commands) > 14 and ("list", "mirrors") in commands
    for command in commands:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.stdout, (command, result.output)
        assert not PYTHON_TYPE.findall(result.stdout), (command, result.stdout)
    assert "-f, --file PATH" in runner.invoke(app, ["plan", "--help"]).stdout
    show = runner.invoke(app, ["show", "--help"]).stdout
    assert "show [OPTIONS] KIND NAME" in show and "\n  NAME  The object's name" in show
    assert "--in KIND/NAME" in runner.invoke(app, ["packages", "--help"]).stdout
    assert "--root DIR" in runner.invoke(app, ["--help"]).stdout
    assert "--log-format [text|json]" in runner.invoke(app, ["serve", "--help"]).stdout


def test_show_prints_lists_as_comma_lists_and_none_as_dash(rig):
    rig.mirror(components=["main", "contrib"], architectures=["amd64"])
    rig.apply()
    out = rig.cli("show", "mirror", "up").stdout
    assert "components: main, contrib\n" in out
    assert "filter: -\n" in out and "lastError: -\n" in out
    assert "[" not in out and "None" not in out and "'" not in out


def test_list_prints_a_header_and_aligned_columns(rig):
    rig.mirror()
    rig.write("snapshot-s", "Snapshot", "s-with-a-long-name", {"mirror": "up"})
    rig.apply()
    lines = rig.cli("list", "mirrors").stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "PACKAGES", "STATUS"]
    assert lines[1].split()[0] == "up" and lines[1].split()[2] == "ready"
    for header in ("PACKAGES", "STATUS", "URL"):  # each column starts where its header does
        assert lines[1][lines[0].index(header) - 1] == " " and lines[1][lines[0].index(header)] != " "
    snaps = rig.cli("list", "snapshots").stdout.splitlines()
    assert snaps[0].startswith("NAME") and snaps[1].startswith("s-with-a-long-name")
    assert snaps[0].index("PACKAGES") == len("s-with-a-long-name") + 2


def test_json_with_another_format_is_an_error(rig):
    rig.mirror()
    out = rig.plan("--json", "--format", "markdown", expect=2)
    assert "--json and --format markdown contradict" in out.stderr
    assert json.loads(rig.plan("--json", "--format", "json").stdout)["changes"]


def test_plan_verbose_lists_the_packages_a_mirror_change_brings(rig):
    rig.mirror(components=["main"])
    created = rig.plan("-v").stdout
    assert "+ create    mirror/up" in created
    assert re.search(r"^      \+ hello_2\.10-2_amd64$", created, re.MULTILINE), created
    rig.apply()
    rig.builder.add("newtool", "1.0-1")
    rig.builder.remove("tinymta")
    rig.build(day=1)
    updated = rig.plan("-v").stdout
    assert re.search(r"^      \+ newtool_1\.0-1_amd64$", updated, re.MULTILINE), updated
    assert re.search(r"^      - tinymta_0\.9-1_amd64$", updated, re.MULTILINE), updated
    assert "hello_2.10-2" not in updated  # unchanged packages are not listed
    change = next(c for c in json.loads(rig.plan("--json").stdout)["changes"] if c["kind"] == "Mirror")
    assert change["detail"]["packages"]["added"] == ["newtool_1.0-1_amd64"]


def test_a_filter_that_matches_nothing_warns_in_plan_and_apply(rig):
    rig.mirror(filter="Name (% hellp*)")
    rig.write("snapshot-s", "Snapshot", "s", {"mirror": "up", "filter": "Name (nothing-here)"})
    planned = rig.plan().stdout
    assert "WARNING: mirror/up: filter 'Name (% hellp*)' matches no package" in planned
    applied = rig.apply().stdout
    assert "WARNING: mirror/up: filter 'Name (% hellp*)' matches no package" in applied
    assert "WARNING: snapshot/s: filter 'Name (nothing-here)' matches no package" in applied
    rig.mirror(filter="Name (hello)")
    assert "WARNING" not in rig.plan().stdout


def test_a_component_typo_names_the_components_the_release_has(rig):
    rig.mirror(components=["mian"])
    out = rig.plan(expect=1).stdout
    assert "mian/binary-amd64/Packages" in out
    assert "its components are main, contrib" in out and "check spec.components" in out
