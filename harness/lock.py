"""A run directory's lock: who is running it (pid, host) and a heartbeat.

``harness.train`` holds the lock while it runs and refreshes the heartbeat from a daemon
thread; ``harness.sweep`` reads it to tell a live run ("running") from a dead one
("incomplete"), so ``delete_incomplete`` never deletes a live run and a relaunch never
starts a second copy of a run that is still going.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

LOCK = "lock"
HEARTBEAT_S = 20.0
STALE_AFTER_S = 120.0  # no heartbeat for this long: the holder is dead (e.g. another host that died)


def read_lock(run_dir: str | os.PathLike) -> dict | None:
    try:
        return json.loads((Path(run_dir) / LOCK).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_alive(info: dict | None, now: float | None = None) -> bool:
    """Whether the lock's holder is still running."""
    if not info:
        return False
    if info.get("host") == socket.gethostname() and not _pid_running(int(info["pid"])):
        return False
    return (now or time.time()) - float(info.get("heartbeat", 0)) < STALE_AFTER_S


def _pid_running(pid: int) -> bool:
    """Whether pid is a live process on this host (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


class RunLock:
    """Context manager: take the lock of ``run_dir`` (fail if a live process holds it), beat, release."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time()}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.path)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._write()

    def __enter__(self) -> "RunLock":
        from harness.errors import UserError

        for _ in range(3):
            try:  # O_EXCL: of two processes starting the same run at once, one wins
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                holder = read_lock(self.path.parent)
                if holder is None and time.time() - self.path.stat().st_mtime < 5:
                    time.sleep(0.5)  # being written right now
                    continue
                if is_alive(holder):
                    raise UserError(f"{self.path.parent} is being run by pid {holder['pid']} on "
                                    f"{holder['host']}; wait for it or stop it first") from None
                self.path.unlink(missing_ok=True)  # a dead holder's lock
        self._write()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=1)
        self.path.unlink(missing_ok=True)
