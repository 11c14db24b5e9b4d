"""The HTTP API of `reconciler serve`: a thin shell over the stores, the actions and the loop.

- Reads open a connection of their own per request: the JSON shapes come from `views`,
  the same functions `--json` uses, so the CLI and the API cannot disagree.
- Mutations call the same actions the CLI's `apply` does (`mirrors.sync`,
  `mirrors.drop`). Each is a locked task that reloads and re-checks inside its lock,
  so a DELETE racing a snapshot of the same mirror is decided there, freshly, and a
  refusal (in use: 403 naming the users) leaves everything as it was.
- Every endpoint that runs a task is a plain `def`: FastAPI runs it in a thread pool,
  so a long mirror update never blocks health checks or reads.
- Domain errors become HTTP statuses in one handler, from each error's `http_status`.
- With a token file, mutating endpoints need `Authorization: Bearer TOKEN`, compared in
  constant time; the file is read per request, so a rotated Secret takes effect
  without a restart. Reads stay open, as /metrics and probes must.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.staticfiles import StaticFiles

from reconciler import __version__, tasks, views
from reconciler.actions import mirrors
from reconciler.errors import InUse, NotFound, ReconcilerError, SpecError
from reconciler.metrics import CONTENT_TYPE, Metrics
from reconciler.spec import API_VERSION, MirrorDoc
from reconciler.state.stores import Store


class Controller(Protocol):
    """What the API needs of the reconcile loop (serve.Controller)."""

    owner: str
    ready: bool

    @property
    def alive(self) -> bool: ...

    @property
    def stopping(self) -> bool: ...

    def status(self) -> dict: ...

    def declared_mirror(self, name: str) -> MirrorDoc | None: ...

    def request(self, *, wait: bool = False, timeout: float | None = None) -> bool: ...


def create_app(ctx: tasks.Context, controller: Controller, *, metrics: Metrics | None = None,
               token_file: Path | None = None, serve_public: bool = False) -> FastAPI:
    app = FastAPI(title="reconciler", version=__version__,
                  description="Declarative Debian repositories: mirrors, snapshots and signed published trees.")
    app.add_exception_handler(ReconcilerError, _error)
    metrics = metrics or Metrics(ctx)
    auth = _bearer(token_file)
    _reads(app, ctx)
    _mutations(app, ctx, controller, metrics, auth)
    _operations(app, controller, metrics)
    if serve_public:
        ctx.publish_root.mkdir(parents=True, exist_ok=True)
        app.mount("/public", PublicFiles(directory=ctx.publish_root, follow_symlink=False), name="public")
    return app


def _error(request: Request, exc: ReconcilerError) -> JSONResponse:
    """The one place domain errors become HTTP statuses."""
    body: dict = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, InUse):
        body["users"] = exc.users
    if isinstance(exc, SpecError):
        body["issues"] = [str(i) for i in exc.issues]
    return JSONResponse(body, status_code=exc.http_status)


def _bearer(token_file: Path | None):
    scheme = HTTPBearer(auto_error=False, description="Needed by mutating endpoints when serve has --token-file")
    if token_file is not None and not token_file.read_text().strip():
        raise ReconcilerError(f"--token-file {token_file} is empty")

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if token_file is None:
            return
        expected = token_file.read_text().strip().encode()
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return check


def _store(ctx: tasks.Context):
    def connect() -> Iterator[Store]:
        db = ctx.connect()  # one connection per request: requests run on many threads
        try:
            yield Store(db)
        finally:
            db.conn.close()

    return connect


def _reads(app: FastAPI, ctx: tasks.Context) -> None:
    connect = Depends(_store(ctx))  # a default value, not an alias: annotations are strings here

    @app.get("/api/mirrors", tags=["mirrors"], summary="List mirrors, each with numPackages")
    def list_mirrors(store: Store = connect) -> list[dict]:
        return [views.mirror(r) for r in store.mirrors.list()]

    @app.get("/api/mirrors/{name}", tags=["mirrors"], summary="One mirror", responses={404: {}})
    def get_mirror(name: str, store: Store = connect) -> dict:
        return views.mirror(_found(store.mirrors.get(name), f"mirror {name!r}"))

    @app.get("/api/snapshots", tags=["snapshots"], summary="List snapshots, each with numPackages")
    def list_snapshots(store: Store = connect) -> list[dict]:
        return [views.snapshot(r) for r in store.snapshots.list()]

    @app.get("/api/snapshots/{name}", tags=["snapshots"], summary="One snapshot", responses={404: {}})
    def get_snapshot(name: str, store: Store = connect) -> dict:
        return views.snapshot(_found(store.snapshots.get(name), f"snapshot {name!r}"))

    @app.get("/api/publish", tags=["publish"], summary="List published trees, each with numPackages")
    def list_publishes(store: Store = connect) -> list[dict]:
        return [views.publish(r) for r in store.publishes.list()]

    @app.get("/api/publish/{key:path}", tags=["publish"], responses={404: {}},
             summary="One published tree: /api/publish/PREFIX/DIST (/api/publish/DIST for the root prefix)")
    def get_publish(key: str, store: Store = connect) -> dict:
        return views.publish(_found(_publish_at(store, key), f"publish {key!r}"))

    @app.get("/api/tasks", tags=["tasks"], summary="Recent tasks, newest first")
    def list_tasks(limit: Annotated[int, Query(ge=1, le=1000)] = 50, store: Store = connect) -> list[dict]:
        return tasks.list_tasks(store, limit=limit)

    @app.get("/api/tasks/{task_id}", tags=["tasks"], summary="One task: state, output, error", responses={404: {}})
    def get_task(task_id: int, store: Store = connect) -> dict:
        return _found(tasks.get_task(store, task_id), f"task {task_id}")


def _found(row, what: str):
    if row is None:
        raise NotFound(f"{what} does not exist")
    return row


def _publish_at(store: Store, key: str):
    """PREFIX/DIST, where both may hold slashes: try every split, the root prefix "." last."""
    parts = key.strip("/").split("/")
    for cut in range(1, len(parts)):
        row = store.publishes.at("/".join(parts[:cut]), "/".join(parts[cut:]))
        if row is not None:
            return row
    return store.publishes.at(".", "/".join(parts))


def _mutations(app: FastAPI, ctx: tasks.Context, controller: Controller, metrics: Metrics, auth) -> None:
    guarded = [Depends(auth)]

    @app.post("/api/mirrors/{name}/update", tags=["mirrors"], dependencies=guarded,
              responses={401: {}, 404: {}, 403: {}},
              summary="Update one mirror now, as a task (the declared spec, else the stored one)")
    def update_mirror(name: str, force: bool = False) -> dict:
        doc, owner = _mirror_doc(ctx, controller, name)
        started = time.monotonic()
        try:
            result = mirrors.sync(ctx, doc, owner=owner, force=force)
        finally:
            metrics.task_duration.labels("Mirror", "update").observe(time.monotonic() - started)
        return {"name": name, "message": result.line(), "result": dataclasses.asdict(result)}

    @app.delete("/api/mirrors/{name}", tags=["mirrors"], dependencies=guarded,
                responses={401: {}, 404: {}, 403: {"description": "in use by snapshots (named), or protected"}},
                summary="Drop a mirror; refused while snapshots were taken from it unless force=1")
    def drop_mirror(name: str, force: bool = False) -> dict:
        started = time.monotonic()
        try:
            message = mirrors.drop(ctx, name, force=force)
        finally:
            metrics.task_duration.labels("Mirror", "drop").observe(time.monotonic() - started)
        warnings = []
        if controller.declared_mirror(name) is not None:
            warnings.append(f"mirror/{name} is still declared in the specs: the next reconcile creates it again")
        return {"name": name, "message": message, "warnings": warnings}

    @app.post("/api/reconcile", tags=["reconcile"], dependencies=guarded, status_code=202, responses={401: {}},
              summary="Reconcile now; with wait=1, answer when that reconcile has finished")
    def trigger(wait: bool = False, timeout: Annotated[float, Query(gt=0, le=3600)] = 600) -> JSONResponse:
        if controller.stopping:
            raise HTTPException(503, "shutting down")
        finished = controller.request(wait=wait, timeout=timeout)
        code = 202 if not wait else (200 if finished else 504)
        return JSONResponse(controller.status(), status_code=code)


def _mirror_doc(ctx: tasks.Context, controller: Controller, name: str) -> tuple[MirrorDoc, str]:
    declared = controller.declared_mirror(name)
    if declared is not None:
        return declared, controller.owner
    db = ctx.connect()
    try:
        row = Store(db).mirrors.get(name)
    finally:
        db.conn.close()
    if row is None:
        raise NotFound(f"mirror {name!r} is neither declared in the specs nor stored")
    doc = MirrorDoc.model_validate({"apiVersion": API_VERSION, "kind": "Mirror", "spec": row.spec,
                                    "metadata": {"name": name, "protect": row.protect}})
    return doc, row.owner


def _operations(app: FastAPI, controller: Controller, metrics: Metrics) -> None:
    @app.get("/api/status", tags=["reconcile"],
             summary="Loop status: Ready/Reconciling/Stalled conditions, revisions, last plan, objects")
    def status() -> dict:
        return controller.status()

    @app.get("/healthz", tags=["probes"], summary="Liveness: the process and its reconcile loop run")
    def healthz() -> JSONResponse:
        alive = controller.alive
        return JSONResponse({"status": "ok" if alive else "reconcile loop died"}, status_code=200 if alive else 503)

    @app.get("/readyz", tags=["probes"], summary="Readiness: 200 once a reconcile has succeeded")
    def readyz() -> JSONResponse:
        if controller.ready:
            return JSONResponse({"ready": True})
        ready = next(c for c in controller.status()["conditions"] if c["type"] == "Ready")
        return JSONResponse({"ready": False, "reason": ready["reason"], "message": ready["message"]},
                            status_code=503)

    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics (text format)")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)


class PublicFiles(StaticFiles):
    """The publish root, read-only; hidden entries (staging directories) are never served.

    `follow_symlink=False` makes Starlette resolve every path and refuse one that lands
    outside the directory, so a symlink cannot expose the rest of the root.
    """

    def lookup_path(self, path: str):
        if any(part.startswith(".") for part in PurePosixPath(path).parts):
            return "", None
        return super().lookup_path(path)
