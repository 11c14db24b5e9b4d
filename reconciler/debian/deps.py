"""Dependency closure for `filterWithDeps`: the filtered packages plus what they need.

Like aptly's (https://www.aptly.info/doc/feature/dependencies/) this is not a solver.
It follows Pre-Depends and Depends and records what it cannot satisfy instead of
failing: real archives carry a few broken dependencies, and a mirror must still update.

Two rules decide OR-groups (`a | b`), chosen per spec (`filterWithDeps: true` or
`minimal`):

- **aptly** (the default, so a set migrated from aptly stays the same): rounds, as
  aptly's `PackageList.Filter` makes them. Each round checks every dependency of the
  packages added in the last round against the result as it stood at the round's
  start; a group none of whose alternatives is satisfied contributes every
  alternative, and each of those still unsatisfied when its turn comes adds the
  first package that matches it. So `absent | b | c` with neither b nor c chosen
  takes both b and c, as aptly does.
- **minimal**: one alternative per group. OR-groups wait until no plain dependency is
  left, so an alternative that something else pulls in anyway wins over a first
  alternative nobody else needs; otherwise the first alternative the universe
  satisfies is taken.

Shared choices:
  - A dependency is resolved within one architecture: a package's own, or, for an
    `all` package, each requested architecture in turn. Packages of that
    architecture and `all` packages both satisfy it. `:any`/`:native` qualifiers
    change nothing; `foo:i386` resolves in i386. `[arch]` lists are honoured.
  - debs satisfy debs and udebs satisfy udebs; source packages have no dependencies.
  - A dependency already satisfied by the result adds nothing.
  - The package taken for a dependency is a real package of that name at the highest
    satisfying version; failing that, a provider (alphabetically first name, then
    highest version: aptly takes the provider its hash map yields first, which is not
    stable). A versioned dependency is satisfied by a versioned Provides only, as in
    Debian policy.
"""

from __future__ import annotations

import functools
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.debian import query
from reconciler.debian.package import Package

DEPENDENCY_FIELDS = ("Pre-Depends", "Depends")


@dataclass(frozen=True)
class Relation:
    """One alternative of a dependency: `name[:archqual] (op version) [archs]`."""

    name: str
    archqual: str | None = None
    op: str | None = None
    version: str | None = None
    archs: tuple[tuple[bool, str], ...] = ()  # (enabled, arch) from `[amd64 !i386]`

    def __str__(self) -> str:
        text = self.name + (f":{self.archqual}" if self.archqual else "")
        return text + (f" ({self.op} {self.version})" if self.op else "")

    def applies(self, arch: str) -> bool:
        """Whether an `[arch ...]` restriction keeps this alternative for `arch`."""
        wanted = [name for enabled, name in self.archs if enabled]
        if wanted:
            return arch in wanted
        return all(name != arch for _, name in self.archs)

    def target_arch(self, arch: str) -> str:
        """The architecture the alternative resolves in when its dependent's is `arch`."""
        if self.archqual in (None, "any", "native"):
            return arch
        return self.archqual


Group = tuple[Relation, ...]


@functools.lru_cache(maxsize=1 << 16)
def parse_relations(text: str) -> tuple[Group, ...]:
    """Parse a Depends-style field; cached because the same lines recur across an archive."""
    if not text.strip():
        return ()
    groups = []
    from debian.deb822 import PkgRelation  # imported on use: ~30 ms that most runs never need

    for alternatives in PkgRelation.parse_relations(text):
        group = tuple(_relation(rel) for rel in alternatives if rel["name"])
        if group:
            groups.append(group)
    return tuple(groups)


def _relation(rel: Mapping[str, Any]) -> Relation:
    op, version = rel["version"] or (None, None)
    archs = tuple((a.enabled, a.arch) for a in rel["arch"] or ())
    return Relation(rel["name"], rel["archqual"], op, version, archs)


class _Index:
    """Binary packages by (type, name) and by (type, provided name), for lookups that
    stay cheap over a 65,000-package universe. Grows as the closure adds packages."""

    def __init__(self, packages: Iterable[Package] = ()):
        self.real: dict[tuple[str, str], list[Package]] = defaultdict(list)
        self.virtual: dict[tuple[str, str], list[tuple[Package, str | None]]] = defaultdict(list)
        self.archs: set[str] = set()
        for pkg in packages:
            self.add(pkg)

    def add(self, pkg: Package) -> None:
        if pkg.type == "source":
            return
        self.real[(pkg.type, pkg.name)].append(pkg)
        for name, version in query.provided(pkg):
            self.virtual[(pkg.type, name)].append((pkg, version))
        if pkg.arch != "all":
            self.archs.add(pkg.arch)

    def best(self, rel: Relation, kind: str, arch: str) -> Package | None:
        """The package this index would pick for `rel` in `arch`, or None."""
        test = query.version_matcher(rel.op, rel.version) if rel.op and rel.version is not None else None
        key = (kind, rel.name)
        real = [
            pkg
            for pkg in self.real.get(key, ())
            if pkg.arch in (arch, "all") and (test is None or test(pkg.version))
        ]
        if real:
            return max(real, key=lambda pkg: (query.version_key(pkg.version), pkg.arch != "all"))
        providers = [
            pkg
            for pkg, version in self.virtual.get(key, ())
            if pkg.arch in (arch, "all") and (test is None or (version is not None and test(version)))
        ]
        if not providers:
            return None
        first = min(pkg.name for pkg in providers)
        return max((p for p in providers if p.name == first), key=lambda p: query.version_key(p.version))


@dataclass(frozen=True)
class _Need:
    """One dependency group still to satisfy, for a package type in one architecture."""

    kind: str
    arch: str
    group: Group

    def __str__(self) -> str:
        return " | ".join(map(str, self.group)) + f" [{self.arch}]"


class _Closure:
    def __init__(self, universe: Iterable[Package], architectures: list[str]):
        self.universe = _Index(universe)
        # With no architecture named or seen, `all` packages still pull in `all` packages.
        self.architectures = list(architectures) or sorted(self.universe.archs) or ["all"]
        self.chosen = _Index()
        self.result: dict[Package, None] = {}  # an ordered set
        self.missing: dict[str, None] = {}
        self.plain: deque[_Need] = deque()
        self.groups: deque[_Need] = deque()

    def take(self, pkg: Package) -> None:
        if pkg in self.result:
            return
        self.result[pkg] = None
        self.chosen.add(pkg)
        if pkg.type == "source":
            return
        for arch in self.architectures if pkg.arch == "all" else [pkg.arch]:
            for field in DEPENDENCY_FIELDS:
                for group in parse_relations(pkg.fields.get(field) or ""):
                    (self.plain if len(group) == 1 else self.groups).append(_Need(pkg.type, arch, group))

    def run(self) -> None:
        while self.plain or self.groups:
            self.satisfy((self.plain or self.groups).popleft())

    def satisfy(self, need: _Need) -> None:
        alternatives = [rel for rel in need.group if rel.applies(need.arch)]
        for rel in alternatives:
            if self.chosen.best(rel, need.kind, rel.target_arch(need.arch)):
                return
        for rel in alternatives:
            pkg = self.universe.best(rel, need.kind, rel.target_arch(need.arch))
            if pkg is not None:
                self.take(pkg)
                return
        if alternatives:
            self.missing[str(need)] = None


class _AptlyClosure(_Closure):
    """aptly's rounds (see the module docstring); only `take` and `run` differ."""

    def __init__(self, universe: Iterable[Package], architectures: list[str]):
        super().__init__(universe, architectures)
        self.new: list[Package] = []

    def take(self, pkg: Package) -> None:
        if pkg not in self.result:
            self.result[pkg] = None
            self.chosen.add(pkg)
            self.new.append(pkg)

    def run(self) -> None:
        while self.new:
            wanted = self._unsatisfied(self.new)
            self.new = []
            for kind, arch, rel in wanted:
                if self.chosen.best(rel, kind, arch):
                    continue  # satisfied by what this round added already
                pkg = self.universe.best(rel, kind, arch)
                if pkg is not None:
                    self.take(pkg)
        self._report()

    def _unsatisfied(self, packages: list[Package]) -> dict[tuple[str, str, Relation], None]:
        """Every alternative of each group the result does not satisfy, in aptly's order."""
        wanted: dict[tuple[str, str, Relation], None] = {}
        ordered = sorted(packages, key=lambda p: (p.name, _Descending(query.version_key(p.version)), p.arch))
        for arch in self.architectures:
            for pkg in ordered:
                if pkg.type == "source" or pkg.arch not in (arch, "all"):
                    continue
                for group in _groups(pkg):
                    pending: list[tuple[str, str, Relation]] = []
                    for rel in (r for r in group if r.applies(arch)):
                        target = rel.target_arch(arch)
                        if self.chosen.best(rel, pkg.type, target):
                            pending = []
                            break
                        pending.append((pkg.type, target, rel))
                    wanted.update(dict.fromkeys(pending))
        return wanted

    def _report(self) -> None:
        for pkg in self.result:
            if pkg.type == "source":
                continue
            for arch in self.architectures if pkg.arch == "all" else [pkg.arch]:
                for group in _groups(pkg):
                    need = _Need(pkg.type, arch, group)
                    alternatives = [rel for rel in group if rel.applies(arch)]
                    if alternatives and not any(self.chosen.best(r, pkg.type, r.target_arch(arch))
                                                for r in alternatives):
                        self.missing[str(need)] = None


def _groups(pkg: Package) -> Iterator[Group]:
    for field in DEPENDENCY_FIELDS:
        yield from parse_relations(pkg.fields.get(field) or "")


@functools.total_ordering
class _Descending:
    """Wraps a sort key to sort it highest first (aptly's index lists versions newest first)."""

    def __init__(self, key):
        self.key = key

    def __eq__(self, other) -> bool:
        return self.key == other.key

    def __lt__(self, other) -> bool:
        return self.key > other.key


RULES = {"aptly": _AptlyClosure, "minimal": _Closure}


def closure_report(
    selected: Iterable[Package], universe: Iterable[Package], *, architectures: list[str], rule: str = "aptly"
) -> tuple[list[Package], list[str]]:
    """`selected` (first, in their order) plus what they transitively need from
    `universe`, and the dependencies nothing satisfied, as `rel | rel [arch]` lines.

    An empty `architectures` means every architecture the universe has packages for;
    `rule` is "aptly" or "minimal" (see the module docstring).
    """
    work = RULES[rule](universe, architectures)
    for pkg in selected:
        work.take(pkg)
    work.run()
    return list(work.result), list(work.missing)


def closure(
    selected: Iterable[Package], universe: Iterable[Package], *, architectures: list[str], rule: str = "aptly"
) -> list[Package]:
    """`closure_report` without the report of unsatisfied dependencies."""
    return closure_report(selected, universe, architectures=architectures, rule=rule)[0]
