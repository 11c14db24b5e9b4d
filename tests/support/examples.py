"""Ready-made archive declarations: the bundled example upstream and synthetic ones.

The example is small enough to read in full and rich enough to exercise what an
operator meets on a real archive: two components, arch-specific and `all` packages,
version constraints, a virtual package behind an alternative, two versions of one
package, source packages, a udeb, and `Priority: required` packages for filters.
`synthetic(n)` scales the same shapes up to benchmark sizes.

Keys of the example are kept between runs (the secret key is written next to the
public one and reloaded), so rebuilding the example does not invalidate keyrings that
specs in `examples/` point at.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

from tests.support import gpgkeys
from tests.support.archive import ArchiveBuilder, BuiltArchive

UPSTREAM_KEY, SIGNING_KEY = "upstream-archive", "signing"


def example_builder() -> ArchiveBuilder:
    """The example upstream's packages (distribution `stable`, main + contrib)."""
    b = ArchiveBuilder(architectures=["amd64"], components=["main", "contrib"])
    b.add("basesys", "1.0-1", priority="required", essential=True, section="admin")
    b.add("toolbox", "1.0-1", priority="required", section="utils", pre_depends="basesys")
    b.add("libgreet1", "1.0-1", source="greet", section="libs", depends="basesys")
    b.add("libgreet1", "1.1-1", source="greet", section="libs", depends="basesys")
    b.add("greet-data", "1.1-1", arch="all", source="greet", section="misc")
    b.add("libgreet1-udeb", "1.1-1", source="greet", udeb=True)
    b.add("hello", "2.10-1", section="utils", depends="libgreet1 (>= 1.0), greet-data")
    b.add("hello", "2.10-2", section="utils", depends="libgreet1 (>= 1.1), greet-data",
          recommends="hello-doc")
    b.add("hello-doc", "2.10-2", arch="all", source="hello", section="doc")
    b.add("tinymta", "0.9-1", section="mail", provides="mail-transport-agent",
          conflicts="mail-transport-agent", replaces="mail-transport-agent")
    b.add("mailnotify", "1.0-1", arch="all", section="mail",
          depends="default-mta | mail-transport-agent")
    b.add("greet-extras", "0.5-1", component="contrib", section="contrib/utils",
          depends="libgreet1 (>= 1.1), hello (>= 2.10)")
    b.add("fetch-fonts", "1.0-1", arch="all", component="contrib", section="contrib/fonts",
          depends="hello")
    for name, version, comp in (("basesys", "1.0-1", "main"), ("toolbox", "1.0-1", "main"),
                                ("greet", "1.1-1", "main"), ("hello", "2.10-2", "main"),
                                ("tinymta", "0.9-1", "main"), ("mailnotify", "1.0-1", "main"),
                                ("greet-extras", "0.5-1", "contrib"),
                                ("fetch-fonts", "1.0-1", "contrib")):
        b.add_source(name, version, component=comp)
    b.add_source("greet", "1.0-1", binaries=["libgreet1"])
    b.add_source("hello", "2.10-1", binaries=["hello"])
    return b


def build_example(dest: Path, key: gpgkeys.GpgKey | None, **kw) -> BuiltArchive:
    """Build the example declaration into `dest` (no key handling; see make_example)."""
    opts = dict(distribution="stable", codename="lighthouse", origin="Example",
                label="Example Upstream", sign_with=key)
    return example_builder().build(dest, **{**opts, **kw})


def _key(keys_dir: Path, work: Path, name: str) -> gpgkeys.GpgKey:
    secret = keys_dir / f"{name}.secret.asc" if name == UPSTREAM_KEY else keys_dir / f"{name}.asc"
    if secret.exists():
        return gpgkeys.load(work / name, secret, name)
    return gpgkeys.generate(work / name, name)


def make_example(dest: Path | str, *, keys_dir: Path | str | None = None) -> BuiltArchive:
    """Build the example upstream at `dest`, keys in `keys_dir` (default `dest/../keys`).

    Writes `upstream-archive.asc` (public, armored), `upstream-archive.gpg` (binary
    keyring), `upstream-archive.secret.asc` (to rebuild with the same key),
    `signing.asc` (secret: a Publish `keyFile`) and `signing.pub.gpg` (binary keyring
    clients of the published tree verify with).
    """
    dest = Path(dest)
    keys_dir = Path(keys_dir) if keys_dir else dest.parent / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="example-keys-"))
    upstream = signing = None
    try:
        upstream = _key(keys_dir, work, UPSTREAM_KEY)
        signing = _key(keys_dir, work, SIGNING_KEY)
        for src, name in ((upstream.public_armored, "upstream-archive.asc"),
                          (upstream.public_keyring, "upstream-archive.gpg"),
                          (upstream.secret_armored, "upstream-archive.secret.asc"),
                          (signing.secret_armored, "signing.asc"),
                          (signing.public_keyring, "signing.pub.gpg")):
            if src.resolve() != (keys_dir / name).resolve():
                shutil.copyfile(src, keys_dir / name)
        return build_example(dest, upstream)
    finally:
        for key in (upstream, signing):
            if key is not None:
                key.stop_agent()
        shutil.rmtree(work, ignore_errors=True)


# -- synthetic archives for benchmarks ------------------------------------------------

_SYLLABLES = ("ka zu mi ro te la po ne vi sa do gu re bi fo ly an el or ix "
              "qua ter mon dex pyl zor").split()
_SECTIONS = ("utils", "libs", "net", "admin", "devel", "python", "text", "web", "misc", "x11")
_SUFFIXES = ("", "", "", "-utils", "-tools", "-bin", "-common", "-daemon", "-dev")


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))


def _description(rng: random.Random, vocabulary: list[str], name: str) -> str:
    lines = [" ".join(rng.choices(vocabulary, k=rng.randint(8, 11)))
             for _ in range(rng.randint(2, 4))]
    return f"{name} - synthetic package for benchmarks\n " + "\n ".join(lines)


def _depends(rng: random.Random, earlier: list[tuple[str, str]]) -> str:
    """0-4 dependencies on earlier packages (a DAG), some versioned, some alternatives."""
    if not earlier:
        return ""
    deps = []
    for _ in range(min(len(earlier), rng.choice((0, 1, 1, 2, 2, 3, 4)))):
        name, version = rng.choice(earlier)
        dep = f"{name} (>= {version})" if rng.random() < 0.4 else name
        if rng.random() < 0.1:
            dep += f" | {rng.choice(earlier)[0]}"
        deps.append(dep)
    return ", ".join(dict.fromkeys(deps))


def _fresh_name(rng: random.Random, taken: set[str]) -> tuple[str, str, bool]:
    while True:
        base, is_lib = _word(rng), rng.random() < 0.2
        name = f"lib{base}{rng.randint(0, 9)}" if is_lib else base + rng.choice(_SUFFIXES)
        if name not in taken:
            taken.add(name)
            return name, base, is_lib


def synthetic(n: int, *, seed: int = 0, pad: int = 0, sources: bool = False,
              architectures: tuple[str, ...] = ("amd64",)) -> ArchiveBuilder:
    """A deterministic archive of `n` binaries with Debian-like stanzas (about 700
    bytes each), dependencies among them, ~20% libraries, ~5% arch `all`, about two
    binaries per source (so pool directories are shared as on Debian)."""
    rng = random.Random(seed)
    vocabulary = [_word(rng) for _ in range(2000)]
    builder = ArchiveBuilder(architectures=list(architectures))
    earlier: list[tuple[str, str]] = []
    taken: set[str] = set()
    while len(builder.binaries) < n:
        name, base, is_lib = _fresh_name(rng, taken)
        sibling = builder.binaries[-1] if earlier and rng.random() < 0.5 else None
        version = sibling.version if sibling else \
            f"{rng.randint(0, 9)}.{rng.randint(0, 30)}-{rng.randint(1, 5)}"
        builder.add(name, version, source=sibling.source_name if sibling else "",
                    arch="all" if rng.random() < 0.05 else rng.choice(architectures),
                    section="libs" if is_lib else rng.choice(_SECTIONS),
                    priority="required" if rng.random() < 0.01 else "optional",
                    depends=_depends(rng, earlier[-2000:]),
                    description=_description(rng, vocabulary, name),
                    extra={"Homepage": f"https://{base}.example.invalid/"}, pad=pad)
        earlier.append((name, version))
        if sources and not sibling:
            builder.add_source(name, version)
    return builder


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.archive")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("example", help="build the bundled example upstream into DEST")
    ex.add_argument("dest", type=Path)
    ex.add_argument("--keys", type=Path, default=None, help="default: DEST/../keys")
    syn = sub.add_parser("synthetic", help="build N synthetic packages into DEST, timed")
    syn.add_argument("n", type=int)
    syn.add_argument("dest", type=Path)
    syn.add_argument("--pad", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "example":
        built = make_example(args.dest, keys_dir=args.keys)
        sources = sum(arch == "source" for _, _, arch in built.files)
        print(f"example archive at {built.root}: {len(built.files) - sources} binary and "
              f"{sources} source packages; keys in {args.keys or args.dest.parent / 'keys'}")
        return 0
    start = time.perf_counter()
    builder = synthetic(args.n, pad=args.pad)
    declared = time.perf_counter()
    builder.build(args.dest)
    done = time.perf_counter()
    print(f"{args.n} packages: declare {declared - start:.2f}s, build {done - declared:.2f}s")
    return 0
