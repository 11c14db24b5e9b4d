"""Prometheus metrics of `reconciler serve`, in a registry of their own.

One `Metrics` object per server, passed to the controller and the API: no module-level
registry, so tests and a second server in one process never collide on metric names.

Two values are read rather than counted, because counting them would need hooks deep in
the task code: the package count of each mirror is read from the database at scrape
time, and downloaded bytes are counted by the pool as each verified file is imported
(`MeteredPool`), which is the one place every downloaded package file passes through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from reconciler import events, tasks, treeverify
from reconciler.pool import FilesystemPool
from reconciler.state.stores import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a snapshot takes milliseconds, a first mirror download can take an hour.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


class Metrics:
    def __init__(self, ctx: tasks.Context):
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Time to reconcile one object (kind, name); kind=all is a whole reconcile",
            ["kind", "name"], buckets=BUCKETS, registry=r)
        self.task_duration = Histogram(
            "reconciler_task_duration_seconds", "Time of each locked task, by object kind and operation",
            ["kind", "operation"], buckets=BUCKETS, registry=r)
        self.reconcile_failures = Counter(
            "reconciler_reconcile_failures_total", "Reconciles that did not succeed, by reason",
            ["reason"], registry=r)
        self.download_bytes = Counter(
            "reconciler_download_bytes_total", "Bytes of package files downloaded and imported into the pool",
            registry=r)
        self.ready = Gauge("reconciler_ready", "1 once a reconcile has succeeded", registry=r)
        self.leader = Gauge("reconciler_leader", "1 while this replica leads (reconciles), 0 while it stands by",
                            registry=r)
        self.last_success = Gauge("reconciler_last_success_timestamp_seconds",
                                  "Unix time of the last successful reconcile", registry=r)
        r.register(_MirrorPackages(ctx))
        r.register(_PublishValidity(ctx))

    def observe(self, event: events.Event) -> None:
        """A subscriber of reconcile's events: the duration of each change whose action ran
        (not one skipped, nor one the plan only reports: those have no line)."""
        if event.finished and event.outcome != events.SKIPPED and event.message:
            self.reconcile_duration.labels(event.kind, event.name).observe(event.seconds)
            self.task_duration.labels(event.kind, event.op).observe(event.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _MirrorPackages(Collector):
    """reconciler_mirror_packages{mirror} and reconciler_mirror_update_failed{mirror}: read
    from the stored rows at scrape time."""

    def __init__(self, ctx: tasks.Context):
        self.ctx = ctx

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        packages, failed = self._families()
        db = self.ctx.connect()  # its own connection: scrapes run on any thread
        try:
            for row in Store(db).mirrors.list():
                packages.add_metric([row.name], row.num_packages)
                failed.add_metric([row.name], 1 if row.status == "failed" else 0)
        finally:
            db.close()
        yield packages
        yield failed

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("reconciler_mirror_packages", "Packages in each mirror's current list",
                                  labels=["mirror"]),
                GaugeMetricFamily("reconciler_mirror_update_failed",
                                  "1 when the mirror's last update failed (it keeps its previous list)",
                                  labels=["mirror"]))


class _PublishValidity(Collector):
    """reconciler_publish_valid_until_seconds{publish}: seconds until each tree's Valid-Until,
    read from its Release on disk at scrape time (trees without Valid-Until are left out)."""

    def __init__(self, ctx: tasks.Context):
        self.ctx = ctx

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        db = self.ctx.connect()
        try:
            rows = Store(db).publishes.list()
        finally:
            db.close()
        now = datetime.now(timezone.utc)
        for row in rows:
            until = treeverify.published(self.ctx.publish_dir, row.prefix, row.distribution).valid_until
            if until is not None:
                family.add_metric([row.name], (until - now).total_seconds())
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("reconciler_publish_valid_until_seconds",
                                 "Seconds until the published Release expires (negative: expired)",
                                 labels=["publish"])


class MeteredPool(FilesystemPool):
    """The filesystem pool, reporting the size of each file it newly imports."""

    def __init__(self, root: Path, on_import: Callable[[int], None]):
        super().__init__(root)
        self.on_import = on_import

    def import_file(self, src: Path, *, sha256: str, size: int, move: bool = False,
                    actual_sha256: str | None = None) -> None:
        new = not self.has(sha256, size)
        super().import_file(src, sha256=sha256, size=size, move=move, actual_sha256=actual_sha256)
        if new:
            self.on_import(size)
