"""Real components for tests and benchmarks: archives, keys, an HTTP server, apt.

- `debs`: .deb/.udeb and source package files, byte-identical run to run.
- `archive`: `ArchiveBuilder` -> a signed Debian archive (`layout`, `release` write it).
- `examples`: the bundled example upstream and `synthetic(n)` archives.
- `gpgkeys`: throwaway gpg keys in their own GNUPGHOME.
- `server`: `ArchiveServer`, a 127.0.0.1 HTTP server with a request log and faults.
- `aptclient`: the real `apt-get`, confined to a work directory.
- `fixtures`: pytest fixtures over all of the above (star-imported by conftest).
"""
