"""The drop guards every kind shares, so a refusal reads the same whatever is dropped."""

from __future__ import annotations

from reconciler.errors import InUse, Refused


def check_drop(what: str, *, protect: bool, users: list[str], force: bool) -> None:
    """Refuse to drop `what` if it is protected (even forced) or in use (unless forced).

    Call it inside the task's lock and transaction, with `users` loaded there.
    """
    if protect:
        raise Refused(f"{what} is protected (metadata.protect: true); declare it with protect: false and apply, then drop it")
    if users and not force:
        raise InUse(what, users)
