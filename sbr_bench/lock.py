"""One exclusive lock per run folder: `<run>/.lock`, held for the whole run by the process that writes it.

`flock` locks belong to the open file, so the kernel drops the lock when its process ends in any way,
kill -9 included: a lock is never stale, and the pid/host written into the file only tell who holds it.
The file itself stays (removing it would race with a process that has just opened it).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from .errors import UserError

LOCK_FILE = ".lock"


class FolderLock:
    def __init__(self, folder):
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, what: str) -> "FolderLock":
        """Take the lock without waiting; UserError naming the holder when another process has it.
        `what` starts the message (the option that named the folder)."""
        if self.fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held elsewhere (another process, or another open in this one)
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{what}: {self.path.parent} is in use by {holder} (it holds {self.path}); "
                            "wait for that run to end") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # still ours: no other process can have written it meanwhile
        finally:
            os.close(self.fd)  # closing the file releases the flock
            self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None
