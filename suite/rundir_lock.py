"""One writer per run directory: an exclusive lock held while a run (or rank 0 of a sharded run) writes.

The lock is ``RUN/.lock``: an ``flock`` on the open file (the kernel drops it when the holder
dies, however it dies) plus the holder's pid, host and command line in the file, for the message
a second writer gets. A lock file left by a dead holder (flock free, contents still there) is
stale: the next run takes it over and says whose it was.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from suite.errors import InputError

LOCK_FILE = ".lock"


class LockError(InputError):
    """The run directory is held by another writer, or cannot be locked at all."""


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on host {info['host']} (since {since})"
    except (ValueError, KeyError, TypeError):
        return "an unknown holder"


class RunDirLock:
    """``with RunDirLock(path) as lock:`` or ``acquire()``/``release()``; ``stale`` names a dead holder taken over."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self.stale: str | None = None
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        for _ in range(10):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise LockError(f"--out {self.path.parent}: cannot create the run directory or its lock "
                                f"({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                os.close(fd)
                raise LockError(f"{self.path.parent} is in use by another run: {holder}; wait for it to finish, "
                                "or use another --out") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break  # the file we locked is still the lock file (a releasing holder removes it)
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise LockError(f"{self.path}: the lock file keeps changing under this run; is another run starting here?")
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if previous:
            self.stale = _holder(previous)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "argv": sys.argv})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            self.path.unlink(missing_ok=True)  # before the flock is dropped; a waiting opener then retries
        except OSError:
            pass
        finally:
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
