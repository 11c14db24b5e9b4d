"""The package query language and the dependency closure, driven by tables over a small
fixed universe of packages whose every interesting property is spelled out here."""

from __future__ import annotations

import random

import pytest
from debian.debian_support import version_compare

from reconciler.debian import deps, query
from reconciler.debian.package import Package
from reconciler.errors import ReconcilerError


def pkg(name: str, version: str, arch: str = "amd64", kind: str = "deb", **fields: str) -> Package:
    """A package whose stanza is built from keyword fields (`Pre_Depends` -> `Pre-Depends`)."""
    stanza = {"Package": name, "Version": version, "Architecture": arch}
    stanza.update({key.replace("_", "-"): value for key, value in fields.items()})
    if kind == "source":
        stanza["Architecture"] = fields.get("Architecture", "any")
        arch = "source"
    return Package(kind, name, version, arch, stanza)


UNIVERSE = [
    pkg("nginx", "1.22.1-9", Priority="optional", Section="httpd",
        Description="small, powerful, scalable web/proxy server", X_Note='a "quoted" word'),
    pkg("nginx", "1.22.1-9", "i386", Priority="optional", Section="httpd"),
    pkg("nginx", "1.18.0-6", Priority="optional", Section="httpd"),
    pkg("nginx-core", "1.22.1-9", Source="nginx", Provides="httpd, httpd-cgi", Section="httpd"),
    pkg("nginx-doc", "1.22.1-9", "all", Source="nginx", Section="doc"),
    pkg("nginx", "1.22.1-9", kind="source", Architecture="any all"),
    pkg("libc6", "2.36-9", Priority="required", Source="glibc", Section="libs", Multi_Arch="same"),
    pkg("libc6-dev", "2.36-9", Source="glibc", Section="libdevel"),
    pkg("base-files", "12.4", Priority="required", Essential="yes", Section="admin"),
    pkg("postfix", "3.7.6-0+deb12u1", Provides="mail-transport-agent", Section="mail"),
    pkg("exim4-daemon-light", "4.96-15+b1", Source="exim4 (4.96-15)",
        Provides="mail-transport-agent", Section="mail"),
    pkg("python3-foo", "1.0~rc1-1", "all", Provides="python3-foo-api (= 2.0)", Section="python"),
    pkg("di-utils", "1.0", kind="udeb", Section="debian-installer"),
    pkg("zlib1g", "1:1.2.13.dfsg-1", Source="zlib", Priority="optional", Section="libs"),
]
ALL = frozenset(p.ref for p in UNIVERSE)

NGINX_ALL = {"nginx_1.22.1-9_amd64", "nginx_1.22.1-9_i386", "nginx_1.18.0-6_amd64",
             "nginx_1.22.1-9_source"}

MATCHES = [
    # bare names: the package, any version and architecture (source too), or a provider
    ("nginx", NGINX_ALL),
    ("httpd", {"nginx-core_1.22.1-9_amd64"}),
    ("mail-transport-agent", {"postfix_3.7.6-0+deb12u1_amd64", "exim4-daemon-light_4.96-15+b1_amd64"}),
    ("nonexistent", set()),
    # version relations, Debian ordering; "<" is "<=" and ">" is ">="
    ("nginx (>= 1.20)", NGINX_ALL - {"nginx_1.18.0-6_amd64"}),
    ("nginx (>> 1.22.1-9)", set()),
    ("nginx (<< 1.22)", {"nginx_1.18.0-6_amd64"}),
    ("nginx (< 1.22.1-9)", NGINX_ALL),
    ("nginx (<= 1.22.1-8)", {"nginx_1.18.0-6_amd64"}),
    ("nginx (> 1.22.1-9)", NGINX_ALL - {"nginx_1.18.0-6_amd64"}),
    ("nginx (= 1.18.0-6)", {"nginx_1.18.0-6_amd64"}),
    ("nginx (1.18.0-6)", {"nginx_1.18.0-6_amd64"}),
    ("nginx (% 1.18*)", {"nginx_1.18.0-6_amd64"}),
    ("nginx (~ ^1\\.2)", NGINX_ALL - {"nginx_1.18.0-6_amd64"}),
    ("python3-foo (<< 1.0)", {"python3-foo_1.0~rc1-1_all"}),
    ("zlib1g (>> 1.3)", {"zlib1g_1:1.2.13.dfsg-1_amd64"}),
    # versioned Provides satisfy versioned queries; unversioned ones do not
    ("python3-foo-api (>= 2.0)", {"python3-foo_1.0~rc1-1_all"}),
    ("python3-foo-api (>> 2.0)", set()),
    ("mail-transport-agent (>= 1)", set()),
    # architecture restrictions: "all" belongs to every architecture except source
    ("nginx {i386}", {"nginx_1.22.1-9_i386"}),
    ("nginx {amd64}", {"nginx_1.22.1-9_amd64", "nginx_1.18.0-6_amd64"}),
    ("nginx {source}", {"nginx_1.22.1-9_source"}),
    ("nginx-doc {i386}", {"nginx-doc_1.22.1-9_all"}),
    ("nginx-doc {source}", set()),
    ("nginx (>= 1.20) {amd64}", {"nginx_1.22.1-9_amd64"}),
    ("Name (nginx) {i386}", {"nginx_1.22.1-9_i386"}),
    # direct references
    ("nginx_1.22.1-9_amd64", {"nginx_1.22.1-9_amd64"}),
    ("zlib1g_1:1.2.13.dfsg-1_amd64", {"zlib1g_1:1.2.13.dfsg-1_amd64"}),
    ("nginx_1.22.1-9_source", {"nginx_1.22.1-9_source"}),
    ("nginx_1.22.1-9_arm64", set()),
    # control fields: no operator is equality, a bare field is "present"
    ("Priority (required)", {"libc6_2.36-9_amd64", "base-files_12.4_amd64"}),
    ("Priority (= required)", {"libc6_2.36-9_amd64", "base-files_12.4_amd64"}),
    ("PRIORITY (required)", {"libc6_2.36-9_amd64", "base-files_12.4_amd64"}),
    ("Essential", {"base-files_12.4_amd64"}),
    ("Multi-arch (same)", {"libc6_2.36-9_amd64"}),
    ("Section (% lib*)", {"libc6_2.36-9_amd64", "libc6-dev_2.36-9_amd64", "zlib1g_1:1.2.13.dfsg-1_amd64"}),
    ("Section (<< b)", {"base-files_12.4_amd64"}),
    ("Name (>= python)", {"python3-foo_1.0~rc1-1_all", "zlib1g_1:1.2.13.dfsg-1_amd64"}),
    ("Name (~ .*-dev)", {"libc6-dev_2.36-9_amd64"}),
    ("Name (~ ^(nginx|zlib1g)$)", NGINX_ALL | {"zlib1g_1:1.2.13.dfsg-1_amd64"}),
    ("Name (% nginx-*)", {"nginx-core_1.22.1-9_amd64", "nginx-doc_1.22.1-9_all"}),
    ("Name (% nginx-[^c]*)", {"nginx-doc_1.22.1-9_all"}),
    ("Name (% nginx-[!c]*)", {"nginx-doc_1.22.1-9_all"}),
    ("Architecture (% *all*)", {"nginx-doc_1.22.1-9_all", "python3-foo_1.0~rc1-1_all",
                                "nginx_1.22.1-9_source"}),
    # a missing field matches no condition, only its negation
    ("Priority (<< zzz)", {"nginx_1.22.1-9_amd64", "nginx_1.22.1-9_i386", "nginx_1.18.0-6_amd64",
                           "libc6_2.36-9_amd64", "base-files_12.4_amd64", "zlib1g_1:1.2.13.dfsg-1_amd64"}),
    ("!Priority", ALL - {"nginx_1.22.1-9_amd64", "nginx_1.22.1-9_i386", "nginx_1.18.0-6_amd64",
                         "libc6_2.36-9_amd64", "base-files_12.4_amd64", "zlib1g_1:1.2.13.dfsg-1_amd64"}),
    # Version orders like $Version (Debian), unlike aptly's string comparison
    ("Version (>= 1:0)", {"zlib1g_1:1.2.13.dfsg-1_amd64"}),
    ("$Version (>= 1.9)", ALL - {"python3-foo_1.0~rc1-1_all", "di-utils_1.0_amd64"}),
    ("$Version (= 1.0~rc1-1)", {"python3-foo_1.0~rc1-1_all"}),
    ("$Version (% 4.96-*)", {"exim4-daemon-light_4.96-15+b1_amd64"}),
    # pseudo-fields; $Source and $SourceVersion are empty for source packages (as in aptly)
    ("$Source (nginx)", {"nginx_1.22.1-9_amd64", "nginx_1.22.1-9_i386", "nginx_1.18.0-6_amd64",
                         "nginx-core_1.22.1-9_amd64", "nginx-doc_1.22.1-9_all"}),
    ("$Source (exim4)", {"exim4-daemon-light_4.96-15+b1_amd64"}),
    ("$Source (% glib*)", {"libc6_2.36-9_amd64", "libc6-dev_2.36-9_amd64"}),
    ("$SourceVersion (4.96-15)", {"exim4-daemon-light_4.96-15+b1_amd64"}),
    ("$SourceVersion (>= 1:1)", {"zlib1g_1:1.2.13.dfsg-1_amd64"}),
    ("$PackageType (udeb)", {"di-utils_1.0_amd64"}),
    ("$PackageType (source)", {"nginx_1.22.1-9_source"}),
    ("$Architecture (i386)", {"nginx_1.22.1-9_i386", "nginx-doc_1.22.1-9_all", "python3-foo_1.0~rc1-1_all"}),
    ("$Architecture (% i*)", {"nginx_1.22.1-9_i386"}),
    ("$Architecture (source)", {"nginx_1.22.1-9_source"}),
    ("$architecture (all)", {"nginx-doc_1.22.1-9_all", "python3-foo_1.0~rc1-1_all"}),
    # quoting, spaces and escapes
    ("Description (% *web/proxy server)", {"nginx_1.22.1-9_amd64"}),
    ('Description (% "*, scalable *")', {"nginx_1.22.1-9_amd64"}),
    ("Description (~ 'powerful, scalable')", {"nginx_1.22.1-9_amd64"}),
    ('X-Note ("a \\"quoted\\" word")', {"nginx_1.22.1-9_amd64"}),
    ("X-Note ('a \"quoted\" word')", {"nginx_1.22.1-9_amd64"}),
    ('"nginx-doc"', {"nginx-doc_1.22.1-9_all"}),
    # combinations: "|" binds loosest, then ",", then "!"
    ("nginx-doc | base-files, Priority (optional)", {"nginx-doc_1.22.1-9_all"}),
    ("(nginx-doc | base-files), Priority (required)", {"base-files_12.4_amd64"}),
    ("!(nginx | nginx-core), $Source (nginx)", {"nginx-doc_1.22.1-9_all"}),
    ("!!nginx-doc", {"nginx-doc_1.22.1-9_all"}),
    ("!Name (% *-dev), $Source (glibc)", {"libc6_2.36-9_amd64"}),
    ("!Name (~ .*-dev), mail-transport-agent, $Version (>= 3.5)", {"exim4-daemon-light_4.96-15+b1_amd64",
                                                                   "postfix_3.7.6-0+deb12u1_amd64"}),
    ("Name (% http-*) | $Source (zlib)", {"zlib1g_1:1.2.13.dfsg-1_amd64"}),
    ("  nginx-doc\t|\nbase-files  ", {"nginx-doc_1.22.1-9_all", "base-files_12.4_amd64"}),
]

BAD = [
    ("", 1, 'expected package name, field or "("'),
    ("   ", 4, 'expected package name, field or "("'),
    ("nginx (>= 1.2", 14, 'expected ")"'),
    ("(nginx", 7, 'expected ",", "|" or ")"'),
    ("(a b)", 4, 'expected ",", "|" or ")"'),
    ("nginx |", 8, 'expected package name, field or "("'),
    ("a, , b", 4, 'expected package name, field or "("'),
    ("!", 2, 'expected package name, field or "("'),
    (">= 1", 1, 'expected package name, field or "("'),
    ("nginx apache", 7, 'expected ",", "|" or end of query'),
    ("nginx )", 7, 'expected ",", "|" or end of query'),
    ("nginx (= 1) (= 2)", 13, 'expected ",", "|" or end of query'),
    ("nginx {amd64} (= 1)", 15, 'expected ",", "|" or end of query'),
    ("nginx {amd64", 13, 'expected "}"'),
    ("nginx {}", 8, "expected architecture"),
    ("Name (>= )", 10, "expected value"),
    ("Name (~ [)", 9, "invalid regular expression"),
    ('Name ("x" y)', 11, 'expected ")"'),
    ('"unterminated', 1, "unterminated quoted string"),
    ("Name ('open)", 7, "unterminated quoted string"),
    ("$Foo (x)", 1, "unknown field $Foo"),
    ("nginx, $Sauce", 8, "unknown field $Sauce"),
]


@pytest.mark.parametrize(("text", "expected"), MATCHES, ids=[t for t, _ in MATCHES])
def test_query_matches(text: str, expected: set[str]) -> None:
    parsed = query.parse(text)
    assert {p.ref for p in UNIVERSE if parsed.matches(p)} == expected
    assert {p.ref for p in parsed.filter(UNIVERSE)} == expected


@pytest.mark.parametrize(("text", "expected"), MATCHES, ids=[t for t, _ in MATCHES])
def test_canonical_form_parses_back_to_the_same_query(text: str, expected: set[str]) -> None:
    parsed = query.parse(text)
    again = query.parse(str(parsed))
    assert again == parsed and str(again) == str(parsed)
    assert {p.ref for p in again.filter(UNIVERSE)} == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Priority (required)", "Priority (= required)"),
        ("nginx (> 1) {amd64}", "nginx (>= 1) {amd64}"),
        ("nginx(<1)", "nginx (<= 1)"),
        ("a|b,c", "a | b, c"),
        ("(a|b),c", "(a | b), c"),
        ("a | (b | c)", "a | b | c"),
        ("!(a,b)", "!(a, b)"),
        ("!a", "!a"),
        ("Description (% *web server*)", 'Description (% "*web server*")'),
        ("Name (~ ^(lib|py)$)", 'Name (~ "^(lib|py)$")'),
        ('X ("a \\"b\\" c")', 'X (= "a \\"b\\" c")'),
        ("X (= '>1')", 'X (= ">1")'),
        ("'<x' | \"a b\" {'x y'}", '"<x" | "a b" {"x y"}'),
    ],
)
def test_canonical_form(text: str, canonical: str) -> None:
    assert str(query.parse(text)) == canonical
    assert str(query.parse(canonical)) == canonical


@pytest.mark.parametrize(("text", "column", "message"), BAD, ids=[t or "<empty>" for t, _, _ in BAD])
def test_bad_query_names_column(text: str, column: int, message: str) -> None:
    with pytest.raises(query.QueryError) as caught:
        query.parse(text)
    assert caught.value.column == column
    assert message in caught.value.message
    assert str(caught.value).startswith(f"column {column}: ")


def test_query_error_is_a_domain_error_and_a_value_error() -> None:
    with pytest.raises(ReconcilerError):
        query.parse("nginx (")
    with pytest.raises(ValueError):
        query.parse("nginx (")


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        ("1.0~rc1", "1.0"), ("1.0", "1.0.0"), ("1.0", "1.0a"), ("1.0a", "1.0+"), ("1.9", "1.18"),
        ("2.0", "1:0"), ("0:1.0", "1:0.1"), ("1.0-1", "1.0-1+b1"), ("1.0~~", "1.0~"),
        ("1.0~", "1.0"), ("1.0-9", "1.0-10"), ("2.36-9", "2.36-9.1"), ("1.0", "1.0-0.1"),
        ("0~b", "0"), ("1:0~1", "1:0"), ("0", "0a"),
    ],
)
def test_version_key_orders_like_dpkg(smaller: str, larger: str) -> None:
    assert version_compare(smaller, larger) < 0  # the oracle agrees with the table
    assert query.version_key(smaller) < query.version_key(larger)


@pytest.mark.parametrize(
    ("left", "right"), [("1.0", "1.0-0"), ("0:1.0", "1.0"), ("1.00", "1.0"), ("0", "00")]
)
def test_version_key_equal_versions(left: str, right: str) -> None:
    assert version_compare(left, right) == 0
    assert query.version_key(left) == query.version_key(right)


def test_version_key_agrees_with_python_debian_on_random_versions() -> None:
    rng = random.Random(7)
    pieces = ["0", "1", "2", "9", "10", "00", ".", "~", "~~", "+", "a", "z", "A"]

    def chunk() -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))

    def version() -> str:
        epoch = rng.choice(["", "", "0:", "1:", "2:"])
        revision = rng.choice(["", "-" + rng.choice("0123456789abc~") + chunk()])
        return epoch + rng.choice("0123456789") + chunk() + revision

    versions = [version() for _ in range(5000)]
    for a, b in zip(versions, versions[1:]):
        expected = version_compare(a, b)
        key_a, key_b = query.version_key(a), query.version_key(b)
        assert ((key_a > key_b) - (key_a < key_b)) == ((expected > 0) - (expected < 0)), (a, b)


def test_filter_over_65000_packages() -> None:
    sections = ["admin", "libs", "net", "python"]
    packages = [
        pkg(f"pkg{i}", f"{i % 7}.{i % 100}-{i % 3}", "all" if i % 10 == 0 else "amd64",
            Priority="required" if i % 50 == 0 else "optional", Section=sections[i % 4],
            **({"Provides": "virtual-thing"} if i % 1000 == 0 else {}))
        for i in range(65000)
    ]
    at_least_3_5 = {v: version_compare(v, "3.5") >= 0 for v in {p.version for p in packages}}
    cases = {
        "Priority (required)": sum(1 for i in range(65000) if i % 50 == 0),
        "virtual-thing": 65,
        "pkg7 | pkg8 (>= 1.8-2)": 2,
        "$Version (>= 3.5)": sum(1 for p in packages if at_least_3_5[p.version]),
        "Name (~ 99$), !Section (libs)": sum(1 for i in range(65000) if str(i).endswith("99") and i % 4 != 1),
        "Essential (yes)": 0,
        "$Architecture (i386), Section (% n*)": sum(1 for i in range(0, 65000, 10) if i % 4 == 2),
    }
    for text, count in cases.items():
        assert len(query.parse(text).filter(packages)) == count, text


# --- dependency closure ----------------------------------------------------------------


def refs(packages: list[Package]) -> list[str]:
    return [p.ref for p in packages]


def close(selected: list[Package], universe: list[Package], archs: tuple[str, ...] = ("amd64",), rule="aptly"):
    return deps.closure_report(selected, universe, architectures=list(archs), rule=rule)


def test_chain_is_followed_through_depends_and_pre_depends() -> None:
    a = pkg("a", "1", Depends="b")
    b = pkg("b", "1", Pre_Depends="c (>= 1)")
    c = pkg("c", "1")
    unrelated = pkg("d", "1")
    packages, missing = close([a], [a, b, c, unrelated])
    assert refs(packages) == ["a_1_amd64", "b_1_amd64", "c_1_amd64"]
    assert missing == []
    assert refs(deps.closure([a], [a, b, c, unrelated], architectures=["amd64"])) == refs(packages)


@pytest.mark.parametrize(
    ("relation", "chosen"),
    [
        ("libfoo", "libfoo_3.0-1_amd64"),
        ("libfoo (>= 2)", "libfoo_3.0-1_amd64"),
        ("libfoo (<< 3)", "libfoo_2.0-1_amd64"),
        ("libfoo (<= 2.0-1)", "libfoo_2.0-1_amd64"),
        ("libfoo (= 1.0-1)", "libfoo_1.0-1_amd64"),
        ("libfoo (>> 2.5~)", "libfoo_3.0-1_amd64"),
        ("libfoo (< 2.0-1)", "libfoo_2.0-1_amd64"),
    ],
)
def test_versioned_dependency_takes_highest_satisfying_version(relation: str, chosen: str) -> None:
    app = pkg("app", "1", Depends=relation)
    universe = [pkg("libfoo", v) for v in ("1.0-1", "3.0-1", "2.0-1")]
    packages, missing = close([app], universe)
    assert refs(packages) == ["app_1_amd64", chosen]
    assert missing == []


def test_minimal_takes_the_first_satisfiable_alternative() -> None:
    app = pkg("app", "1", Depends="absent | b | c")
    universe = [pkg("b", "1"), pkg("c", "1")]
    assert refs(close([app], universe, rule="minimal")[0]) == ["app_1_amd64", "b_1_amd64"]


def test_aptly_takes_every_alternative_of_a_group_nothing_satisfies() -> None:
    """As aptly 1.5's PackageList.Filter does: each missing variant is searched and added."""
    app = pkg("app", "1", Depends="absent | b | c")
    universe = [pkg("b", "1"), pkg("c", "1")]
    assert refs(close([app], universe)[0]) == ["app_1_amd64", "b_1_amd64", "c_1_amd64"]


def test_aptly_adds_nothing_for_a_group_an_earlier_round_satisfied() -> None:
    app = pkg("app", "1", Depends="d, b | c")
    d = pkg("d", "1", Depends="c")
    # Round 1: d (plain), b and c (the group is unsatisfied at the round's start); nothing after.
    assert refs(close([app], [pkg("b", "1"), pkg("c", "1"), d])[0]) == \
        ["app_1_amd64", "d_1_amd64", "b_1_amd64", "c_1_amd64"]
    selected_c = pkg("c", "1")
    assert refs(close([app, selected_c], [pkg("b", "1"), selected_c, d])[0]) == \
        ["app_1_amd64", "c_1_amd64", "d_1_amd64"]


def test_alternative_already_selected_wins() -> None:
    app = pkg("app", "1", Depends="b | c")
    c = pkg("c", "1")
    assert refs(close([app, c], [pkg("b", "1"), c])[0]) == ["app_1_amd64", "c_1_amd64"]


def test_minimal_prefers_the_alternative_a_plain_dependency_pulls_in() -> None:
    app = pkg("app", "1", Depends="b | c, d")
    d = pkg("d", "1", Depends="c")
    packages, _ = close([app], [pkg("b", "1"), pkg("c", "1"), d], rule="minimal")
    assert refs(packages) == ["app_1_amd64", "d_1_amd64", "c_1_amd64"]


def test_alternative_with_unsatisfiable_version_falls_through() -> None:
    app = pkg("app", "1", Depends="b (>= 2) | c")
    assert refs(close([app], [pkg("b", "1"), pkg("c", "1")])[0]) == ["app_1_amd64", "c_1_amd64"]


def test_virtual_package_takes_one_provider() -> None:
    app = pkg("app", "1", Depends="mail-transport-agent")
    universe = [pkg("postfix", "3", Provides="mail-transport-agent"),
                pkg("exim4", "4", Provides="mail-transport-agent")]
    assert refs(close([app], universe)[0]) == ["app_1_amd64", "exim4_4_amd64"]


def test_virtual_package_already_provided_adds_nothing() -> None:
    app = pkg("app", "1", Depends="mail-transport-agent")
    postfix = pkg("postfix", "3", Provides="mail-transport-agent")
    universe = [postfix, pkg("exim4", "4", Provides="mail-transport-agent")]
    assert refs(close([app, postfix], universe)[0]) == ["app_1_amd64", "postfix_3_amd64"]


def test_real_package_is_preferred_over_providers() -> None:
    app = pkg("app", "1", Depends="awk")
    universe = [pkg("awk", "1"), pkg("gawk", "5", Provides="awk")]
    assert refs(close([app], universe)[0]) == ["app_1_amd64", "awk_1_amd64"]


def test_versioned_provides_satisfies_versioned_dependency() -> None:
    app = pkg("app", "1", Depends="foo-api (>= 2)")
    universe = [pkg("foo-old", "1", Provides="foo-api"),
                pkg("foo-impl", "1", Provides="foo-api (= 1.5)"),
                pkg("foo-impl", "2", Provides="foo-api (= 2.1)")]
    packages, missing = close([app], universe)
    assert refs(packages) == ["app_1_amd64", "foo-impl_2_amd64"]
    assert missing == []


def test_versioned_dependency_not_satisfied_by_unversioned_provides() -> None:
    app = pkg("app", "1", Depends="foo-api (>= 2)")
    packages, missing = close([app], [pkg("foo-old", "1", Provides="foo-api")])
    assert refs(packages) == ["app_1_amd64"]
    assert missing == ["foo-api (>= 2) [amd64]"]


def test_arch_all_package_resolves_in_every_requested_architecture() -> None:
    doc = pkg("tool-common", "1", "all", Depends="libx")
    universe = [pkg("libx", "1", "amd64"), pkg("libx", "1", "arm64"), pkg("libx", "1", "i386")]
    packages, _ = close([doc], universe, ("amd64", "arm64"))
    assert refs(packages) == ["tool-common_1_all", "libx_1_amd64", "libx_1_arm64"]


def test_arch_specific_package_depends_on_arch_all_and_back() -> None:
    tool = pkg("tool", "1", "amd64", Depends="tool-data")
    data = pkg("tool-data", "1", "all", Depends="libx")
    universe = [data, pkg("libx", "1", "amd64"), pkg("libx", "1", "arm64")]
    packages, _ = close([tool], universe, ("amd64", "arm64"))
    assert refs(packages) == ["tool_1_amd64", "tool-data_1_all", "libx_1_amd64", "libx_1_arm64"]


def test_empty_architectures_means_those_of_the_universe() -> None:
    doc = pkg("doc", "1", "all", Depends="libx")
    universe = [pkg("libx", "1", "amd64"), pkg("libx", "1", "arm64")]
    packages = deps.closure([doc], universe, architectures=[])
    assert refs(packages) == ["doc_1_all", "libx_1_amd64", "libx_1_arm64"]


def test_only_arch_all_packages_still_resolve_among_themselves() -> None:
    doc = pkg("doc", "1", "all", Depends="doc-base")
    assert refs(deps.closure([doc], [pkg("doc-base", "1", "all")], architectures=[])) == [
        "doc_1_all", "doc-base_1_all"
    ]


def test_arch_qualifiers() -> None:
    app = pkg("app", "1", Depends="python3:any (>= 3.11), libc6:i386")
    universe = [pkg("python3", "3.11", "amd64"), pkg("python3", "3.11", "i386"),
                pkg("libc6", "2.36", "amd64"), pkg("libc6", "2.36", "i386")]
    packages, missing = close([app], universe)
    assert refs(packages) == ["app_1_amd64", "python3_3.11_amd64", "libc6_2.36_i386"]
    assert missing == []


def test_arch_restriction_in_relation_is_honoured() -> None:
    app = pkg("app", "1", Depends="only-i386 [i386], not-amd64 [!amd64], on-amd64 [amd64]")
    universe = [pkg("only-i386", "1"), pkg("not-amd64", "1"), pkg("on-amd64", "1")]
    packages, missing = close([app], universe)
    assert refs(packages) == ["app_1_amd64", "on-amd64_1_amd64"]
    assert missing == []


def test_cycles_terminate() -> None:
    a = pkg("a", "1", Depends="b")
    b = pkg("b", "1", Depends="c")
    c = pkg("c", "1", Depends="a, b")
    packages, missing = close([a], [a, b, c])
    assert refs(packages) == ["a_1_amd64", "b_1_amd64", "c_1_amd64"]
    assert missing == []


def test_missing_dependencies_are_reported_and_skipped() -> None:
    app = pkg("app", "1", Depends="absent (>= 1), b, gone | vanished")
    b = pkg("b", "1", Depends="libb (>= 9)")
    packages, missing = close([app], [b, pkg("libb", "1")])
    assert refs(packages) == ["app_1_amd64", "b_1_amd64"]
    assert sorted(missing) == ["absent (>= 1) [amd64]", "gone | vanished [amd64]", "libb (>= 9) [amd64]"]


def test_udebs_resolve_to_udebs_only() -> None:
    installer = pkg("di-utils", "1", kind="udeb", Depends="libc6-udeb, busybox")
    universe = [pkg("libc6-udeb", "2", kind="udeb"), pkg("busybox", "1"), pkg("busybox", "1", kind="udeb")]
    packages, _ = close([installer], universe)
    assert [(p.type, p.name) for p in packages] == [
        ("udeb", "di-utils"), ("udeb", "libc6-udeb"), ("udeb", "busybox")
    ]


def test_source_packages_are_kept_but_not_followed() -> None:
    source = pkg("nginx", "1", kind="source", Build_Depends="debhelper", Depends="bogus")
    packages, missing = close([source], [pkg("debhelper", "13"), pkg("bogus", "1")])
    assert refs(packages) == ["nginx_1_source"]
    assert missing == []


def test_selected_are_deduplicated_and_keep_their_order() -> None:
    a, b = pkg("a", "1"), pkg("b", "1")
    assert refs(close([b, a, b], [a, b])[0]) == ["b_1_amd64", "a_1_amd64"]


def test_closure_over_65000_packages() -> None:
    universe = [pkg(f"lib{i}", "1.0", Depends=f"lib{i + 1} (>= 1.0)" if i % 1000 < 5 else "")
                for i in range(65000)]
    universe.append(pkg("meta", "1", "all", Depends="lib0 | lib1, virtual-x"))
    universe.append(pkg("provider", "2", Provides="virtual-x"))
    selected = query.parse("meta | Name (% lib6400?)").filter(universe)
    packages, missing = deps.closure_report(selected, universe, architectures=["amd64"])
    assert len(selected) == 11
    assert refs(packages)[:11] == refs(selected)
    assert set(refs(packages[11:])) == {f"lib{i}_1.0_amd64" for i in range(6)} | {"provider_2_amd64"}
    assert missing == []
