"""The command line: parse, call one library function, render. Errors map to exit codes here.

Exit codes: 0 success; 1 invalid specs, refused or failed change, unknown object;
2 only from `plan --detailed-exitcode` when something would change.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
import typer.core

from reconciler import kinds, views
from reconciler.errors import ReconcilerError, SpecError

if TYPE_CHECKING:  # the CLI imports what a command needs when it runs
    from reconciler.fetch import Progress


class Command(typer.core.TyperCommand):
    """A command whose help names each argument by its metavar only.

    typer prints an argument's Python type after its name (`NAME <str>`) and braces a
    required one in the usage line (`{NAME}`); an operator should read `NAME`. (Options
    show their metavar instead of the type already: every option that takes a value
    sets one; `test_help_names_metavars_instead_of_python_types` checks.)"""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_argument_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                sections["Arguments"].append((_argument_name(param), record[1]))
            else:
                sections["Options"].append(record)
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _argument_name(param) -> str:
    name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
    return name if param.required else f"[{name}]"


class Typer(typer.Typer):
    """typer.Typer whose commands are `Command`s."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or Command, **kwargs)


def choices(enum: type[Enum]) -> str:
    """The metavar of an option taking one of an enum's values: [a|b|c]."""
    return "[" + "|".join(member.value for member in enum) + "]"


app = Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
            help="Keep Debian package repositories in the state YAML specs declare.")
list_app = Typer(no_args_is_help=True, rich_markup_mode=None, help="List mirrors, snapshots or publishes.")
app.add_typer(list_app, name="list")
state_app = typer.Typer(no_args_is_help=True, help="Move the state between backends (SQLite file, PostgreSQL).")
app.add_typer(state_app, name="state")


class State:
    root: Path = Path(".reconciler")
    publish_root: Path | None = None
    state: str | None = None
    pool_root: Path | None = None


STATE = State()
FilesOpt = Annotated[list[Path], typer.Option("-f", "--file", metavar="PATH",
                                              help="Spec file or directory (repeatable)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (stable shape)")]


def _context(*, read_only: bool = False):
    """The root's context, its state checked: a lost state is refused here, before any work.

    Read-only commands create nothing: on a root without state they read an empty one
    and say so on stderr."""
    from reconciler.tasks import Context

    progress: Callable[[str], Progress] | None = None
    if sys.stderr.isatty():
        from reconciler.progress import RichProgress

        progress = RichProgress
    ctx = Context(STATE.root, publish_root=STATE.publish_root, progress=progress, create=not read_only,
                  state=STATE.state, pool_root=STATE.pool_root)
    ctx.store()
    if read_only and not ctx.has_state():
        typer.echo(f"note: {ctx.root} has no state yet ({ctx.state_name} has none): it reads as empty; "
                   "nothing was created", err=True)
    return ctx


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


def _version(value: bool) -> None:
    if value:
        from reconciler import __version__

        typer.echo(f"reconciler {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    root: Annotated[Path, typer.Option(envvar="RECONCILER_ROOT", metavar="DIR", help="State directory (state.db, pool, public/)")]
    = Path(".reconciler"),
    publish_root: Annotated[Optional[Path], typer.Option(envvar="RECONCILER_PUBLISH_ROOT", metavar="DIR",
                                                         help="Where published trees go (default ROOT/public)")] = None,
    state: Annotated[Optional[str], typer.Option(
        "--state", envvar="RECONCILER_STATE", metavar="URL",
        help="Where the state lives: sqlite:////PATH/state.db (default ROOT/state.db) or "
             "postgresql://USER@HOST/DATABASE (reconciler[postgres]; shared by several hosts)")] = None,
    pool_root: Annotated[Optional[Path], typer.Option(
        "--pool", envvar="RECONCILER_POOL", metavar="DIR",
        help="The package pool (default ROOT/pool); hosts sharing a PostgreSQL state share it")] = None,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                          help="Print the version and exit")] = False,
) -> None:
    STATE.root = root
    STATE.publish_root = publish_root
    STATE.state = state
    STATE.pool_root = pool_root


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
def schema(markdown: Annotated[bool, typer.Option("--markdown", help="Print the spec reference "
                                                                     "(docs/specs.md) instead")] = False) -> None:
    """Print the JSON Schema of a spec document (for yaml-language-server).

    Example: reconciler schema > reconciler.schema.json

    Example: reconciler schema --markdown > docs/specs.md
    """
    if markdown:
        from reconciler.docgen import markdown as reference

        typer.echo(reference(), nl=False)
        return
    from reconciler.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


Kind = Enum("Kind", {kind.word: kind.word for kind in kinds.all()}, type=str)  # type: ignore[misc]


def _list(word: str, as_json: bool) -> None:
    try:
        store = _context(read_only=True).store()
        kind = views.kind_of(word)
        items = [kind.view(r) for r in kind.rows(store).list()]
    except ReconcilerError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    if not items:
        typer.echo(f"no {kind.plural}")
        return
    header, rows = views.table(word, items)
    typer.echo(_table(header, rows))


def _list_command(kind: kinds.Kind) -> None:
    """`list KINDS` for one registered kind."""
    def command(as_json: JsonOpt = False) -> None:
        _list(kind.word, as_json)

    command.__doc__ = kind.list_help
    list_app.command(kind.plural)(command)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned to their widest cell, two spaces apart; the last column is not padded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


for _kind in kinds.all():
    _list_command(_kind)


@app.command()
def show(kind: Annotated[Kind, typer.Argument(metavar="KIND", help=kinds.words())],
         name: Annotated[str, typer.Argument(metavar="NAME", help="The object's name")], as_json: JsonOpt = False) -> None:
    """Show one object; exit 1 when unknown.

    Example: reconciler show mirror bookworm-main --json
    """
    from reconciler.errors import NotFound

    try:
        store = _context(read_only=True).store()
        of = views.kind_of(kind.value)
        row = of.rows(store).get(name)
        if row is None:
            raise NotFound(f"{kind.value} {name!r} does not exist")
        item = of.view(row)
    except ReconcilerError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(item, indent=2))
    else:
        for key, value in item.items():
            typer.echo(f"{key}: {views.text(value)}")


@app.command()
def packages(
    text: Annotated[Optional[str], typer.Argument(metavar="QUERY", help="aptly package query, e.g. "
                                                                       "'Name (% lib*)'; all without one")]
    = None,
    where: Annotated[Optional[str], typer.Option("--in", metavar="KIND/NAME",
                                                 help="mirror/NAME, snapshot/NAME or publish/NAME; default: "
                                                      "every mirror and snapshot")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List or search packages: one object's list with --in, else every stored list.

    Example: reconciler packages --in snapshot/stable-2026-11-25 'Priority (required)'

    Example: reconciler packages 'hello (>= 2.10)' --json
    """
    try:
        found = views.packages(_context(read_only=True).store(), text, where)
    except ReconcilerError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    rows = found["packages"]
    if not rows:
        typer.echo("no packages match" if text else "no packages")
        return
    header = ["NAME", "VERSION", "ARCH", "TYPE"]
    cells = [[r["name"], r["version"], r["arch"], r["type"]] for r in rows]
    if where is None or where.startswith("publish/"):
        header.append("IN" if where is None else "COMPONENT")
        for cell, r in zip(cells, rows):
            cell.append(r["in"] if where is None else r["component"])
    typer.echo(_table(header, cells))
    typer.echo(f"{found['total']} package(s)", err=True)


ForceOpt = Annotated[bool, typer.Option("--force", help="Drop objects in use; accept removals beyond the gate and "
                                                           "upstream replays")]
OwnerOpt = Annotated[str, typer.Option("--owner", metavar="NAME",
                                       help="Which spec set this is: only its own objects are pruned")]
ReplaceOpt = Annotated[list[str], typer.Option("--replace", metavar="SNAPSHOT",
                                               help="Drop and recreate this existing snapshot (repeatable)")]
TakeOverOpt = Annotated[bool, typer.Option("--take-over", help="Make these specs the source of --owner, and take "
                                                               "over declared objects other owners hold")]


class Format(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"


def _load(files: list[Path]):
    from reconciler.loader import load_specs

    specs = load_specs(files)
    for warning in specs.warnings:
        typer.echo(str(warning), err=True)
    return specs


def _options(owner: str, force: bool, replace: list[str], files: list[Path], take_over: bool = False):
    from reconciler.loader import source_identity
    from reconciler.plan import Options

    return Options(owner=owner, force=force, replace=frozenset(replace), source=source_identity(files),
                   take_over=take_over)


def _package_lines(change) -> list[str]:
    """The packages a change adds, changes, removes: per component for a publish, one list for a mirror."""
    packages = change.detail.get("packages", {})
    kind = kinds.find(change.kind)
    if kind is None:
        return []
    if not kind.components:
        packages = {"": packages} if packages else {}
    lines = []
    for comp, diff in packages.items():
        where = f"{comp}: " if comp else ""
        lines += [f"      {where}+ {ref}" for ref in diff["added"]]
        lines += [f"      {where}~ {old} -> {new}" for old, new in diff["changed"]]
        lines += [f"      {where}- {ref}" for ref in diff["removed"]]
    return lines


def _render_plan(the_plan, fmt: Format, *, verbose: bool = False) -> str:
    if fmt is Format.json:
        return the_plan.dumps()
    if fmt is Format.markdown:
        rows = ["| | kind | name | change |", "|---|---|---|---|"]
        rows += [f"| {c.op} | {c.kind} | {c.name} | {c.reason.replace('|', '/')} |" for c in the_plan.changes]
        return "\n".join(rows)
    lines = []
    for change in the_plan.changes:
        lines.append(change.text())
        if verbose:
            lines += _package_lines(change)
    lines = lines or ["nothing declared"]
    todo = sum(1 for c in the_plan.changes if c.changes_anything and c.op != "error")
    lines.append(f"plan: {todo} change(s), {len(the_plan.errors)} error(s)")
    return "\n".join(lines)


@app.command()
def plan(files: FilesOpt, as_json: JsonOpt = False,
         fmt: Annotated[Format, typer.Option("--format", metavar=choices(Format),
                                             help="text, json or markdown (a PR comment)")] = Format.text,
         detailed_exitcode: Annotated[bool, typer.Option("--detailed-exitcode",
                                                         help="Exit 2 when anything would change")] = False,
         owner: OwnerOpt = "default", force: ForceOpt = False, replace: ReplaceOpt = [],
         take_over: TakeOverOpt = False,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List the packages each mirror and "
                                                                          "publish change adds, changes, removes")]
         = False
         ) -> None:
    """Show what apply would do, per object, with package counts. Downloads no package file.

    Example: reconciler plan -f examples/repos --detailed-exitcode
    """
    from reconciler.reconcile import make_plan

    if as_json and fmt not in (Format.text, Format.json):
        raise typer.BadParameter(f"--json and --format {fmt.value} contradict each other; give one",
                                 param_hint="--json/--format")
    try:
        specs = _load(files)
        the_plan = make_plan(_context(read_only=True), specs, _options(owner, force, replace, files, take_over))
    except ReconcilerError as exc:
        _fail(exc)
    typer.echo(_render_plan(the_plan, Format.json if as_json else fmt, verbose=verbose))
    if the_plan.errors:
        raise typer.Exit(1)
    if detailed_exitcode and the_plan.has_changes:
        raise typer.Exit(2)


@app.command()
def apply(files: FilesOpt, force: ForceOpt = False,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only; change nothing")] = False,
          owner: OwnerOpt = "default", replace: ReplaceOpt = [], take_over: TakeOverOpt = False) -> None:
    """Make the state match the specs, each change a locked task. Exit 1 when anything failed.

    Example: reconciler apply -f examples/repos
    """
    from reconciler.reconcile import apply as apply_specs, make_plan

    try:
        specs = _load(files)
        options = _options(owner, force, replace, files, take_over)
        if dry_run:
            typer.echo(_render_plan(make_plan(_context(read_only=True), specs, options), Format.text))
            return
        report = apply_specs(_context(), specs, options, echo=typer.echo)
    except ReconcilerError as exc:
        _fail(exc)
    if not report.ok:
        typer.echo(f"{len(report.failures)} change(s) failed", err=True)
        raise typer.Exit(1)


@app.command()
def gc(dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted")] = False,
       include_unrecorded: Annotated[bool, typer.Option(
           "--include-unrecorded", help="Also delete unreferenced pool files state.db never recorded")] = False
       ) -> None:
    """Delete pool files state.db recorded and no mirror or snapshot refers to; report the bytes freed.

    Example: reconciler gc --dry-run
    """
    from reconciler.actions.maintenance import gc as run_gc

    try:
        report = run_gc(_context(), dry_run=dry_run, include_unrecorded=include_unrecorded)
    except ReconcilerError as exc:
        _fail(exc)
    for path in report.paths:
        typer.echo(path)
    typer.echo(report.line(dry_run))


@app.command()
def verify(deep: Annotated[bool, typer.Option("--deep", help="Also re-hash every pool file")] = False) -> None:
    """Check the database, the pool and every published tree; report drift. Exit 1 on problems.

    Example: reconciler verify --deep
    """
    from reconciler.actions.maintenance import verify as run_verify

    try:
        problems = run_verify(_context(read_only=True), deep=deep)
    except ReconcilerError as exc:
        _fail(exc)
    for problem in problems:
        typer.echo(problem)
    typer.echo(f"verify: {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(1)


@app.command()
def diff(kind: Annotated[str, typer.Argument(metavar="KIND", help="snapshot")],
         a: Annotated[str, typer.Argument(metavar="A", help="The older snapshot")],
         b: Annotated[str, typer.Argument(metavar="B", help="The newer snapshot")], as_json: JsonOpt = False) -> None:
    """List packages added, removed and changed between two snapshots.

    Example: reconciler diff snapshot stable-2026-11-24 stable-2026-11-25
    """
    from reconciler.actions.snapshots import diff as snapshot_diff

    if kind != "snapshot":
        typer.echo("error: only `diff snapshot A B` is supported", err=True)
        raise typer.Exit(1)
    try:
        result = snapshot_diff(_context(read_only=True).store(), a, b)
    except ReconcilerError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for ref in result["added"]:
        typer.echo(f"+ {ref}")
    for ref in result["removed"]:
        typer.echo(f"- {ref}")
    for old, new in result["changed"]:
        typer.echo(f"~ {old} -> {new}")
    typer.echo(f"{len(result['added'])} added, {len(result['removed'])} removed, {len(result['changed'])} changed")


# -- serve and watch ------------------------------------------------------------------


def _duration(text: str, flag: str) -> float:
    from reconciler.spec import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None


def _git_source(url: str, ref: str, path: str, *, username_file: Optional[Path], password_file: Optional[Path],
                token_file: Optional[Path], ssh_key_file: Optional[Path], verify_commits: bool,
                trusted_keys_file: Optional[Path]):
    from reconciler import gitsource

    if (username_file is None) != (password_file is None):
        raise typer.BadParameter("give both --git-username-file and --git-password-file", param_hint="--git-*")
    if sum(x is not None for x in (username_file, token_file, ssh_key_file)) > 1:
        raise typer.BadParameter("choose one of basic auth, --git-token-file, --git-ssh-key-file",
                                 param_hint="--git-*")
    if verify_commits != (trusted_keys_file is not None):
        raise typer.BadParameter("--verify-commits and --trusted-keys-file go together",
                                 param_hint="--verify-commits")
    try:
        gitsource.check_subdir(path)
        creds = gitsource.Credentials.from_files(username_file=username_file, password_file=password_file,
                                                 token_file=token_file, ssh_key_file=ssh_key_file)
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--path/--git-*") from None
    return gitsource.GitSource(url, ref=ref, path=path, cache=STATE.root / "git-cache", credentials=creds,
                               trusted_keys=trusted_keys_file, workdir=STATE.root / "tmp")


PathOpt = Optional[Path]


class LogFormat(str, Enum):
    text = "text"
    json = "json"


LogFormatOpt = Annotated[LogFormat, typer.Option("--log-format", metavar=choices(LogFormat), help="text for a terminal; json: one object a "
                                                                     "line (time, level, message, kind, name, op, "
                                                                     "task, seconds) for a log collector")]


def _logging(fmt: LogFormat) -> None:
    from reconciler import logfmt

    logfmt.setup(fmt.value)


@app.command()
def serve(
    specs: Annotated[PathOpt, typer.Option("--specs", metavar="DIR", help="Spec directory (e.g. a mounted ConfigMap)")] = None,
    git: Annotated[Optional[str], typer.Option("--git", metavar="URL",
                                               help="Git repository URL holding the specs")] = None,
    ref: Annotated[str, typer.Option("--ref", metavar="REF", help="Branch, tag or commit to follow")] = "main",
    path: Annotated[str, typer.Option("--path", metavar="DIR",
                                      help="Directory of the specs inside the repository")] = ".",
    listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT",
                                        help="HOST:PORT or [IPV6]:PORT of the API")] = "127.0.0.1:8080",
    interval: Annotated[str, typer.Option("--interval", metavar="DURATION",
                                          help="Reconcile this often (±10%): 30s, 10m, 1h")] = "10m",
    token_file: Annotated[PathOpt, typer.Option("--token-file", metavar="FILE", help="Bearer token mutating calls need")] = None,
    serve_public: Annotated[bool, typer.Option("--serve-public", help="Serve the publish root at /public/")] = False,
    suspend: Annotated[bool, typer.Option("--suspend", help="Reconcile only on POST /api/reconcile")] = False,
    owner: OwnerOpt = "default",
    grace: Annotated[str, typer.Option("--grace-period", metavar="DURATION",
                                       help="Time a running task gets after SIGTERM")] = "30s",
    leader_poll: Annotated[str, typer.Option("--leader-poll", metavar="DURATION",
                                             help="How often a standby replica tries to take the leadership "
                                                  "(several serve on one PostgreSQL state): 1s")] = "1s",
    git_username_file: Annotated[PathOpt, typer.Option("--git-username-file", metavar="FILE", help="HTTPS basic auth user")] = None,
    git_password_file: Annotated[PathOpt, typer.Option("--git-password-file", metavar="FILE", help="HTTPS basic password")] = None,
    git_token_file: Annotated[PathOpt, typer.Option("--git-token-file", metavar="FILE", help="HTTPS bearer token")] = None,
    git_ssh_key_file: Annotated[PathOpt, typer.Option("--git-ssh-key-file", metavar="FILE", help="SSH private key")] = None,
    verify_commits: Annotated[bool, typer.Option("--verify-commits", help="Apply only commits signed by a "
                                                                          "trusted key")] = False,
    trusted_keys_file: Annotated[PathOpt, typer.Option("--trusted-keys-file", metavar="FILE", help="OpenPGP public keys that "
                                                                                    "must sign commits")] = None,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Reconcile continuously and serve the HTTP API (/api, /healthz, /readyz, /metrics, /openapi.json).

    Example: reconciler serve --specs /etc/reconciler/specs --listen 127.0.0.1:8080

    Example: reconciler serve --git https://git.example/apt.git --ref main --path specs
    --git-token-file /etc/reconciler/git/token --interval 5m
    """
    from reconciler import api, serve as server

    if (specs is None) == (git is None):
        raise typer.BadParameter("give exactly one of --specs DIR or --git URL", param_hint="--specs/--git")
    try:
        server.parse_listen(listen)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--listen") from None
    if token_file is not None:
        try:
            api.read_token(token_file)  # before anything starts: a token file that refuses every mutation
        except ReconcilerError as exc:
            _fail(exc)
    if specs is not None:
        source = server.DirSource(specs)
    elif git is not None:  # (exactly one of them, checked above)
        source = _git_source(git, ref, path, username_file=git_username_file, password_file=git_password_file,
                             token_file=git_token_file, ssh_key_file=git_ssh_key_file,
                             verify_commits=verify_commits, trusted_keys_file=trusted_keys_file)
    _logging(log_format)
    options = server.Options(listen=listen, interval=_duration(interval, "--interval"), owner=owner,
                             suspend=suspend, token_file=token_file, serve_public=serve_public,
                             grace=_duration(grace, "--grace-period"),
                             leader_poll=_duration(leader_poll, "--leader-poll"))
    try:
        code = server.run(_context(), source, options)
    except ReconcilerError as exc:
        _fail(exc)
    raise typer.Exit(code)


@app.command()
def watch(files: FilesOpt, owner: OwnerOpt = "default", log_format: LogFormatOpt = LogFormat.text) -> None:
    """Validate, plan and apply whenever the spec files change; an invalid edit applies nothing.

    Example: reconciler watch -f examples/repos --log-format json
    """
    import logging

    from reconciler import watch as watcher

    from reconciler import events

    echo: Callable[[str], None] = typer.echo
    subscribers = None
    if log_format is LogFormat.json:  # each line of output one JSON record on stderr
        _logging(log_format)
        log = logging.getLogger("reconciler.watch")
        subscribers = [events.log_to(log)]  # each change's record carries its task and seconds

        def log_lines(text: str) -> None:
            for line in str(text).splitlines():
                (log.warning if line.startswith(("WARNING", "FAILED", "error")) else log.info)("%s", line)

        echo = log_lines
    try:
        code = watcher.run(_context(), files, owner=owner, echo=echo, subscribers=subscribers)
    except ReconcilerError as exc:
        _fail(exc)
    raise typer.Exit(code)


@state_app.command("copy")
def state_copy(
    to: Annotated[str, typer.Option("--to", metavar="URL", help="The destination: an empty PostgreSQL database "
                                    "(postgresql://...) or a new SQLite file (sqlite:////PATH/state.db)")],
    source: Annotated[Optional[str], typer.Option("--from", metavar="URL",
                                                  help="The source (default: this root's state)")] = None,
) -> None:
    """Copy every object, package list and task of one state into another, then check that
    both sides list the same objects and digests. Stop the reconcilers first.

    Example: reconciler --root /srv/reconciler state copy --to postgresql://reconciler@db/reconciler
    """
    from reconciler.state import backend as statebackend
    from reconciler.state import copy as statecopy

    try:
        src = statebackend.open_backend(source or STATE.state, STATE.root)
        dst = statebackend.open_backend(to, STATE.root)
        report = statecopy.copy(src, dst)
    except ReconcilerError as exc:
        _fail(exc)
    typer.echo(report.line(src.describe(), dst.describe()))


def main() -> None:
    """Entry point; the last line of defence keeps tracebacks away from operators."""
    from reconciler.state import backend as statebackend

    try:
        app()
    except ReconcilerError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # disk full, read-only root, permissions
        typer.echo(f"error: {exc.strerror or exc} ({exc.filename or 'no file'}); "
                   "the state database is unchanged by the failed task", err=True)
        sys.exit(1)
    except statebackend.DATABASE_ERRORS as exc:
        typer.echo(f"error: state database: {exc}", err=True)
        sys.exit(1)
