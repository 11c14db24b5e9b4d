"""Secrets at rest: a mirror's `network.headers` values and its proxy's user:password are
kept in state only as digests, compared by digest (unchanged is no change, changed is an
edit), and never printed by `show`, `plan`, the API or the logs.

Real components: a signed archive on 127.0.0.1 that sees the real header, a real
forwarding proxy that demands the real credentials, the real CLI (typer's runner, in
process, so the environment a test sets is the one `${VAR}` reads), a real `serve`
process, and the bytes of the real state files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.spec import MirrorSpec, secret_digest
from tests.support.proxy import Proxy
from tests.support.serveproc import Server
from tests.support.server import ArchiveServer
from tests.test_api import upstream  # noqa: F401 (the fixture)
from tests.test_network import Mirror, no_proxy_env  # noqa: F401 (the fixture)

TOKEN = "Bearer tok-3f1c-very-secret"
PASSWORD = "pr0xy-pa55-secret"


@pytest.fixture
def archive(example_archive):
    return example_archive()


@pytest.fixture
def rig(tmp_path, archive, gpg_key, monkeypatch):
    monkeypatch.setenv("TOKEN", TOKEN)
    monkeypatch.setenv("PROXY_PASSWORD", PASSWORD)
    with ArchiveServer(archive.root) as server, Proxy(credentials=f"ops:{PASSWORD}") as proxy:
        mirror = Mirror(tmp_path, server.url, gpg_key, archive)
        mirror.write(headers={"Authorization": "${TOKEN}"},
                     proxy=f"http://ops:${{PROXY_PASSWORD}}@{proxy.address}")
        yield mirror, server, proxy


def state_bytes(root: Path) -> bytes:
    """Every file under the root that reconciler wrote (state.db, its WAL, locks, caches)."""
    return b"".join(path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file())


def stored_network(root: Path) -> dict:
    with sqlite3.connect(root / "state.db") as db:
        return json.loads(db.execute("SELECT spec FROM mirrors WHERE name = 'up'").fetchone()[0])["network"]


def test_secrets_are_stored_as_digests_and_the_plan_converges(rig):
    mirror, server, proxy = rig
    mirror.apply()
    assert server.count(".deb") > 0
    assert all(r.headers.get("Authorization") == TOKEN for r in server.requests())  # the real value went out
    assert proxy.log and all(auth is not None for _, _, auth in proxy.log)
    on_disk = state_bytes(mirror.root)
    assert TOKEN.encode() not in on_disk and b"tok-3f1c" not in on_disk and PASSWORD.encode() not in on_disk
    network = stored_network(mirror.root)
    assert network["headers"] == {"Authorization": secret_digest(TOKEN)}
    assert network["proxy"] == f"http://{secret_digest(f'ops:{PASSWORD}')}@{proxy.address}"
    mirror.cli("plan", "-f", str(mirror.specs), "--detailed-exitcode")  # unchanged secrets: no change
    printed = "".join(mirror.cli(*args) for args in (("show", "mirror", "up"), ("show", "mirror", "up", "--json"),
                                                     ("list", "mirrors", "--json"),
                                                     ("plan", "-f", str(mirror.specs), "-v"),
                                                     ("plan", "-f", str(mirror.specs), "--json")))
    assert "tok-3f1c" not in printed and PASSWORD not in printed


@pytest.mark.parametrize("variable, value", [("TOKEN", "Bearer tok-rotated-secret"),
                                             ("PROXY_PASSWORD", "rotated-pa55")])
def test_a_changed_secret_is_an_edit_and_apply_converges(rig, monkeypatch, variable, value):
    mirror, server, proxy = rig
    mirror.apply()
    if variable == "PROXY_PASSWORD":
        proxy.credentials = f"ops:{value}"
    monkeypatch.setenv(variable, value)
    planned = mirror.cli("plan", "-f", str(mirror.specs), "--detailed-exitcode", expect=2)
    assert "mirror/up: edit network\n" in planned and value not in planned
    server.clear()
    mirror.apply()
    mirror.cli("plan", "-f", str(mirror.specs), "--detailed-exitcode")
    assert value.encode() not in state_bytes(mirror.root)
    assert server.count(".deb") == 0  # a secret changes how, not what: nothing downloaded again


def test_the_stored_form_digests_every_secret_and_nothing_else():
    spec = MirrorSpec.model_validate({
        "url": "http://archive.example/debian", "distribution": "stable", "verifySignature": False,
        "network": {"headers": {"Authorization": "Bearer a", "X-Key": "b"}, "proxy": "http://u:p%40ss@proxy:3128"}})
    stored = spec.stored()
    assert stored["network"]["headers"] == {"Authorization": secret_digest("Bearer a"), "X-Key": secret_digest("b")}
    assert stored["network"]["proxy"] == f"http://{secret_digest('u:p%40ss')}@proxy:3128"
    assert secret_digest("b").startswith("sha256:") and len(secret_digest("b")) == 7 + 64
    assert {k: v for k, v in stored.items() if k != "network"} == \
        {k: v for k, v in spec.model_dump(mode="json").items() if k != "network"}
    plain = MirrorSpec.model_validate({"url": "http://a", "distribution": "s", "verifySignature": False,
                                       "network": {"proxy": "http://proxy:3128"}})
    assert plain.stored() == plain.model_dump(mode="json")


def test_serve_keeps_secrets_out_of_the_api_the_logs_and_state(tmp_path, upstream):  # noqa: F811
    _built, archive, key = upstream
    specs = tmp_path / "specs"
    specs.mkdir()
    doc = {"apiVersion": "reconciler/v1", "kind": "Mirror", "metadata": {"name": "up"},
           "spec": {"url": archive.url, "distribution": "stable", "components": ["main"],
                    "architectures": ["amd64"], "keyrings": [str(key.public_keyring)],
                    "network": {"headers": {"Authorization": "${TOKEN}"}}}}
    (specs / "mirror.yaml").write_text(json.dumps(doc))
    root = tmp_path / "root"
    # a mirror of another owner, applied by CI: stored, but not declared in what serve follows
    other = tmp_path / "other"
    other.mkdir()
    (other / "mirror.yaml").write_text(json.dumps({**doc, "metadata": {"name": "ci-only"}}))
    applied = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(root), "apply", "-f", str(other),
                              "--owner", "ci"], env={**os.environ, "TOKEN": TOKEN}, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    server = Server(root, "--specs", specs, "--interval", "1h", "--log-format", "json",
                    env={"TOKEN": TOKEN}).start()
    try:
        server.wait_ready()
        archive.clear()
        answers = [server.get(path).text for path in ("/api/mirrors", "/api/mirrors/up", "/api/status", "/api/tasks")]
        answers.append(server.post("/api/mirrors/up/update").text)
        refused = server.post("/api/mirrors/ci-only/update")
    finally:
        assert server.stop() == 0, server.output
    assert archive.requests() and all(r.headers.get("Authorization") == TOKEN for r in archive.requests())
    assert refused.status_code == 403 and "keeps only digests of its secrets (network.headers)" in refused.text
    assert "tok-3f1c" not in "".join(answers) + server.output
    assert b"tok-3f1c" not in state_bytes(root)



def test_a_secret_stored_in_plain_text_by_an_earlier_version_is_replaced_by_its_digest(rig):
    mirror, _server, _proxy = rig
    mirror.apply()
    with sqlite3.connect(mirror.root / "state.db") as db:  # what an earlier version stored
        spec = json.loads(db.execute("SELECT spec FROM mirrors WHERE name = 'up'").fetchone()[0])
        spec["network"]["headers"] = {"Authorization": TOKEN}
        db.execute("UPDATE mirrors SET spec = ? WHERE name = 'up'", (json.dumps(spec),))
    planned = mirror.cli("plan", "-f", str(mirror.specs), "--detailed-exitcode", expect=2)
    assert "mirror/up: edit network\n" in planned and "tok-3f1c" not in planned
    mirror.apply()
    assert stored_network(mirror.root)["headers"] == {"Authorization": secret_digest(TOKEN)}
    mirror.cli("plan", "-f", str(mirror.specs), "--detailed-exitcode")
