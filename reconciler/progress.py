"""Download progress for people at a terminal: files, bytes and rate, with rich.

Only the shells (CLI) create one; the download path sees the `fetch.Progress` protocol.
Non-interactive runs get no display, just the one summary line per mirror.
"""

from __future__ import annotations

import threading

from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn


class RichProgress:
    def __init__(self, label: str):
        self.label = label
        self.lock = threading.Lock()
        self.display = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TextColumn("{task.fields[files]}"), transient=True)
        self.task: TaskID | None = None  # none until a download with files starts
        self.files = self.done = 0

    def start(self, files: int, nbytes: int) -> None:
        if not files:
            return
        self.files = files
        self.display.start()
        self.task = self.display.add_task(self.label, total=nbytes, files=f"0/{files} files")

    def advance(self, nbytes: int) -> None:
        if self.task is not None:
            with self.lock:
                self.display.update(self.task, advance=nbytes)

    def file_done(self) -> None:
        if self.task is not None:
            with self.lock:
                self.done += 1
                self.display.update(self.task, files=f"{self.done}/{self.files} files")

    def close(self) -> None:
        if self.task is not None:
            self.display.stop()


