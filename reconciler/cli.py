"""The command line: parse, call one library function, render. Errors map to exit codes here.

Exit codes: 0 success; 1 invalid specs, refused or failed change, unknown object;
2 only from `plan --detailed-exitcode` when something would change.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from reconciler import views
from reconciler.errors import ReconcilerError, SpecError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Keep Debian package repositories in the state YAML specs declare.")
list_app = typer.Typer(no_args_is_help=True, help="List mirrors, snapshots or publishes.")
app.add_typer(list_app, name="list")


class State:
    root: Path = Path(".reconciler")
    publish_root: Path | None = None


STATE = State()
FilesOpt = Annotated[list[Path], typer.Option("-f", "--file", help="Spec file or directory (repeatable)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (stable shape)")]


def _context():
    from reconciler.tasks import Context

    return Context(STATE.root, publish_root=STATE.publish_root, echo=_echo_err)


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


def _fail(exc: ReconcilerError) -> None:
    """The one place domain errors become messages and exit codes."""
    if isinstance(exc, SpecError):
        for issue in exc.issues:
            typer.echo(str(issue), err=True)
        errors = sum(1 for i in exc.issues if not i.warning)
        typer.echo(f"{errors} error(s) in the specs; nothing was changed", err=True)
    else:
        typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


@app.callback()
def main_options(
    root: Annotated[Path, typer.Option(envvar="RECONCILER_ROOT", help="State directory (state.db, pool, public/)")]
    = Path(".reconciler"),
    publish_root: Annotated[Optional[Path], typer.Option(envvar="RECONCILER_PUBLISH_ROOT",
                                                         help="Where published trees go (default ROOT/public)")] = None,
) -> None:
    STATE.root = root
    STATE.publish_root = publish_root


@app.command()
def validate(files: FilesOpt) -> None:
    """Load and check the specs; exit 0 when valid, 1 when not.

    Example: reconciler validate -f examples/repos
    """
    from reconciler.loader import load_specs

    try:
        specs = load_specs(files)
    except ReconcilerError as exc:
        _fail(exc)
    for warning in specs.warnings:
        typer.echo(str(warning), err=True)
    total = len(specs.mirrors) + len(specs.snapshots) + len(specs.publishes)
    typer.echo(f"valid: {len(specs.mirrors)} mirror(s), {len(specs.snapshots)} snapshot(s), "
               f"{len(specs.publishes)} publish(es) ({total} documents)")


@app.command()
def schema() -> None:
    """Print the JSON Schema of a spec document (for yaml-language-server).

    Example: reconciler schema > reconciler.schema.json
    """
    from reconciler.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


class Kind(str, Enum):
    mirror = "mirror"
    snapshot = "snapshot"
    publish = "publish"


def _list(kind: str, as_json: bool) -> None:
    try:
        store = _context().store()
        attr, view = views.rows_for(kind)
        items = [view(r) for r in getattr(store, attr).list()]
    except ReconcilerError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    if not items:
        typer.echo(f"no {attr}")
    for item in items:
        typer.echo(_summary(kind, item))


def _summary(kind: str, item: dict) -> str:
    if kind == "mirror":
        return (f"{item['name']}  {item['url']} {item['distribution']} [{','.join(item['components'])}] "
                f"[{','.join(item['architectures'])}]  {item['numPackages']} packages  {item['status']}  "
                f"updated {item['lastUpdate'] or 'never'}")
    if kind == "snapshot":
        source = item["mirror"] and f"mirror {item['mirror']}" or f"merge of {', '.join(item['snapshots'])}"
        return f"{item['name']}  {item['numPackages']} packages  from {source}  {item['digest'][:12]}  {item['createdAt']}"
    comps = ", ".join(f"{c}={s}" for c, s in item["components"].items())
    return f"{item['name']}  {item['prefix']}/{item['distribution']}  {comps}  {item['numPackages']} packages"


@list_app.command("mirrors")
def list_mirrors(as_json: JsonOpt = False) -> None:
    """List mirrors with their package counts.  Example: reconciler list mirrors --json"""
    _list("mirror", as_json)


@list_app.command("snapshots")
def list_snapshots(as_json: JsonOpt = False) -> None:
    """List snapshots with their package counts.  Example: reconciler list snapshots"""
    _list("snapshot", as_json)


@list_app.command("publishes")
def list_publishes(as_json: JsonOpt = False) -> None:
    """List published trees.  Example: reconciler list publishes --json"""
    _list("publish", as_json)


@app.command()
def show(kind: Kind, name: str, as_json: JsonOpt = False) -> None:
    """Show one object; exit 1 when unknown.

    Example: reconciler show mirror bookworm-main --json
    """
    from reconciler.errors import NotFound

    try:
        store = _context().store()
        attr, view = views.rows_for(kind.value)
        row = getattr(store, attr).get(name)
        if row is None:
            raise NotFound(f"{kind.value} {name!r} does not exist")
        item = view(row)
    except ReconcilerError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(item, indent=2))
    else:
        for key, value in item.items():
            typer.echo(f"{key}: {value}")


def main() -> None:
    try:
        app()
    except ReconcilerError as exc:  # pragma: no cover - commands map their own errors
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
