"""A run directory's lock: who is running it (pid, host) and a heartbeat.

``harness.train`` holds the lock while it runs and refreshes the heartbeat from a daemon
thread; ``harness.sweep`` reads it to tell a live run ("running") from a dead one
("incomplete"), so ``delete_incomplete`` never deletes a live run and a relaunch never
starts a second copy of a run that is still going.

Acquisition is atomic: the holder keeps an exclusive ``flock`` on the ``lock`` file for as
long as it runs, so of any number of processes racing for a run (or taking over a dead
holder's lock) exactly one wins. On the holder's own host a live pid means a live run
whatever its heartbeat says (a SIGSTOPped run, a suspended Slurm job, a laptop asleep); the
heartbeat only decides for holders on other hosts, whose pids cannot be checked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

LOCK = "lock"
HEARTBEAT_S = 20.0
STALE_AFTER_S = 120.0  # no heartbeat for this long: a holder on another host is dead
_SIZE = 512  # the lock's JSON is padded to this size and rewritten in place: readers never see it empty


def read_lock(run_dir: str | os.PathLike) -> dict | None:
    """The holder's info (pid, host, heartbeat), or None when there is no lock or it is unreadable."""
    try:
        info = json.loads((Path(run_dir) / LOCK).read_bytes().decode())
    except (OSError, ValueError):  # missing, unreadable, non-UTF-8 or malformed JSON
        return None
    if not isinstance(info, dict):
        return None
    try:
        info["pid"], info["host"] = int(info["pid"]), str(info["host"])
        info["heartbeat"] = float(info.get("heartbeat", 0))
    except (KeyError, TypeError, ValueError):
        return None
    return info


def is_alive(info: dict | None, now: float | None = None) -> bool:
    """Whether the lock's holder is still running: on this host its pid decides, elsewhere its heartbeat."""
    if not info:
        return False
    try:
        pid, host, heartbeat = int(info["pid"]), info.get("host"), float(info.get("heartbeat", 0))
    except (KeyError, TypeError, ValueError):
        return False
    if host == socket.gethostname():
        return _pid_running(pid) and info.get("start") in (None, _start_time(pid))
    return (now or time.time()) - heartbeat < STALE_AFTER_S


def is_held(run_dir: str | os.PathLike) -> bool:
    """Whether a live process holds the lock of ``run_dir`` (what ``harness.sweep`` calls "running")."""
    path = Path(run_dir) / LOCK
    if not path.exists():
        return False
    if is_alive(read_lock(run_dir)):
        return True
    try:  # a holder mid-write, or one whose lock file is malformed: its flock still tells
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _pid_running(pid: int) -> bool:
    """Whether pid is a live process on this host (a zombie, killed but not yet reaped, is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused pid from the holder)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class RunLock:
    """Context manager: take the lock of ``run_dir`` (fail if a live process holds it), beat, release."""

    def __init__(self, run_dir: str | os.PathLike, wait_s: float = 2.0):
        self.path = Path(run_dir) / LOCK
        self.wait_s = wait_s
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(),
                "start": _start_time(os.getpid())}
        data = json.dumps(info).ljust(_SIZE).encode()
        if os.pwrite(self._fd, data, 0) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        os.fsync(self._fd)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError:  # a full disk for a moment: the next beat retries
                pass

    def _busy(self, holder: dict | None):
        from harness.errors import UserError

        who = f"pid {holder['pid']} on {holder['host']}" if holder else "another process"
        return UserError(f"{self.path.parent} is being run by {who}; wait for it or stop it first")

    def _try_once(self) -> bool:
        """One attempt: True when this process now holds the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never lock a link's target
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            st = os.fstat(fd)
            if not self.path.exists() or os.stat(self.path).st_ino != st.st_ino:
                os.close(fd)  # the previous holder unlinked it after we opened it: try the new file
                return False
        except OSError:
            os.close(fd)
            return False
        holder = read_lock(self.path.parent)
        if holder and holder["pid"] != os.getpid() and is_alive(holder):
            # its host's pid is alive (a holder that lost its flock, e.g. on a filesystem without
            # flock across hosts) or its heartbeat is fresh: never run a job twice
            os.close(fd)
            raise self._busy(holder)
        self._fd = fd
        return True

    def __enter__(self) -> "RunLock":
        deadline = time.time() + self.wait_s
        while not self._try_once():
            holder = read_lock(self.path.parent)
            if (holder and is_alive(holder)) or time.time() > deadline:
                raise self._busy(holder if holder and is_alive(holder) else None)
            time.sleep(0.05)  # a status probe or a holder releasing right now
        try:
            self._write()
            os.ftruncate(self._fd, _SIZE)  # a longer malformed lock we took over leaves no tail behind
        except BaseException:
            self._release()
            raise
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding the flock: nobody takes a lock we unlink
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=1)
        self._release()
