"""One API: every error in one shape, response schemas in /openapi.json that match
what is served, camelCase everywhere, and DELETE for every kind behind the same guards.

Against a real `reconciler serve` process with a token file, over a real signed
upstream on 127.0.0.1 that its own reconcile mirrors, snapshots and publishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import views
from tests.support.specs import mirror as mirror_spec
from tests.test_api import SNAPSHOT_AND_PUBLISH, start, upstream  # noqa: F401 (fixtures)

PROTECTED = """\
---
apiVersion: reconciler/v1
kind: Snapshot
metadata: {name: kept, protect: true}
spec: {mirror: up}
"""
TOKEN = {"Authorization": "Bearer t0ken"}


@pytest.fixture
def server(tmp_path, upstream, start):  # noqa: F811
    _built, archive, key = upstream
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "all.yaml").write_text(mirror_spec("up", archive.url, key.public_armored) + SNAPSHOT_AND_PUBLISH
                                    + PROTECTED)
    (tmp_path / "token").write_text("t0ken\n")
    served = start(specs, "--token-file", tmp_path / "token", "--suspend", ready=False)
    assert served.post("/api/reconcile", params={"wait": 1}, headers=TOKEN).status_code == 200
    served.root = tmp_path / "root"
    served.specs = specs
    return served


def error_shape(answer, status: int, error: str) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error and isinstance(body["message"], str) and body["message"], body
    assert "detail" not in body
    return body


def test_every_error_has_the_same_shape(server):
    error_shape(server.delete("/api/mirrors/up"), 401, "Unauthorized")
    error_shape(server.post("/api/reconcile", headers={"Authorization": "Bearer wrong"}), 401, "Unauthorized")
    error_shape(server.get("/api/mirrors/nope"), 404, "NotFound")
    error_shape(server.get("/api/no-such-endpoint"), 404, "NotFound")
    invalid = error_shape(server.get("/api/tasks", params={"limit": 0}), 422, "ValidationError")
    assert invalid["issues"] and "limit" in invalid["issues"][0]
    error_shape(server.get("/api/packages", params={"in": "nothing"}), 400, "BadRequest")


def test_openapi_describes_each_response_as_served(server):
    spec = server.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, model in (("/api/mirrors/{name}", views.MirrorView), ("/api/snapshots/{name}", views.SnapshotView),
                        ("/api/publishes/{key}", views.PublishView), ("/api/tasks/{task_id}", views.TaskView),
                        ("/api/packages", views.PackagePage)):
        ok = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{model.__name__}"}, (path, ok)
        assert spec["paths"][path]["get"]["responses"]["404"]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/ErrorBody"}
    listed = spec["paths"]["/api/mirrors"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed["items"] == {"$ref": "#/components/schemas/MirrorView"}
    served = {"MirrorView": server.get("/api/mirrors/up").json(),
              "SnapshotView": server.get("/api/snapshots/snap").json(),
              "PublishView": server.get("/api/publishes/debian/stable").json(),
              "TaskView": server.get("/api/tasks").json()[0],
              "PackageView": server.get("/api/packages").json()["packages"][0]}
    for name, body in served.items():  # the schema names exactly the keys that are served
        assert set(schemas[name]["properties"]) == set(body), name
        assert set(schemas[name]["required"]) <= set(body), name


def test_tasks_are_camel_case_like_every_other_shape(server):
    rows = server.get("/api/tasks").json()
    assert rows and all("_" not in key for row in rows for key in row)
    assert {"createdAt", "startedAt", "endedAt"} <= set(rows[0])
    assert server.get(f"/api/tasks/{rows[0]['id']}").json() == rows[0]


def test_delete_for_snapshots_and_publishes_with_the_mirror_guards(server):
    in_use = error_shape(server.delete("/api/snapshots/snap", headers=TOKEN), 403, "InUse")
    assert in_use["users"] == ["publish/pub"] and "pass ?force=1" in in_use["message"]
    error_shape(server.delete("/api/snapshots/kept", params={"force": 1}, headers=TOKEN), 403, "Refused")
    error_shape(server.delete("/api/snapshots/nope", headers=TOKEN), 404, "NotFound")
    error_shape(server.delete("/api/publishes/debian/nope", headers=TOKEN), 404, "NotFound")
    error_shape(server.delete("/api/publishes/debian/stable"), 401, "Unauthorized")
    assert server.get("/api/snapshots/snap").status_code == 200  # every refusal left it as it was
    release = server.root / "public/debian/dists/stable/Release"
    assert release.exists()

    gone = server.delete("/api/publishes/debian/stable", headers=TOKEN)
    assert gone.status_code == 200, gone.text
    assert gone.json()["name"] == "pub" and "still declared" in gone.json()["warnings"][0]
    assert not release.exists() and server.get("/api/publishes/debian/stable").status_code == 404
    dropped = server.delete("/api/snapshots/snap", headers=TOKEN)  # nothing uses it now
    assert dropped.status_code == 200, dropped.text
    assert server.get("/api/snapshots/snap").status_code == 404
    names = {t["name"] for t in server.get("/api/tasks").json()}
    assert {"drop publish pub", "drop snapshot snap"} <= names  # each a locked task


def test_docs_api_md_names_every_endpoint(server):
    text = (Path(__file__).resolve().parent.parent / "docs/api.md").read_text()
    for path, operations in server.get("/openapi.json").json()["paths"].items():
        for method in operations:
            assert f"| {method.upper()} | `{path}` |" in text, f"docs/api.md does not list {method.upper()} {path}"
