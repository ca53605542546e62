"""One run per workdir: an advisory lock that process 0 holds for the whole run.

A second run on the same workdir (a scheduler restarting a job whose first copy still runs, say)
stops at once with :class:`WorkdirBusyError`, one line naming the holder's PID, host and start time.
The lock is ``flock`` on ``<workdir>/run.lock`` (held by the open file, so another open and close
of the same file in the process does not drop it, as it would a POSIX record lock; Linux maps it
onto NFS locks): the kernel drops it when its process dies, however it dies, so a lock left by a
dead run is simply taken over by the next one, never waited on. The file's content only says who
holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from typing import Iterator

from absl import logging

from claus_jax import errors

LOCK_FILE = "run.lock"


class WorkdirBusyError(errors.UserError, RuntimeError):
  """Another live run holds the workdir's lock."""


def _holder(fd: int) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    return json.loads(os.read(fd, 4096).decode() or "{}")
  except (OSError, ValueError):
    return {}


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds ``workdir``'s run lock until the block exits.

  Raises:
    WorkdirBusyError: another live process holds it.
  """
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
        who = _holder(fd)
        since = who.get("started", "")
        raise WorkdirBusyError(
            f"{workdir} is in use by another run (pid {who.get('pid', '?')} on host "
            f"{who.get('host', '?')}{', since ' + since if since else ''}); wait for it to "
            "finish or stop it, or pass another --workdir.") from None
      # A file system without locks: run, but say that nothing guards the workdir.
      logging.warning("%s: cannot lock (%s); nothing stops a second run on this workdir.", path, e)
      yield
      return
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
    os.fsync(fd)
    yield
  finally:
    os.close(fd)  # Closing the file releases the lock.
