"""`--log-format json` for `serve` and `watch`: one JSON object per line, for a cluster's
log collector; the default stays plain text for a terminal.

Each line has time (UTC, ISO 8601), level, logger and message. A message about one
object ("mirror/up: created ...", "FAILED snapshot/s: ...") also gets kind, name and op
(the word after the colon: created, dropped, failed, ...); a record's extras `kind`,
`op`, `task` (a task id) and `seconds` are copied as they are (`name` is the logger's
own attribute, so an object's name comes from the message only), and a message ending
in "(1.2s)" gives seconds when no extra did.

`task` needs no caller to pass it: `TaskFilter` adds the id of the task running in the
emitting thread (`tasks.current`), and of the task that a change's report line is about.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

from reconciler import tasks

_OBJECT = re.compile(r"^(FAILED )?(mirror|snapshot|publish)/([^:\s]+):?\s*([A-Za-z-]+)?")
_SECONDS = re.compile(r"\((\d+(?:\.\d+)?)s\)$")
EXTRAS = ("kind", "op", "task", "seconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                     "level": record.levelname.lower(), "logger": record.name, "message": message}
        found = _OBJECT.match(message)
        if found:
            out["kind"], out["name"] = found.group(2), found.group(3)
            out["op"] = "failed" if found.group(1) else (found.group(4) or "").lower() or None
        seconds = _SECONDS.search(message)
        if seconds:
            out["seconds"] = float(seconds.group(1))
        out.update({f: getattr(record, f) for f in EXTRAS if getattr(record, f, None) is not None})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TaskFilter(logging.Filter):
    """Gives a record made while a task runs (or reporting one that just ran, see
    `tasks.scope`) the task's id as `task`, unless it carries one already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task", None) is None:
            record.task = tasks.current()
        return True


def setup(fmt: str) -> None:
    """Log INFO and above to stderr as `fmt` ("text" or "json"); a later basicConfig is a no-op."""
    handler = logging.StreamHandler()
    handler.addFilter(TaskFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
