"""Domain errors. The CLI maps them to exit codes and the API to HTTP status in one place each.

Every error carries a message meant for an operator: what went wrong and, where it
helps, what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass


class ReconcilerError(Exception):
    """Base of every error the product raises on purpose."""

    http_status = 500
    # The task that raised it, when one ran (set by `actions.result.run`): reconcile's
    # `failed` event names it, so the task's row, output and error can be looked up.
    task_id: int | None = None


@dataclass(frozen=True)
class SpecIssue:
    """One problem found in a spec document: `file:line: kind/name: field: message`."""

    file: str
    line: int
    obj: str
    field: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where, self.obj, self.field, self.message]
        text = ": ".join(p for p in parts if p)
        return f"warning: {text}" if self.warning else text


class SpecError(ReconcilerError):
    """The specs are invalid; `issues` lists every problem found in one run."""

    http_status = 422

    def __init__(self, issues: list[SpecIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class NotFound(ReconcilerError):
    http_status = 404


class BadRequest(ReconcilerError):
    """A request that cannot mean anything (`--in thing/x`): say what is accepted."""

    http_status = 400


class InUse(ReconcilerError):
    """Refused because other objects use this one; names the users."""

    http_status = 403

    def __init__(self, what: str, users: list[str]):
        self.what = what
        self.users = users
        super().__init__(f"{what} is in use by {', '.join(users)}; pass --force to drop it anyway")


class AuthUnavailable(ReconcilerError):
    """The API's token file is missing, unreadable or empty: every mutation is refused
    (never let through) until it holds a token again."""

    http_status = 503


class Refused(ReconcilerError):
    """A guard refused the change (protect flag, removal gate, replay, name taken...)."""

    http_status = 403


class Conflict(ReconcilerError):
    http_status = 409


class LockTimeout(ReconcilerError):
    http_status = 409


class TemporaryError(ReconcilerError):
    """Worth retrying: network trouble, 5xx, timeouts."""

    http_status = 503


class PermanentError(ReconcilerError):
    """Retrying will not help: 404, bad checksum, bad signature, hostile path."""

    http_status = 502


class VerifyError(PermanentError):
    """A signature, size or checksum did not match what the signed metadata says."""


class LimitError(PermanentError):
    """An upstream file or value went past what its signed metadata promised or a configured
    limit allows (spec.limits): the file is refused, never read on."""


class StorageError(ReconcilerError):
    """The disk refused a write: full, read-only, or no permission."""

    http_status = 507


class StateError(ReconcilerError):
    """The state database is unreadable, corrupt or from a newer version."""

    http_status = 500


class PoolDamaged(ReconcilerError):
    """Pool files that something needs are missing or no longer match their SHA-256.

    `files` maps each such file's SHA-256 to its name (a package path), `reasons` to
    what is wrong with it; damaged files have been moved to the pool's quarantine
    already."""

    http_status = 500

    def __init__(self, message: str, files: dict[str, str], reasons: dict[str, str] | None = None):
        self.files = files
        self.reasons = reasons or {}
        super().__init__(message)
