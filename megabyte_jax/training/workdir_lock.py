"""One trainer per work directory: an exclusive lock file, `DIR/train.lock`.

The lock is an `fcntl.flock` on `DIR/train.lock`, which holds the owner's pid, host and start
time as JSON. The kernel drops a `flock` when its process dies (even by `kill -9`), so a
lock is held exactly while its trainer runs. A file left behind by a dead trainer on this
host (the pid is gone) is taken over with a message; one naming a live process, or another
host (whose processes cannot be checked from here), is refused with a one-line
`WorkdirLocked` naming the owner. Multi-host runs lock from process 0 only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from typing import Any, Callable, Optional

from megabyte_jax.errors import WorkdirLocked

LOCK_FILE = "train.lock"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by someone else
    return True
  return True


def _read_owner(fd: int) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace")
    owner = json.loads(text) if text.strip() else {}
    return owner if isinstance(owner, dict) else {}
  except (OSError, ValueError):
    return {}


def _describe(owner: dict) -> str:
  since = owner.get("started")
  when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(
      since, (int, float)) else ""
  return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}{when}"


class WorkdirLock:
  """Holds `DIR/train.lock` from `acquire()` to `release()` (also a context manager)."""

  def __init__(self, workdir: str, enabled: bool = True,
               say: Optional[Callable[[str], Any]] = None):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.enabled = enabled
    self._fd: Optional[int] = None
    self._say = say or (lambda m: print(m, file=sys.stderr, flush=True))

  def acquire(self) -> "WorkdirLock":
    """Takes the lock.

    Raises:
      WorkdirLocked: another trainer holds it (naming its pid and host), or a lock left by
        another host cannot be checked; also when the lock file cannot be written.
    """
    if not self.enabled or self._fd is not None:
      return self
    host, pid = socket.gethostname(), os.getpid()
    for _ in range(10):   # retry when a releasing owner unlinked the file under us
      try:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise WorkdirLocked(f"cannot create the lock {self.path}: {e.strerror or e}") from e
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        owner = _read_owner(fd)
        os.close(fd)
        raise WorkdirLocked(
            f"{os.path.dirname(self.path)} is in use by another trainer ({_describe(owner)}); "
            f"wait for it to finish, or stop it, before training here") from None
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except OSError:
        same = False
      if not same:
        os.close(fd)
        continue
      owner = _read_owner(fd)
      if owner and owner.get("pid") != pid:
        other_pid, other_host = owner.get("pid"), owner.get("host")
        if other_host != host:
          os.close(fd)
          raise WorkdirLocked(
              f"{self.path} was left by {_describe(owner)}, another host, whose processes "
              f"cannot be checked from here; if that run is over, delete the file")
        if isinstance(other_pid, int) and _alive(other_pid):
          os.close(fd)
          raise WorkdirLocked(
              f"{self.path} names a live process ({_describe(owner)}) that does not hold the "
              f"lock; if it is not a trainer, delete the file")
        self._say(f"taking over the stale lock {self.path} of {_describe(owner)} (no such "
                  f"process)")
      try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": pid, "host": host,
                                 "started": time.time()}).encode() + b"\n")
        os.fsync(fd)
      except OSError as e:
        os.close(fd)
        raise WorkdirLocked(f"cannot write the lock {self.path}: {e.strerror or e}") from e
      self._fd = fd
      return self
    raise WorkdirLocked(f"cannot take the lock {self.path}: it keeps changing")

  def release(self) -> None:
    """Removes the lock file and drops the lock (nothing when not held)."""
    if self._fd is None:
      return
    try:
      os.unlink(self.path)
    except OSError:
      pass
    os.close(self._fd)   # closing drops the flock
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
