"""aptly's package query language: parse once, match many times.

Filters run over whole archives (60,000+ stanzas per architecture), so `parse` does
every piece of work that does not depend on the package: regexes and globs are
compiled, version values become sort keys, field names become accessors, and the
tree becomes nested closures. `Query.matches` then only calls them.

Grammar (https://www.aptly.info/doc/feature/query/), loosest binding first:

    query       := conjunction ("|" conjunction)*
    conjunction := negation ("," negation)*
    negation    := "!" negation | "(" query ")" | term
    term        := word ["(" [op] value ")"] ["{" arch "}"]
    op          := "<<" | "<=" | "<" | ">=" | ">" | ">>" | "=" | "%" | "~"

A term's word is a field when it starts with "$" or with a capital letter and has no
"_" (`Priority (required)`, `$Source (nginx)`), a reference `name_version_arch` when
it has two "_" and no condition, and otherwise a package name (`nginx (>= 1.2)`),
which a package also answers to through its Provides. `<` means `<=` and `>` means
`>=`, as in old Debian relations. Words and values may be quoted with ' or ", and a
backslash inside quotes escapes the next character.

Where aptly's behaviour would surprise an operator, this module departs from it on
purpose, and the rest of the code may rely on these choices:
  - `Version` orders like `$Version` and `$SourceVersion`: Debian ordering, never
    string ordering (aptly compares `Version (>= 1.9)` as text, so 1.18 < 1.9).
  - A field a package lacks matches no condition at all; only `!` selects such
    packages (aptly compares a missing field as "", so `Section (<< m)` matched it).
  - A condition value may contain spaces and balanced parentheses without quotes:
    `Description (% *web server*)`, `Name (~ ^(lib|python3-))`.
  - `{arch}` may follow any term, not only a package name.
  - A versioned Provides (`foo (= 1.0)`) satisfies `foo (>= 1.0)`, as in Debian policy.
  - `%` globs follow fnmatch (also `[^...]` negation as in Go); `*` crosses "/".
"""

from __future__ import annotations

import fnmatch
import functools
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn

from reconciler.debian.package import Package
from reconciler.errors import ReconcilerError

Predicate = Callable[[Package], bool]

_STOP = frozenset("()|,!{}")
_OPERATORS = ("<<", "<=", ">>", ">=", "<", ">", "=", "%", "~")
_OLD_OPERATORS = {"<": "<=", ">": ">="}
_ORDER = {"<<": operator.lt, "<=": operator.le, "=": operator.eq, ">=": operator.ge, ">>": operator.gt}
_VERSION_FIELDS = frozenset({"version", "$version", "$sourceversion"})


class QueryError(ReconcilerError, ValueError):
    """A query that does not parse; `column` is 1-based. A ValueError too, so pydantic
    validators that parse a spec's filter report it as an ordinary validation error."""

    http_status = 422

    def __init__(self, message: str, column: int):
        self.message = message
        self.column = column
        super().__init__(f"column {column}: {message}")


def _char_weight(char: str) -> int:
    """dpkg's order of non-digit characters: "~" before the end, letters before the rest."""
    if char == "~":
        return -1
    if "a" <= char <= "z" or "A" <= char <= "Z":
        return ord(char)
    return ord(char) + 256


_END = ((0,), 0)  # an exhausted part: empty non-digit run, number 0
_RUNS = re.compile(r"(\D*)(\d*)")


def _part_key(part: str) -> tuple:
    """(non-digit run, number) pairs as dpkg alternates them, the first run possibly empty.

    Only the first pair can equal _END, so the terminator meets a real pair only where
    that pair decides: it stands for the endless _END pairs past the end, which makes
    "1.0~" sort below "1.0" although plain tuple order would put the shorter one first.
    """
    runs = _RUNS.findall(part)
    pairs = [
        (tuple(map(_char_weight, text)) + (0,), int(digits or 0))
        for i, (text, digits) in enumerate(runs)
        if i == 0 or text or digits
    ]
    return (*pairs, _END)


@functools.lru_cache(maxsize=1 << 17)
def version_key(version: str) -> tuple:
    """Sort key for a Debian version: `version_key(a) < version_key(b)` iff dpkg says a < b.

    Comparing python-debian Version objects costs ~9 µs a pair, too slow for a
    filter over an archive; the key is computed once per distinct version string
    (cached) and then compares as plain tuples. The tests check it against
    python-debian's `version_compare`.
    """
    epoch, colon, rest = version.partition(":")
    if not colon:
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return (int(epoch) if epoch.isdigit() else 0, _part_key(upstream), _part_key(revision))


def _pattern_matcher(op: str, value: str) -> Callable[[str], bool]:
    """`%` and `~` look at the text itself, whatever the field: a glob or a regex search."""
    if op == "%":
        return _glob(value).fullmatch  # type: ignore[return-value]
    return re.compile(value).search  # type: ignore[return-value]


def version_matcher(op: str, value: str) -> Callable[[str], bool]:
    """A test of a version string against `op value`, prepared once for many versions."""
    if op in ("%", "~"):
        return _pattern_matcher(op, value)
    compare, wanted = _ORDER[_OLD_OPERATORS.get(op, op)], version_key(value)
    return lambda version: compare(version_key(version), wanted)


@functools.lru_cache(maxsize=1 << 14)
def _parse_provides(text: str) -> tuple[tuple[str, str | None], ...]:
    provided = []
    from debian.deb822 import PkgRelation  # imported on use: ~30 ms that most runs never need

    for group in PkgRelation.parse_relations(text):
        for rel in group:
            if rel["name"]:
                version = rel["version"][1] if rel["version"] and rel["version"][0] == "=" else None
                provided.append((rel["name"], version))
    return tuple(provided)


def provided(pkg: Package) -> tuple[tuple[str, str | None], ...]:
    """(name, version or None) for each entry of the package's Provides; cached by text."""
    text = pkg.fields.get("Provides")
    return _parse_provides(text) if text else ()


def _glob(pattern: str) -> re.Pattern[str]:
    # Go's filepath.Match (aptly) negates a class with "^", fnmatch with "!": accept both.
    return re.compile(fnmatch.translate(pattern.replace("[^", "[!")), re.DOTALL)


def _quote(text: str) -> str:
    """The text as the parser reads it back: bare where that is unambiguous, else quoted."""
    special = any(c in _STOP or c in "\"'\\" or c.isspace() for c in text)
    if text and not special and text[0] not in "<>=%~":
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def arch_matches(pkg_arch: str, wanted: str) -> bool:
    """aptly's rule: an `all` package is part of every architecture, but not of `source`."""
    return pkg_arch == wanted or (pkg_arch == "all" and wanted != "source")


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]

    def __str__(self) -> str:
        return " | ".join(map(str, self.items))

    def compile(self) -> Predicate:
        return functools.reduce(_either, (item.compile() for item in self.items))


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]

    def __str__(self) -> str:
        return ", ".join(f"({item})" if isinstance(item, Or) else str(item) for item in self.items)

    def compile(self) -> Predicate:
        return functools.reduce(_both, (item.compile() for item in self.items))


@dataclass(frozen=True)
class Not:
    item: Node

    def __str__(self) -> str:
        inner = str(self.item)
        return f"!({inner})" if isinstance(self.item, (Or, And)) else f"!{inner}"

    def compile(self) -> Predicate:
        pred = self.item.compile()
        return lambda pkg: not pred(pkg)


def _either(left: Predicate, right: Predicate) -> Predicate:
    return lambda pkg: left(pkg) or right(pkg)


def _both(left: Predicate, right: Predicate) -> Predicate:
    return lambda pkg: left(pkg) and right(pkg)


@dataclass(frozen=True)
class Term:
    """One simple condition. `kind` is "field", "package" or "ref"; `op` is None when
    the term has no parenthesised condition, and never "<" or ">" (normalised)."""

    kind: str
    name: str
    op: str | None = None
    value: str = ""
    arch: str | None = None

    def __str__(self) -> str:
        text = _quote(self.name)
        if self.op is not None:
            text += f" ({self.op} {_quote(self.value)})"
        if self.arch is not None:
            text += f" {{{_quote(self.arch)}}}"
        return text

    def compile(self) -> Predicate:
        pred = _PREDICATES[self.kind](self)
        arch = self.arch
        if arch is None:
            return pred
        return lambda pkg: arch_matches(pkg.arch, arch) and pred(pkg)


Node = Or | And | Not | Term


def _source_name(pkg: Package) -> str:
    return "" if pkg.type == "source" else pkg.source_name


def _source_version(pkg: Package) -> str:
    return "" if pkg.type == "source" else pkg.source_version


_PSEUDO: dict[str, Callable[[Package], str]] = {
    "name": lambda pkg: pkg.name,
    "version": lambda pkg: pkg.version,
    "architecture": lambda pkg: pkg.fields.get("Architecture") or pkg.arch,
    "$version": lambda pkg: pkg.version,
    "$source": _source_name,  # as in aptly: empty for source packages themselves
    "$sourceversion": _source_version,
    "$architecture": lambda pkg: pkg.arch,
    "$packagetype": lambda pkg: pkg.type,
}


def _field_getter(name: str) -> Callable[[Package], str]:
    """Accessor for a field, matched case-insensitively (stanzas spell `MD5sum`, `Multi-Arch`)."""
    lower = name.lower()
    if lower in _PSEUDO:
        return _PSEUDO[lower]
    size = len(name)

    def get(pkg: Package) -> str:
        found = pkg.fields.get(name)
        if found is not None:
            return found
        for key, text in pkg.fields.items():
            if len(key) == size and key.lower() == lower:
                return text
        return ""

    return get


def _string_matcher(op: str, value: str) -> Callable[[str], bool]:
    if op in ("%", "~"):
        return _pattern_matcher(op, value)
    compare = _ORDER[op]
    return lambda text: compare(text, value)


def _field_predicate(term: Term) -> Predicate:
    get = _field_getter(term.name)
    if term.op is None:
        return lambda pkg: get(pkg) != ""
    lower, value = term.name.lower(), term.value
    if lower == "$architecture" and term.op == "=":
        return lambda pkg: arch_matches(pkg.arch, value)
    matcher = (version_matcher if lower in _VERSION_FIELDS else _string_matcher)(term.op, value)
    return lambda pkg: (text := get(pkg)) != "" and bool(matcher(text))


def _package_predicate(term: Term) -> Predicate:
    name = term.name
    if term.op is None:
        return lambda pkg: pkg.name == name or any(p == name for p, _ in provided(pkg))
    matcher = version_matcher(term.op, term.value)

    def match(pkg: Package) -> bool:
        if pkg.name == name and matcher(pkg.version):
            return True
        return any(p == name and v is not None and matcher(v) for p, v in provided(pkg))

    return match


def _split_ref(word: str) -> tuple[str, str, str] | None:
    """`name_version_arch`: the name ends at the first "_", the arch starts after the last."""
    name, sep, rest = word.partition("_")
    version, sep2, arch = rest.rpartition("_")
    return (name, version, arch) if sep and sep2 else None


def _ref_predicate(term: Term) -> Predicate:
    name, version, arch = _split_ref(term.name)  # type: ignore[misc]
    return lambda pkg: pkg.name == name and pkg.version == version and pkg.arch == arch


_PREDICATES = {"field": _field_predicate, "package": _package_predicate, "ref": _ref_predicate}


class _Parser:
    """Recursive descent straight over the text: whether ")" ends a value or a group
    depends on where the parser is, which a context-free tokenizer cannot know."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self, message: str, pos: int | None = None) -> NoReturn:
        raise QueryError(message, (self.pos if pos is None else pos) + 1)

    def peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self, char: str) -> bool:
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    def expect(self, char: str) -> None:
        if not self.take(char):
            self.fail(f'expected "{char}"')

    def query(self) -> Node:
        node = self.disjunction()
        if self.peek():
            self.fail('expected ",", "|" or end of query')
        return node

    def disjunction(self) -> Node:
        items = [self.conjunction()]
        while self.take("|"):
            items.append(self.conjunction())
        return _flat(Or, items)

    def conjunction(self) -> Node:
        items = [self.negation()]
        while self.take(","):
            items.append(self.negation())
        return _flat(And, items)

    def negation(self) -> Node:
        if self.take("!"):
            return Not(self.negation())
        if self.take("("):
            node = self.disjunction()
            if not self.take(")"):
                self.fail('expected ",", "|" or ")"')
            return node
        return self.term()

    def term(self) -> Node:
        self.peek()
        start = self.pos
        word = self.word('package name, field or "("')
        op, value, value_at = self.condition()
        arch = self.arch() if self.take("{") else None
        kind = _classify(word, op)
        if kind == "field" and word.startswith("$") and word.lower() not in _PSEUDO:
            self.fail(f"unknown field {word} (known: $Architecture, $PackageType, $Source, "
                      "$SourceVersion, $Version)", start)
        if op == "~":
            try:
                re.compile(value)
            except re.error as err:
                self.fail(f"invalid regular expression: {err.msg}", value_at)
        return Term(kind, word, op, value, arch)

    def word(self, what: str) -> str:
        if self.peek() in ("'", '"'):
            return self.quoted()
        start = self.pos
        while self.pos < len(self.text) and not self._ends_word(self.text[self.pos]):
            self.pos += 1
        if self.pos == start or self.text[start] in "<>=%~":
            self.fail(f"expected {what}", start)
        return self.text[start : self.pos]

    @staticmethod
    def _ends_word(char: str) -> bool:
        return char.isspace() or char in _STOP

    def quoted(self) -> str:
        start, quote = self.pos, self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == quote:
                return "".join(out)
            if char == "\\" and self.pos < len(self.text):
                char = self.text[self.pos]
                self.pos += 1
            out.append(char)
        self.fail(f"unterminated quoted string (expected closing {quote})", start)

    def condition(self) -> tuple[str | None, str, int]:
        if not self.take("("):
            return None, "", self.pos
        op = self.operator()
        self.peek()
        value_at = self.pos
        return op, self.value(), value_at

    def operator(self) -> str:
        self.peek()
        for op in _OPERATORS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return _OLD_OPERATORS.get(op, op)
        return "="

    def value(self) -> str:
        """A quoted string, or the text up to the ")" that closes the condition."""
        start = self.pos
        if self.peek() in ("'", '"'):
            value = self.quoted()
            self.expect(")")
            return value
        depth = 0
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == ")" and depth == 0:
                break
            depth += {"(": 1, ")": -1}.get(char, 0)
            self.pos += 1
        else:
            self.fail('expected ")"')
        value = self.text[start : self.pos].strip()
        if not value:
            self.fail("expected value", start)
        self.pos += 1
        return value

    def arch(self) -> str:
        arch = self.word("architecture")
        self.expect("}")
        return arch


def _flat(kind: type[Or] | type[And], items: list[Node]) -> Node:
    if len(items) == 1:
        return items[0]
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, kind) else (item,))
    return kind(tuple(flat))


def _classify(word: str, op: str | None) -> str:
    if word.startswith("$") or (word[:1].isupper() and "_" not in word):
        return "field"
    if op is None and _split_ref(word):
        return "ref"
    return "package"


class Query:
    """A parsed query. Equal queries print the same canonical text (`str`)."""

    __slots__ = ("root", "_match")

    def __init__(self, root: Node):
        self.root = root
        self._match = root.compile()

    def matches(self, pkg: Package) -> bool:
        return self._match(pkg)

    def filter(self, packages: Iterable[Package]) -> list[Package]:
        match = self._match
        return [pkg for pkg in packages if match(pkg)]

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"Query({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Query) and self.root == other.root

    def __hash__(self) -> int:
        return hash(self.root)


def parse(text: str) -> Query:
    """Parse aptly query syntax; raises QueryError naming the column and what was expected."""
    return Query(_Parser(text).query())
