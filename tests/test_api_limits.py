"""The API's trust boundary and limits, against a real `reconciler serve` process.

- A token file that is empty, whitespace-only, missing or unusable never reads as "no
  token": serve refuses to start with one, and one that breaks while serve runs refuses
  every mutation with a 503 naming it (logged), while a rotated token takes effect.
- Parameters out of range are 404/422, never a 500.
- Probes, reads and /metrics answer within a second or two while dozens of clients
  wait for a reconcile that a throttled upstream makes slow, and while task requests
  queue behind that reconcile's lock: waiting holds no thread the reads need, and
  requests beyond the bounds are answered 429 at once.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from reconciler import api
from tests.support import examples
from tests.support.serveproc import Proc, Server
from tests.support.server import ArchiveServer
from tests.support.specs import mirror as mirror_spec
from tests.test_api import start  # noqa: F401 (the fixture: serve processes stopped and checked at teardown)

PROBES = ("/healthz", "/readyz", "/api/status", "/api/mirrors", "/api/tasks", "/metrics")


@pytest.fixture(scope="module")
def built(tmp_path_factory, gpg_key):
    return examples.build_example(tmp_path_factory.mktemp("upstream"), gpg_key), gpg_key


@pytest.fixture
def upstream(built):
    example, key = built
    with ArchiveServer(example.root) as server:
        yield server, key


def specs_dir(tmp_path: Path, upstream) -> Path:
    server, key = upstream
    directory = tmp_path / "specs"
    directory.mkdir()
    (directory / "up.yaml").write_text(mirror_spec("up", server.url, key.public_armored))
    return directory


# -- the token file ----------------------------------------------------------------------


def _empty(path: Path) -> None:
    path.write_text("")


def _blank(path: Path) -> None:
    path.write_text("  \n\t\n")


def _directory(path: Path) -> None:
    path.mkdir()  # root reads a chmod 000 file; a directory in its place it cannot read


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "mounted-secret-gone")


BROKEN_TOKENS = {
    "empty": (_empty, "is empty or only whitespace"),
    "whitespace-only": (_blank, "is empty or only whitespace"),
    "missing": (lambda path: None, "does not exist"),
    "a directory": (_directory, "is not a regular file"),
    "a dangling symlink": (_dangling, "does not exist"),
}


@pytest.mark.parametrize("case", BROKEN_TOKENS)
def test_serve_refuses_to_start_with_an_unusable_token_file(tmp_path, case):
    make, expected = BROKEN_TOKENS[case]
    token = tmp_path / "token"
    make(token)
    (tmp_path / "specs").mkdir()
    root = tmp_path / "root"
    proc = Proc(root, "serve", "--specs", tmp_path / "specs", "--listen", "127.0.0.1:0", "--token-file", token)
    proc.start()
    assert proc.proc.wait(30) == 1, proc.output
    proc.wait_line(f"error: --token-file {token} {expected}", timeout=5)
    assert "listening on" not in proc.output and "Traceback" not in proc.output, proc.output
    assert not root.exists()  # refused before anything was set up, let alone bound


def test_a_token_file_that_breaks_while_serving_refuses_every_mutation(tmp_path, upstream, start):
    token = tmp_path / "token"
    token.write_text("first-token\n")
    server = start(specs_dir(tmp_path, upstream), "--token-file", token)
    old = {"Authorization": "Bearer first-token"}
    tasks_before = len(server.get("/api/tasks").json())
    for case, (make, expected) in BROKEN_TOKENS.items():  # "empty" first: the file is emptied in place
        make(token)
        for headers in ({}, {"Authorization": "Bearer"}, old):
            for method, path in (("DELETE", "/api/mirrors/up?force=1"), ("POST", "/api/mirrors/up/update"),
                                 ("POST", "/api/reconcile")):
                answer = server.http.request(method, path, headers=headers)
                assert answer.status_code == 503, (case, method, path, headers, answer.text)
                body = answer.json()
                assert body["error"] == "AuthUnavailable", body
                assert f"--token-file {token} {expected}" in body["message"], body
        server.wait_line(lambda line: "ERROR reconciler.api" in line and f"--token-file {token} {expected}" in line,  # noqa: B023
                         timeout=5)
        assert server.get("/api/mirrors/up").status_code == 200  # reads stay open; nothing was dropped
        if token.is_dir():
            token.rmdir()
        elif token.exists() or token.is_symlink():
            token.unlink()
    assert len(server.get("/api/tasks").json()) == tasks_before  # no task ran
    assert "Traceback" not in server.output

    token.write_text("rotated-token\n")  # a rotated Secret takes effect without a restart
    assert server.delete("/api/mirrors/up", params={"force": 1}, headers=old).status_code == 401
    answer = server.delete("/api/mirrors/up", params={"force": 1}, headers={"Authorization": "Bearer rotated-token"})
    assert answer.status_code == 200, answer.text
    assert server.get("/api/mirrors/up").status_code == 404


# -- parameters out of range ---------------------------------------------------------------


OUT_OF_RANGE = [
    ("/api/tasks/99999999999999999999999", 404), (f"/api/tasks/{2**63}", 404), ("/api/tasks/-1", 404),
    ("/api/tasks/0", 404), ("/api/tasks/abc", 422), ("/api/tasks?limit=99999999999999999999", 422),
    ("/api/mirrors/%ff%00", 404), ("/api/publish/" + "a/" * 2000 + "b", 404),
]


def test_out_of_range_parameters_are_not_a_500(tmp_path, upstream, start):
    server = start(specs_dir(tmp_path, upstream), "--suspend", ready=False)
    for path, status in OUT_OF_RANGE:
        started = time.monotonic()
        answer = server.get(path)
        assert answer.status_code == status, (path, answer.text)
        assert time.monotonic() - started < 2, path
    assert "Traceback" not in server.output


# -- load: probes and reads never wait on reconcile work --------------------------------------


def many(server: Server, n: int) -> httpx.Client:
    """One client with room for `n` connections at once (a client per request costs ~0.1 s of CPU)."""
    return httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=n))


def timed_get(url: str, path: str) -> tuple[int, float]:
    started = time.monotonic()
    answer = httpx.get(url + path, timeout=10)
    return answer.status_code, time.monotonic() - started


def assert_probes_answer(server: Server) -> None:
    for path in PROBES:
        status, seconds = timed_get(server.url, path)
        assert status in (200, 503) if path == "/readyz" else status == 200, (path, status)
        assert seconds < 1.5, (path, seconds)


def test_probes_and_reads_answer_while_many_wait_for_a_slow_reconcile(tmp_path, upstream, start):
    archive, _ = upstream
    archive.slow(".deb", 6)  # the reconcile that serve starts at once takes 6 s at least
    server = start(specs_dir(tmp_path, upstream), "--grace-period", "1s", ready=False)
    archive.wait_for(".deb", 1, timeout=30)  # the reconcile is downloading now
    clients = api.MAX_WAITERS + 13
    with ThreadPoolExecutor(clients) as pool, many(server, clients) as http:
        waiting = [pool.submit(http.post, "/api/reconcile", params={"wait": 1, "timeout": 3})
                   for _ in range(clients)]
        time.sleep(0.5)  # let them all arrive; they wait 3 s, so the probes below run while they wait
        assert_probes_answer(server)
        assert sum(not f.done() for f in waiting) == api.MAX_WAITERS  # they were waiting all along
        codes = sorted(f.result().status_code for f in waiting)
    assert codes == [429] * (clients - api.MAX_WAITERS) + [504] * api.MAX_WAITERS, codes
    assert_probes_answer(server)


def test_probes_and_reads_answer_while_task_requests_queue_behind_a_reconcile(tmp_path, upstream, start):
    """Mirror updates asked for while the reconcile holds that mirror's lock wait for it,
    each in a request: they wait on threads of their own, beyond a bound they are 429."""
    archive, _ = upstream
    archive.slow(".deb", 4)
    server = start(specs_dir(tmp_path, upstream), "--grace-period", "1s", ready=False)
    archive.wait_for(".deb", 1, timeout=30)
    clients = api.MAX_TASK_REQUESTS + 29  # 45 in all
    with ThreadPoolExecutor(clients) as pool, many(server, clients) as http:
        updates = [pool.submit(http.post, "/api/mirrors/up/update") for _ in range(clients)]
        time.sleep(0.5)  # let them all arrive; they queue until the reconcile ends (4 s and more)
        assert_probes_answer(server)
        refused = [f.result() for f in updates if f.done()]
        assert len(refused) == clients - api.MAX_TASK_REQUESTS, [a.text for a in refused]
        assert [a.status_code for a in refused] == [429] * len(refused), [a.text for a in refused]
        assert "retry later" in refused[0].json()["message"]
        archive.reset()  # let the reconcile finish; the queued updates then run, one at a time
        codes = [f.result().status_code for f in updates]
    assert sorted(codes) == [200] * api.MAX_TASK_REQUESTS + [429] * (clients - api.MAX_TASK_REQUESTS), codes
    assert_probes_answer(server)


def test_a_waiter_that_hangs_up_frees_its_place(tmp_path, upstream, start):
    """Clients that give up on a wait=1 must not keep the waiting places taken until their
    timeout (up to an hour), or every later waiter would be refused."""
    archive, _ = upstream
    archive.slow(".deb", 6)
    server = start(specs_dir(tmp_path, upstream), "--grace-period", "1s", ready=False)
    archive.wait_for(".deb", 1, timeout=30)
    clients = api.MAX_WAITERS
    with ThreadPoolExecutor(clients) as pool, many(server, clients) as http:
        impatient = [pool.submit(http.post, "/api/reconcile", params={"wait": 1}, timeout=0.5)
                     for _ in range(clients)]
        assert all(isinstance(f.exception(timeout=10), httpx.ReadTimeout) for f in impatient)
    time.sleep(2 * api.WAIT_POLL + 0.3)  # the server notices within a poll or two
    answer = server.post("/api/reconcile", params={"wait": 1, "timeout": 1})
    assert answer.status_code == 504, answer.text  # waited its second: it was let in, not refused with 429
