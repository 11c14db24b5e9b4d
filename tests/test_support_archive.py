"""The test archive, keys and server are real: apt, dpkg and gpg accept what they make.

Everything else in the suite trusts `tests.support`; these tests are why it may.
"""

from __future__ import annotations

import hashlib
import http.client
import subprocess
import sys
import time
from pathlib import Path

import pytest
from debian import deb822

from tests.support import archive, debs, examples
from tests.support.archive import ArchiveBuilder

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd, cwd=None, check=True) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          check=check)


def paragraphs(path: Path) -> list[deb822.Deb822]:
    with path.open() as fh:
        return list(deb822.Deb822.iter_paragraphs(fh))


def by_ref(stanzas) -> dict[tuple[str, str, str], deb822.Deb822]:
    return {(p["Package"], p["Version"], p.get("Architecture", "")): p for p in stanzas}


# -- package files --------------------------------------------------------------------


def test_deb_is_read_by_dpkg_deb_and_reproducible(tmp_path):
    control = {"Package": "hello", "Version": "1:2.0-1", "Architecture": "amd64",
               "Maintainer": debs.MAINTAINER, "Installed-Size": "1",
               "Depends": "libgreet1 (>= 1.1)", "Description": "hi\n long text"}
    files = debs.default_files("hello", "2.0-1", pad=3000)
    deb = tmp_path / "hello.deb"
    deb.write_bytes(debs.build_deb(control, files))
    assert debs.build_deb(control, files) == deb.read_bytes()
    assert run("dpkg-deb", "--field", deb, "Package").stdout == "hello\n"
    assert run("dpkg-deb", "--field", deb, "Depends").stdout == "libgreet1 (>= 1.1)\n"
    listing = run("dpkg-deb", "-c", deb).stdout
    assert "./usr/share/doc/hello/README" in listing
    assert "root/root" in listing and "2025-01-01" in listing
    assert deb.stat().st_size > 3000  # the padding is incompressible


@pytest.mark.parametrize("version", ["2.0-1", "3.1"])
def test_source_package_extracts_with_dpkg_source(tmp_path, version):
    built = debs.build_source("greet", version, binaries=["libgreet1", "greet-data"])
    for blob in built.all_files:
        (tmp_path / blob.name).write_bytes(blob.data)
    result = run("dpkg-source", "-x", built.dsc.name, "out", cwd=tmp_path)
    assert result.returncode == 0
    assert (tmp_path / "out/debian/control").exists()
    assert (tmp_path / "out/README").read_text().startswith("greet ")


# -- the archive, as apt sees it ------------------------------------------------------


def test_apt_get_installs_dependency_closure(http_archive, apt_client):
    client = apt_client(http_archive.sources_line())
    client.update()
    client.download("hello", "greet-extras", "mailnotify")
    assert client.downloaded() == [
        "basesys_1.0-1_amd64.deb", "greet-data_1.1-1_all.deb", "greet-extras_0.5-1_amd64.deb",
        "hello-doc_2.10-2_all.deb", "hello_2.10-2_amd64.deb", "libgreet1_1.1-1_amd64.deb",
        "mailnotify_1.0-1_all.deb", "tinymta_0.9-1_amd64.deb"]
    server = http_archive.server
    assert server.count("/dists/stable/InRelease") == 1
    assert server.count(lambda p: "/by-hash/SHA256/" in p) == 2  # main + contrib amd64
    assert server.count(".deb", status=200) == 8


def test_apt_get_refuses_a_key_it_does_not_trust(http_archive, apt_client, other_gpg_key):
    client = apt_client(http_archive.sources_line(other_gpg_key.public_keyring))
    result = client.update(check=False)
    assert result.returncode != 0
    assert "NO_PUBKEY" in result.output or "not signed" in result.output


def test_apt_get_refuses_archive_signed_by_another_key(example_archive, http_server,
                                                       apt_client, gpg_key, other_gpg_key):
    built = example_archive(sign_with=other_gpg_key)
    server = http_server(built.root)
    result = apt_client(built.sources_line(server.url, gpg_key.public_keyring)).update(
        check=False)
    assert result.returncode != 0 and "NO_PUBKEY" in result.output


def test_apt_get_refuses_unsigned_archive(example_archive, http_server, apt_client, gpg_key):
    built = example_archive(sign_with=None)
    assert not built.inrelease.exists() and not built.release_gpg.exists()
    server = http_server(built.root)
    result = apt_client(built.sources_line(server.url, gpg_key.public_keyring)).update(
        check=False)
    assert result.returncode != 0 and "not signed" in result.output


def test_apt_get_rejects_corrupted_pool_file(http_archive, apt_client):
    built = http_archive.archive
    path = built.path("hello", "2.10-2")
    size = path.stat().st_size
    archive.corrupt(path)
    assert path.stat().st_size == size
    client = apt_client(http_archive.sources_line())
    client.update()
    result = client.download("hello", check=False)
    assert result.returncode != 0 and "Hash Sum mismatch" in result.output


def test_flat_repository_works_with_apt(tmp_path, http_server, apt_client, gpg_key):
    builder = ArchiveBuilder()
    builder.add("app", "1.0-1", depends="app-data")
    builder.add("app-data", "1.0-1", arch="all")
    builder.add_source("app", "1.0-1")
    built = builder.build(tmp_path, distribution="flat/", sign_with=gpg_key)
    assert built.filename("app", arch="amd64") == "flat/app_1.0-1_amd64.deb"
    assert {p.name for p in (tmp_path / "flat").iterdir()} >= {
        "Packages", "Packages.gz", "Sources", "Release", "InRelease", "app_1.0-1.dsc"}
    server = http_server(tmp_path)
    client = apt_client(built.sources_line(server.url, gpg_key.public_keyring))
    client.update()
    client.download("app")
    assert client.downloaded() == ["app-data_1.0-1_all.deb", "app_1.0-1_amd64.deb"]


# -- cross-checks with apt-ftparchive and gpgv ----------------------------------------


def test_packages_agree_with_apt_ftparchive(example_archive):
    built = example_archive()
    theirs = run("apt-ftparchive", "packages", "pool/main", cwd=built.root).stdout
    ours = by_ref(paragraphs(built.index("main", "amd64")))
    theirs = by_ref(p for p in deb822.Deb822.iter_paragraphs(theirs.splitlines())
                    if p["Filename"].endswith(".deb"))  # it lists udebs too
    assert ours.keys() == theirs.keys()
    for ref, stanza in ours.items():
        for field in ("Filename", "Size", "MD5sum", "SHA1", "SHA256", "Depends",
                      "Installed-Size", "Maintainer", "Section", "Priority"):
            assert stanza.get(field) == theirs[ref].get(field), (ref, field)


def test_sources_agree_with_apt_ftparchive(example_archive):
    built = example_archive()
    theirs = run("apt-ftparchive", "sources", "pool/main", cwd=built.root).stdout
    ours = {p["Package"] + p["Version"]: p for p in paragraphs(
        built.index("main", kind="source"))}
    theirs = {p["Package"] + p["Version"]: p
              for p in deb822.Deb822.iter_paragraphs(theirs.splitlines())}
    assert ours.keys() == theirs.keys()
    for key, stanza in ours.items():
        for field in ("Directory", "Checksums-Sha256", "Files", "Binary", "Format"):
            assert stanza[field].split() == theirs[key][field].split(), (key, field)


def test_release_lists_every_index_with_true_checksums(example_archive, gpg_key):
    built = example_archive(plain=False)
    release = deb822.Release(built.release.read_text())
    assert release["Architectures"] == "all amd64"
    assert release["Components"] == "main contrib"
    assert release["Acquire-By-Hash"] == "yes"
    listed = {e["name"]: e for e in release["SHA256"]}
    assert "main/binary-amd64/Packages" in listed  # listed though not shipped
    assert not (built.dist_dir / "main/binary-amd64/Packages").exists()
    for name, entry in listed.items():
        path = built.dist_dir / name
        if name.endswith("/Packages") or name.endswith("/Sources"):
            continue
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (int(entry["size"]),
                                                                 entry["sha256"])
        if not name.endswith("Release"):
            assert (path.parent / "by-hash/SHA256" / entry["sha256"]).read_bytes() == data
    for signed in ([built.inrelease], [built.release_gpg, built.release]):
        run("gpgv", "--keyring", gpg_key.public_keyring, *signed)


def test_udebs_have_their_own_index(example_archive):
    built = example_archive()
    stanzas = paragraphs(built.index("main", "amd64", kind="udeb"))
    assert [p["Package"] for p in stanzas] == ["libgreet1-udeb"]
    assert stanzas[0]["Filename"].endswith(".udeb")
    assert run("dpkg-deb", "--field", built.root / stanzas[0]["Filename"],
               "Package").stdout == "libgreet1-udeb\n"
    names = [p["Package"] for p in paragraphs(built.index("main", "amd64"))]
    assert "libgreet1-udeb" not in names and "greet-data" in names  # arch all is in amd64


# -- rebuilding and damaging ----------------------------------------------------------


def test_next_day_rebuild_keeps_old_pool_files_unless_pruned(tmp_path, gpg_key):
    builder = examples.example_builder()
    day1 = builder.build(tmp_path, distribution="stable", sign_with=gpg_key)
    old = day1.path("mailnotify")
    old_hashes = set((day1.dist_dir / "main/binary-amd64/by-hash/SHA256").iterdir())
    builder.remove("mailnotify")
    builder.add("hello", "2.11-1", depends="libgreet1 (>= 1.1)")
    day2 = builder.build(tmp_path, distribution="stable", sign_with=gpg_key,
                         date=archive.DEFAULT_DATE.replace(day=2))
    names = {(p["Package"], p["Version"]) for p in paragraphs(day2.index())}
    assert ("hello", "2.11-1") in names and ("mailnotify", "1.0-1") not in names
    assert "02 Jan 2026" in day2.release.read_text()
    assert old.exists()
    assert old_hashes < set((day2.dist_dir / "main/binary-amd64/by-hash/SHA256").iterdir())
    builder.build(tmp_path, distribution="stable", sign_with=gpg_key, prune=True)
    assert not old.exists() and day2.path("hello", "2.11-1").exists()


def test_hostile_hooks(example_archive, gpg_key):
    builder = examples.example_builder()
    builder.add("escape", "1.0-1", override={"Filename": "../../etc/escape.deb"})
    builder.add("absolute", "1.0-1", override={"Filename": "/etc/absolute.deb", "SHA1": None})
    built = example_archive(builder, distribution="stable")
    stanzas = {p["Package"]: p for p in paragraphs(built.index())}
    assert stanzas["escape"]["Filename"] == "../../etc/escape.deb"
    assert stanzas["absolute"]["Filename"] == "/etc/absolute.deb"
    assert "SHA1" not in stanzas["absolute"]
    built.remove_index("main", "amd64")
    assert not list(built.index().parent.glob("Packages*"))
    assert "main/binary-amd64/Packages.xz" in built.release.read_text()
    archive.corrupt(built.inrelease, truncate=True)
    assert run("gpgv", "--keyring", gpg_key.public_keyring, built.inrelease,
               check=False).returncode != 0
    built.sign(gpg_key)
    run("gpgv", "--keyring", gpg_key.public_keyring, built.inrelease)


# -- the example and synthetic archives -----------------------------------------------


def test_example_cli_is_deterministic_and_keeps_its_keys(tmp_path):
    dest, keys_dir = tmp_path / "repos/upstream", tmp_path / "repos/keys"
    runs = []
    for _ in range(2):
        run(sys.executable, "-m", "tests.support.archive", "example", dest, cwd=ROOT)
        runs.append(({p.name: p.read_bytes() for p in keys_dir.iterdir()},
                     {p: p.read_bytes() for p in dest.rglob("pool/**/*") if p.is_file()},
                     (dest / "dists/stable/main/binary-amd64/Packages").read_bytes()))
    assert runs[0] == runs[1]
    keys = runs[0][0]
    assert set(keys) == {"upstream-archive.asc", "upstream-archive.gpg",
                         "upstream-archive.secret.asc", "signing.asc", "signing.pub.gpg"}
    assert b"PRIVATE KEY" in keys["signing.asc"]
    run("gpgv", "--keyring", keys_dir / "upstream-archive.gpg",
        dest / "dists/stable/InRelease")


def test_synthetic_archive_is_consistent(tmp_path):
    start = time.perf_counter()
    builder = examples.synthetic(500)
    built = builder.build(tmp_path)
    print(f"synthetic(500): {time.perf_counter() - start:.2f}s")
    stanzas = paragraphs(built.index())
    names = {p["Package"] for p in stanzas}
    assert len(stanzas) == 500
    for stanza in filter(lambda p: "Depends" in p, stanzas):
        for rel in deb822.PkgRelation.parse_relations(stanza["Depends"]):
            assert any(alt["name"] in names for alt in rel)
    share_all = sum(p["Architecture"] == "all" for p in stanzas) / len(stanzas)
    assert 0.01 < share_all < 0.12
    assert 500 < len(built.index().read_text()) / 500 < 1000  # Debian-like stanza size


def test_passphrase_key_signs_with_its_passphrase(passphrase_gpg_key, tmp_path):
    key = passphrase_gpg_key
    assert key.passphrase_file.read_text().strip() == key.passphrase
    src = tmp_path / "Release"
    src.write_text("Origin: Test\n")
    key.sign_detached(src, tmp_path / "Release.gpg")
    run("gpgv", "--keyring", key.public_keyring, tmp_path / "Release.gpg", src)


# -- the server -----------------------------------------------------------------------


def get(server, path, headers=None, method="GET", timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    try:
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def served(tmp_path, http_server):
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 400)  # 102,400 bytes
    return http_server(tmp_path), (tmp_path / "blob").read_bytes()


def test_server_ranges_and_head(served):
    server, data = served
    status, headers, body = get(server, "/blob", {"Range": "bytes=1000-"})
    assert (status, body) == (206, data[1000:])
    assert headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert get(server, "/blob", {"Range": "bytes=10-19"})[2] == data[10:20]
    assert get(server, "/blob", {"Range": f"bytes={len(data)}-"})[0] == 416
    status, headers, body = get(server, "/blob", method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, str(len(data)), b"")
    assert get(server, "/../etc/passwd")[0] == 404
    assert server.count("/blob") == 4 and server.count("/blob", method="HEAD") == 1
    assert server.requests("/blob")[0].range == "bytes=1000-"
    server.clear()
    assert server.count() == 0


def test_server_fault_injection(served):
    server, data = served
    server.fail("/blob", 503, times=2)
    assert [get(server, "/blob")[0] for _ in range(3)] == [503, 503, 200]
    server.truncate("/blob", 5000)
    with pytest.raises(http.client.IncompleteRead) as err:
        get(server, "/blob")
    assert len(err.value.partial) == 5000
    assert server.requests("/blob")[-1].sent == 5000
    assert not server.requests("/blob")[-1].complete
    server.hang("/blob")
    with pytest.raises(TimeoutError):
        get(server, "/blob", timeout=0.5)
    server.slow("/blob", 0.3, times=1)
    start = time.perf_counter()
    assert get(server, "/blob")[2] == data
    assert time.perf_counter() - start >= 0.3


def test_server_throttle_allows_killing_mid_download(served):
    server, data = served
    server.throttle("/blob", 200_000)  # about half a second for 100 KiB
    start = time.perf_counter()
    assert get(server, "/blob")[2] == data
    assert time.perf_counter() - start >= 0.4
    assert server.wait_for("/blob", 1, done=True, timeout=1)
    server.reset()
    server.hang("/blob", after=1000)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.5)
    conn.request("GET", "/blob")
    resp = conn.getresponse()
    assert resp.status == 200 and len(resp.read(1000)) == 1000
    with pytest.raises(TimeoutError):
        resp.read(1)
    conn.close()
