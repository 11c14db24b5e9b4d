"""`--log-format json`: `serve` and `watch` print one JSON object per line, with the
object, operation and duration as fields; text stays the default.

Real processes (`python -m reconciler`) over a real signed upstream on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import sys

from reconciler.logfmt import JsonFormatter
from tests.support.serveproc import Proc, Server
from tests.support.specs import mirror as mirror_spec
from tests.test_api import SNAPSHOT_AND_PUBLISH, upstream  # noqa: F401 (the fixture)


def specs_dir(tmp_path, upstream):  # noqa: F811
    _built, archive, key = upstream
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "all.yaml").write_text(mirror_spec("up", archive.url, key.public_armored) + SNAPSHOT_AND_PUBLISH)
    return specs


def records(proc: Proc) -> list[dict]:
    lines = [line for line in proc.output.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object, or this fails
    assert all({"time", "level", "logger", "message"} <= set(r) for r in parsed)
    return parsed


def test_serve_logs_json_with_object_fields(tmp_path, upstream):  # noqa: F811
    server = Server(tmp_path / "root", "--specs", specs_dir(tmp_path, upstream), "--interval", "1h",
                    "--log-format", "json").start()
    try:
        server.wait_ready()
    finally:
        assert server.stop() == 0, server.output
    logged = records(server)
    created = next(r for r in logged if r.get("kind") == "mirror" and r.get("name") == "up")
    assert created["op"] == "created" and isinstance(created["seconds"], float) and created["level"] == "info"
    assert any(r.get("kind") == "publish" and r.get("name") == "pub" for r in logged)
    done = next(r for r in logged if r["message"].startswith("ReconciliationSucceeded"))
    assert done["seconds"] >= 0 and done["logger"] == "reconciler.serve"


def test_watch_logs_json(tmp_path, upstream):  # noqa: F811
    watcher = Proc(tmp_path / "root", "watch", "-f", specs_dir(tmp_path, upstream), "--log-format", "json").start()
    try:
        watcher.wait_line("waiting for changes", timeout=60)
    finally:
        watcher.stop()
    logged = records(watcher)
    assert any(r.get("kind") == "snapshot" and r.get("name") == "snap" and r.get("op") == "created" for r in logged)
    assert logged[-1]["logger"] == "reconciler.watch"


def test_text_stays_the_default(tmp_path, upstream):  # noqa: F811
    watcher = Proc(tmp_path / "root", "watch", "-f", specs_dir(tmp_path, upstream)).start()
    try:
        line = watcher.wait_line(lambda text: text.startswith("mirror/up: created"), timeout=60)
    finally:
        watcher.stop()
    assert not line.startswith("{") and "{" not in watcher.output


def test_the_formatter_keeps_extras_and_exceptions():
    record = logging.LogRecord("reconciler.api", logging.ERROR, __file__, 1, "FAILED mirror/up: %s", ("boom",),
                               None)
    record.task = 42
    out = json.loads(JsonFormatter().format(record))
    assert (out["kind"], out["name"], out["op"], out["task"], out["level"]) == ("mirror", "up", "failed", 42, "error")
    try:
        raise ValueError("bad")
    except ValueError:
        failing = logging.LogRecord("x", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    assert "ValueError: bad" in json.loads(JsonFormatter().format(failing))["exception"]
