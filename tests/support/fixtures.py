"""Generic pytest fixtures over the real archive, keys and server in `tests.support`.

Kept out of `conftest.py` so that conftest stays a thin file (it star-imports these)
and so that other suites (benchmarks) can reuse them. Keys are session-scoped because
generating one costs about a second; archives and servers are per test because tests
damage them (faults, corrupt files, next-day rebuilds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import examples, gpgkeys
from tests.support.aptclient import AptClient
from tests.support.archive import ArchiveBuilder, BuiltArchive
from tests.support.server import ArchiveServer

__all__ = ["gpg_key", "other_gpg_key", "passphrase_gpg_key", "example_archive",
           "http_server", "http_archive", "apt_client", "HttpArchive"]


@pytest.fixture(scope="session")
def gpg_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[gpgkeys.GpgKey]:
    """The upstream archive's signing key (no passphrase)."""
    key = gpgkeys.generate(tmp_path_factory.mktemp("gpg-archive"), "Test Archive")
    yield key
    key.stop_agent()


@pytest.fixture(scope="session")
def other_gpg_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[gpgkeys.GpgKey]:
    """A stranger's key: signatures by it must be refused."""
    key = gpgkeys.generate(tmp_path_factory.mktemp("gpg-other"), "Other Key")
    yield key
    key.stop_agent()


@pytest.fixture(scope="session")
def passphrase_gpg_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[gpgkeys.GpgKey]:
    """A key protected by a passphrase (`.passphrase_file` holds it)."""
    key = gpgkeys.generate(tmp_path_factory.mktemp("gpg-pass"), "Passphrase Key",
                           passphrase="correct horse battery staple")
    yield key
    key.stop_agent()


@pytest.fixture
def example_archive(tmp_path_factory: pytest.TempPathFactory,
                    gpg_key: gpgkeys.GpgKey) -> Callable[..., BuiltArchive]:
    """Factory `build(builder=None, *, dest=None, **options)` -> BuiltArchive.

    Without a builder it builds the example upstream (see `examples.example_builder`,
    distribution `stable`); the default signer is `gpg_key` (pass sign_with=None for
    an unsigned archive). Each call without `dest` gets a fresh directory.
    """
    def build(builder: ArchiveBuilder | None = None, *, dest: Path | None = None,
              **options) -> BuiltArchive:
        dest = dest or tmp_path_factory.mktemp("archive")
        options.setdefault("sign_with", gpg_key)
        if builder is None:
            key = options.pop("sign_with")
            return examples.build_example(dest, key, **options)
        return builder.build(dest, **options)
    return build


@pytest.fixture
def http_server() -> Iterator[Callable[[Path], ArchiveServer]]:
    """Factory `serve(root)` -> a started ArchiveServer, stopped at teardown."""
    servers: list[ArchiveServer] = []
    def serve(root: Path) -> ArchiveServer:
        servers.append(ArchiveServer(root).start())
        return servers[-1]
    yield serve
    for server in servers:
        server.stop()


@dataclass
class HttpArchive:
    """A built archive being served: `url` is the archive root clients point at."""

    archive: BuiltArchive
    server: ArchiveServer
    key: gpgkeys.GpgKey

    @property
    def url(self) -> str:
        return self.server.url

    def sources_line(self, keyring: Path | None = None) -> str:
        return self.archive.sources_line(self.url, keyring or self.key.public_keyring)


@pytest.fixture
def http_archive(example_archive: Callable[..., BuiltArchive], http_server,
                 gpg_key: gpgkeys.GpgKey) -> HttpArchive:
    """The example upstream, signed by `gpg_key`, served on 127.0.0.1."""
    built = example_archive()
    return HttpArchive(built, http_server(built.root), gpg_key)


@pytest.fixture
def apt_client(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., AptClient]:
    """Factory `client(sources_line_or_lines, arch="amd64")` -> AptClient in a fresh dir."""
    def make(sources: str | list[str], *, arch: str = "amd64") -> AptClient:
        return AptClient(tmp_path_factory.mktemp("apt"), sources, arch=arch)
    return make
