"""Starting the mount process before its options are known.

`pbkfs mount` spends about as long importing and planning (reading the catalog) as the
mount process spends importing pyfuse3, trio and the file-system core. Started first,
the mount process does its imports while the command plans; the options follow on its
stdin. Only `os` is imported here, so the spawn happens before anything heavy loads.
"""

from __future__ import annotations

import os
import signal
import sys


class Launch:
    """A mount process waiting on its stdin for the options (`pbkfs.mount.frontend -`)."""

    def __init__(self) -> None:
        opts_r, self._opts_w = os.pipe()
        self.ready_r, ready_w = os.pipe()
        os.set_inheritable(ready_w, True)
        args = [sys.executable, "-m", "pbkfs.mount.frontend", "-", str(ready_w)]
        actions = [(os.POSIX_SPAWN_DUP2, opts_r, 0)] + [
            (os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (1, 2)]
        # posix_spawn, not Popen: the mount process outlives this one (its own session).
        try:
            self.pid = os.posix_spawn(sys.executable, args, os.environ,
                                      file_actions=actions, setsid=True)
        finally:
            os.close(opts_r)
            os.close(ready_w)
        self.handed_over = False

    def send(self, options_json: bytes) -> None:
        """Hand the options over; from now on the process is the mount's, never killed here."""
        self.handed_over = True
        try:
            view = memoryview(options_json)
            while view:
                view = view[os.write(self._opts_w, view):]
        finally:
            os.close(self._opts_w)

    def abandon(self) -> None:
        """The command failed before handing anything over: the process has done nothing yet
        (it only imported), so it is killed and reaped."""
        if self.handed_over:
            return
        self.handed_over = True
        os.close(self._opts_w)
        os.close(self.ready_r)
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


_early: Launch | None = None


def start_early(args: list[str]) -> None:
    """Start the mount process first thing when the command line is a background
    `pbkfs mount` (before click and the catalog readers load)."""
    global _early
    if args[:1] == ["mount"] and not {"--foreground", "-h", "--help"} & set(args):
        _early = Launch()


def take_early() -> Launch | None:
    """The process `start_early` started, now the mount command's to hand over or abandon."""
    global _early
    launch, _early = _early, None
    return launch


def abandon_early() -> None:
    """At exit: a process started early that nothing took (a usage error) is stopped."""
    launch = take_early()
    if launch is not None:
        launch.abandon()
