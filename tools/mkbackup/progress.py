"""What a backup run tells its user: INFO lines always, a progress bar on a terminal."""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Reporter:
    """INFO/WARNING lines on stderr plus an optional byte-progress bar.

    `advance` is called from worker threads; rich's Progress is thread-safe,
    and without a terminal the counter is only summed (under a lock).
    """

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.bar_enabled = self.console.is_terminal and not quiet
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._lock = threading.Lock()
        self.done = 0

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"INFO: {message}", markup=False, soft_wrap=True)

    def warning(self, message: str) -> None:
        self.console.print(f"WARNING: {message}", markup=False, soft_wrap=True)

    def start(self, description: str, total: int) -> None:
        """Show a bar for `total` bytes (no-op without a terminal)."""
        self.stop()
        self.done = 0
        if not self.bar_enabled:
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=nbytes)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None

    def __enter__(self) -> Reporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
