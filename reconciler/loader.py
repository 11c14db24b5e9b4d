"""YAML files → validated specs. Errors carry `file:line`, the object and the field.

The loader reports every problem of a run at once: a reviewer fixing a pull request
should not have to push once per typo. It reads files and directories (recursively,
`*.yaml`/`*.yml`, multi-document), substitutes `${VAR}` / `${VAR:-default}` from the
environment in string values, validates each document with the pydantic models, and
then checks what only the whole set can show: duplicate names, references to
undeclared objects and merge cycles.

Inputs fail closed: a spec file that cannot be used (a dangling symlink, a directory or
special file named `*.yaml`, an unreadable or emptied file, one over the limits below) is
an error naming it, never a file skipped, because `apply` would read the objects it
declared as no longer wanted and prune them. Only hidden paths are skipped (a ConfigMap
mount's `..data` holds every file a second time).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from reconciler import kinds
from reconciler import spec as specs
from reconciler.errors import SpecError, SpecIssue

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# Limits on one spec file. A real spec is a few KiB, nests about 5 deep and has some
# hundred nodes per document; these are far above that and far below what hurts. They
# make a hostile or broken file fail quickly with a message instead of eating memory or
# the stack: aliases make a document a graph whose expansion can be exponential
# ("billion laughs": 9 levels of 9 aliases are 10^9 nodes), and PyYAML constructs and
# flattens merge keys (`<<: *prev`) recursively. The numbers follow from what pure-Python
# PyYAML costs on a small machine: some 15,000-25,000 nodes and 0.15 MiB a second, so a
# document is refused within about a second and a file within some seconds (without the
# caps, an 8 MiB flat list ran for more than 2 minutes and took 1.2 GB before it was killed).
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64  # nesting of one document, counted through aliases and merge keys
MAX_NODES = 20_000  # nodes of one document as written, and again with every alias expanded


class LineDict(dict):
    """A mapping that remembers the line of each key (1-based)."""

    lines: dict[object, int]  # YAML keys are mostly strings, but need not be
    line: int


class LineList(list):
    """A sequence that remembers the line of each item (1-based)."""

    lines: list[int]
    line: int


class _Loader(yaml.SafeLoader):
    """SafeLoader within the limits above: the composer refuses deep nesting before it
    recurses and a document of too many nodes before it holds them all, and each
    document's node graph is measured before anything is built from it."""

    _depth = 0
    _nodes = 0

    def compose_document(self):
        self._nodes = 0
        return super().compose_document()

    def compose_node(self, parent, index):
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            if self._nodes > MAX_NODES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES} nodes in one document; "
                                                  "a spec document needs far fewer", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def flatten_mapping(self, node):
        """PyYAML's, also noting on the node how many of its pairs came in through `<<`
        (flattening puts them first). Once per node: a node may be flattened first as
        another's merge source, which removes its own merge keys."""
        if not hasattr(node, "merged"):
            own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
            super().flatten_mapping(node)
            node.merged = len(node.value) - own

    def construct_document(self, node):
        _check_size(node)
        return super().construct_document(node)


def _check_size(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand beyond MAX_NODES nodes or MAX_DEPTH levels.

    Each node's expanded size and height are computed once (memoised by identity), so
    this costs one pass over the graph however large its expansion. The recursion itself
    stops at MAX_DEPTH, which also refuses a recursive alias (`&a [*a]`)."""
    seen: dict[int, tuple[int, int]] = {}

    def refuse(node: yaml.Node, problem: str) -> None:
        raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        if id(node) in seen:
            return seen[id(node)]
        if depth > MAX_DEPTH:
            refuse(node, f"nested more than {MAX_DEPTH} levels deep once aliases and merge keys (<<) are expanded")
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size, height = 1, 1
        for child in children:
            child_size, child_height = measure(child, depth + 1)
            size, height = size + child_size, max(height, child_height + 1)
            if size > MAX_NODES:
                refuse(node, f"expands to more than {MAX_NODES} nodes through its aliases (*name) and merge keys "
                             "(<<); a spec document needs far fewer")
        if height > MAX_DEPTH:
            refuse(node, f"nested more than {MAX_DEPTH} levels deep once aliases and merge keys (<<) are expanded")
        seen[id(node)] = size, height
        return size, height

    measure(root, 1)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    merged = node.merged
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.lines = {}
    own_keys = set()
    for index, (key_node, value_node) in enumerate(node.value):
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value, not a list or mapping", key_node.start_mark)
        key = loader.construct_object(key_node, deep=True)
        # YAML says keys are unique; PyYAML would keep the last one silently. A key merged
        # in with `<<` is not a duplicate: the mapping's own key overrides it.
        if index >= merged:
            if key in own_keys:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {result.lines[key]})", key_node.start_mark)
            own_keys.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(item, deep=True) for item in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [item.start_mark.line + 1 for item in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


@dataclass(frozen=True)
class Origin:
    file: str
    line: int


@dataclass
class Specs:
    """The desired state: every declared object by kind and name, and where it was declared."""

    mirrors: dict[str, specs.MirrorDoc] = field(default_factory=dict)
    snapshots: dict[str, specs.SnapshotDoc] = field(default_factory=dict)
    publishes: dict[str, specs.PublishDoc] = field(default_factory=dict)
    origins: dict[tuple[str, str], Origin] = field(default_factory=dict)
    warnings: list[SpecIssue] = field(default_factory=list)
    # absolute path -> SHA-256 of what it holds (None: unreadable) for each keyring and
    # signing key file: plans compare these, not paths, so a copied spec directory is
    # the same spec set
    digests: dict[str, str | None] = field(default_factory=dict)

    # declared objects of kinds registered beyond the built-in three: kind -> name -> doc
    more: dict[str, dict] = field(default_factory=dict)

    def by_kind(self, kind: str) -> dict:
        """name -> document of one registered kind (`kinds.get(kind).plural` for the built-in ones)."""
        plural = kinds.get(kind).plural
        return getattr(self, plural) if plural in self.__dataclass_fields__ else self.more.setdefault(kind, {})


@dataclass
class _Raw:
    data: object
    file: Path
    index: int

    def line_of(self, loc: Iterable[object]) -> int:
        """The deepest line known along a pydantic error location."""
        node, line = self.data, getattr(self.data, "line", 0)
        for part in loc:
            if isinstance(node, LineDict) and part in node:
                line = node.lines.get(part, line)
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                line = node.lines[part] if isinstance(node, LineList) else line
                node = node[part]
            else:
                break
        return line


def spec_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[SpecIssue]]:
    """Expand files and directories (recursively) into the list of spec files to read.

    Every visible `*.yaml`/`*.yml` entry is listed, whatever it is: `_read` reports one
    that is not a readable regular file (a dangling symlink, a directory) instead of
    letting it vanish from the desired state."""
    files: list[Path] = []
    issues: list[SpecIssue] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            before = len(issues)
            found = _walk(path, issues)
            if not found and len(issues) == before:
                issues.append(SpecIssue(str(path), 0, "", "", "no *.yaml or *.yml spec files in this directory"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        elif path.is_symlink():
            issues.append(SpecIssue(str(path), 0, "", "", f"dangling symlink to {os.readlink(path)}"))
        else:
            issues.append(SpecIssue(str(path), 0, "", "", "no such file or directory"))
    if not files and not issues:
        issues.append(SpecIssue("-f", 0, "", "", "no spec files given; refusing to read that as 'declare nothing'"))
    return files, issues


def source_identity(paths: Iterable[str | Path]) -> str:
    """A name for a spec set that stays the same wherever it is checked out.

    Recorded per owner, so that another spec set applied under the same owner is refused
    (it would prune everything this one declares). A path inside a git work tree is
    named by the repository's `origin` URL and the path inside it, so a CI job that
    clones into a new directory each run is the same source; any other path by its
    absolute location.
    """
    return ", ".join(sorted({_identity(Path(p)) for p in paths}))


def _identity(path: Path) -> str:
    path = Path(os.path.abspath(path))
    for top in (path, *path.parents):
        if (top / ".git").exists():
            origin = _origin_url(top)
            inside = path.relative_to(top).as_posix()
            return f"git:{origin}:{inside}" if origin else f"dir:{path}"
    return f"dir:{path}"


def _origin_url(top: Path) -> str | None:
    """The `remote.origin.url` of the work tree at `top` (credentials removed), or None."""
    from dulwich.config import ConfigFile

    git = top / ".git"
    if git.is_file():  # a worktree or submodule: `gitdir: PATH`
        text = git.read_text(errors="replace").strip()
        git = (top / text.removeprefix("gitdir:").strip()).resolve()
        common = git / "commondir"
        if common.exists():
            git = (git / common.read_text().strip()).resolve()
    try:
        url = ConfigFile.from_path(str(git / "config")).get((b"remote", b"origin"), b"url")
    except (OSError, KeyError, ValueError):
        return None
    return re.sub(r"//[^/@]*@", "//", url.decode("utf-8", "replace"))


def _walk(root: Path, issues: list[SpecIssue]) -> list[Path]:
    """The visible spec entries below `root`, sorted; a directory that cannot be listed is
    an issue. Hidden parts are skipped: a Kubernetes ConfigMap mount holds every file
    twice, once through `..data/` (hidden, timestamped) and once as the visible link."""
    def refuse(exc: OSError) -> None:
        issues.append(SpecIssue(str(exc.filename or root), 0, "", "", f"cannot list: {exc.strerror or exc}"))

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=refuse):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, name) for name in dirnames + filenames
                  if not name.startswith(".") and Path(name).suffix in (".yaml", ".yml")]
    return sorted(found)


@dataclass(frozen=True)
class _At:
    """Where a value sits in a document: its line and its field path."""

    line: int
    path: tuple = ()

    def child(self, key: object, line: int) -> _At:
        return _At(line, (*self.path, key))


def _substitute(value: object, env: Mapping[str, str], problems: list[tuple[_At, str]], at: _At) -> object:
    """`value` with `${VAR}` / `${VAR:-default}` replaced in every string; each variable
    that is unset and has no default adds (where the string holding it is, message)."""
    if isinstance(value, str):
        def repl(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            why = f"environment variable {name} is not set and has no default (write ${{{name}:-default}})"
            problems.append((at, why))
            return ""
        return _VAR.sub(repl, value)
    if isinstance(value, LineDict):
        out = LineDict({k: _substitute(v, env, problems, at.child(k, value.lines.get(k, value.line)))
                        for k, v in value.items()})
        out.lines, out.line = value.lines, value.line
        return out
    if isinstance(value, LineList):
        items = LineList(_substitute(v, env, problems, at.child(i, line))
                         for i, (v, line) in enumerate(zip(value, value.lines)))
        items.lines, items.line = value.lines, value.line
        return items
    if isinstance(value, list):
        return [_substitute(v, env, problems, at.child(i, at.line)) for i, v in enumerate(value)]
    return value


def _read_text(file: Path) -> str:
    """The file's text; SpecReadError when it is not a regular file within MAX_FILE_BYTES.

    Opened without blocking (a FIFO named *.yaml would hang the loader) and checked with
    fstat on the open descriptor, so a swap between a check and the read cannot fool it."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if file.is_symlink():
            raise _Unusable(f"dangling symlink to {os.readlink(file)}") from None
        raise _Unusable("no such file (it vanished while being read)") from None
    except OSError as exc:
        raise _Unusable(f"cannot read: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise _Unusable("is a directory, not a spec file (rename it, or hide it with a leading dot)")
        raise _Unusable("is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise _Unusable(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _Unusable(f"larger than {MAX_FILE_BYTES // 1024} KiB; spec files are small (split it)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unusable(f"cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


class _Unusable(Exception):
    """A spec file that cannot be read as one (the message says why)."""


def _read(file: Path, env: Mapping[str, str], issues: list[SpecIssue]) -> list[_Raw]:
    try:
        text = _read_text(file)
    except _Unusable as exc:
        issues.append(SpecIssue(str(file), 0, "", "", str(exc)))
        return []
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        problem = getattr(exc, "problem", None) or str(exc)
        issues.append(SpecIssue(str(file), line, "", "", f"malformed YAML: {problem}"))
        return []
    if all(doc is None for doc in docs):
        issues.append(SpecIssue(str(file), 0, "", "", "no spec documents found (the file is empty, or only "
                                "comments and ---); refusing to read that as 'declare nothing', which would drop "
                                "what it declared (delete the file to drop its objects)"))
        return []
    raws = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        problems: list[tuple[_At, str]] = []
        doc = _substitute(doc, env, problems, _At(getattr(doc, "line", 0)))
        raw = _Raw(doc, file, index)
        for at, problem in problems:
            issues.append(SpecIssue(str(file), at.line, _obj_name(doc), _field(at.path), problem))
        if not problems:
            raws.append(raw)
    return raws


def _obj_name(doc: object) -> str:
    if not isinstance(doc, dict):
        return ""
    kind = doc.get("kind", "?")
    meta = doc.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, dict) else "?"
    return f"{kind}/{name}"


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in kinds.names()]
    return ".".join(parts)


def _validate(raw: _Raw, issues: list[SpecIssue]) -> BaseModel | None:
    """The document validated by its kind's model (a registered kind), or None with the issues."""
    doc = raw.data
    obj = _obj_name(doc)
    if not isinstance(doc, dict):
        issues.append(SpecIssue(str(raw.file), 0, "", "", f"document {raw.index + 1} is not a mapping"))
        return None
    known = ", ".join(kinds.names())
    if "kind" not in doc:
        issues.append(SpecIssue(str(raw.file), raw.line_of(()), obj, "kind", f"missing (one of {known})"))
        return None
    kind = kinds.find(doc["kind"]) if isinstance(doc["kind"], str) else None
    if kind is None:
        issues.append(SpecIssue(str(raw.file), raw.line_of(("kind",)), obj, "kind",
                                f"unknown kind {doc['kind']!r} (one of {known})"))
        return None
    try:
        return kind.doc.model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if p not in kinds.names())
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            issues.append(SpecIssue(str(raw.file), raw.line_of(loc), obj, _field(loc), message))
        return None


def _resolve(path: str, base: Path) -> str:
    """Absolute, normalised, symlinks NOT followed: on a ConfigMap mount the resolved target
    is a timestamped directory the kubelet deletes on the next update."""
    p = Path(path).expanduser()
    return os.path.normpath(p if p.is_absolute() else os.path.abspath(base / p))


def _resolve_paths(doc, base: Path):
    """Make paths in a spec absolute, relative to the directory of the file declaring them."""
    if isinstance(doc, specs.MirrorDoc):
        url = doc.spec.url
        if url.startswith("file:") and not url.startswith("file://"):
            url = "file://" + _resolve(url[len("file:"):], base)
        update = {"url": url, "keyrings": [_resolve(k, base) for k in doc.spec.keyrings],
                  "network": doc.spec.network.with_paths(lambda path: _resolve(path, base))}
        return doc.model_copy(update={"spec": doc.spec.model_copy(update=update)})
    if isinstance(doc, specs.PublishDoc):
        signing = doc.spec.signing
        update = {}
        if signing.keyFile:
            update["keyFile"] = _resolve(signing.keyFile, base)
        if signing.passphraseFile:
            update["passphraseFile"] = _resolve(signing.passphraseFile, base)
        signing = signing.model_copy(update=update)
        return doc.model_copy(update={"spec": doc.spec.model_copy(update={"signing": signing})})
    return doc


def file_digest(path: str) -> str | None:
    """SHA-256 of a file a spec names (a keyring, a signing key file); None when it cannot
    be read (the probe or the publish check reports why)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 16), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _named_files(doc) -> list[str]:
    """The files whose content a spec depends on: a mirror's keyrings, a publish's key file."""
    if isinstance(doc, specs.MirrorDoc):
        return list(doc.spec.keyrings)
    if isinstance(doc, specs.PublishDoc) and doc.spec.signing.keyFile:
        return [doc.spec.signing.keyFile]
    return []


def _check_filter(text: str | None) -> str | None:
    """The query parser's verdict on a filter, or None when it parses."""
    if text is None:
        return None
    from reconciler.debian import query

    try:
        query.parse(text)
    except query.QueryError as exc:
        return str(exc)
    return None


def load_specs(paths: Iterable[str | Path], env: Mapping[str, str] | None = None) -> Specs:
    """Read, validate and cross-check every spec document; raise SpecError listing all problems."""
    env = os.environ if env is None else env
    files, issues = spec_files(paths)
    result = Specs()
    for file in files:
        for raw in _read(file, env, issues):
            doc = _validate(raw, issues)
            if doc is not None:
                _add(result, _resolve_paths(doc, file.parent), raw, issues)
    _cross_check(result, issues)
    for kind in kinds.names():
        for doc in result.by_kind(kind).values():
            result.digests.update({path: file_digest(path) for path in _named_files(doc)})
    errors = [i for i in issues if not i.warning]
    result.warnings = [i for i in issues if i.warning]
    if errors:
        raise SpecError(errors + result.warnings)
    return result


def _add(result: Specs, doc, raw: _Raw, issues: list[SpecIssue]) -> None:
    kind, name = doc.kind, doc.metadata.name
    origin = Origin(str(raw.file), raw.line_of(("metadata", "name")))
    seen = result.origins.get((kind, name))
    if seen:
        issues.append(SpecIssue(origin.file, origin.line, f"{kind}/{name}", "metadata.name",
                                f"duplicate name, first declared at {seen.file}:{seen.line}"))
        return
    filter_problem = _check_filter(getattr(doc.spec, "filter", None))
    if filter_problem:
        issues.append(SpecIssue(origin.file, raw.line_of(("spec", "filter")), f"{kind}/{name}", "spec.filter",
                                f"does not parse: {filter_problem}"))
    result.by_kind(kind)[name] = doc
    result.origins[(kind, name)] = origin


def _cross_check(result: Specs, issues: list[SpecIssue]) -> None:
    def issue(kind: str, name: str, fld: str, message: str, warning: bool = False) -> None:
        origin = result.origins[(kind, name)]
        issues.append(SpecIssue(origin.file, origin.line, f"{kind}/{name}", fld, message, warning))

    for name, doc in result.snapshots.items():
        if doc.spec.mirror and doc.spec.mirror not in result.mirrors:
            issue("Snapshot", name, "spec.mirror",
                  f"mirror {doc.spec.mirror!r} is not declared (fine only for a snapshot that already exists)", True)
        for src in doc.spec.snapshots or []:
            if src not in result.snapshots:
                issue("Snapshot", name, "spec.snapshots", f"snapshot {src!r} is not declared")
    for cycle in _cycles(result.snapshots):
        issue("Snapshot", cycle[0], "spec.snapshots", "merge cycle: " + " -> ".join(cycle + [cycle[0]]))
    series = {n for n, d in result.snapshots.items() if d.spec.series}
    keys: dict[str, str] = {}
    for name, pub in result.publishes.items():
        for comp, ref in pub.spec.components.items():
            target = ref.removesuffix("@latest")
            if ref.endswith("@latest") and target not in series:
                issue("Publish", name, f"spec.components.{comp}", f"{target!r} is not a declared snapshot series")
            elif not ref.endswith("@latest") and ref not in result.snapshots:
                issue("Publish", name, f"spec.components.{comp}", f"snapshot {ref!r} is not declared")
        other = keys.setdefault(pub.spec.key, name)
        if other != name:
            issue("Publish", name, "spec", f"prefix/distribution {pub.spec.key} is also published by {other!r}")


def _cycles(snapshots: Mapping[str, specs.SnapshotDoc]) -> list[list[str]]:
    """Each merge cycle once, as the list of names along it."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        stack.append(name)
        for src in snapshots[name].spec.snapshots or []:
            if src not in snapshots:
                continue
            if state.get(src) == 1:
                found.append(stack[stack.index(src):])
            elif src not in state:
                visit(src, stack)
        stack.pop()
        state[name] = 2

    for name in sorted(snapshots):
        if name not in state:
            visit(name, [])
    return found
