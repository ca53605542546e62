"""The errors a user can act on, and how a command words them: the leaf every module may import.

It imports nothing of this package. A module raises a subclass of :class:`UserError` when the
person running it can fix the cause (a bad config value, a damaged state file, a workdir of another
config, a missing dataset file ...), and its message names the field or file and what to do. The
command lines (:mod:`claus_jax.cli`) print such an error as one line and exit 2; any other error is a
bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator


class UserError(Exception):
  """An error the user can act on; the message names the field or file and what to do."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the field and what to do."""


class DiskFullError(UserError, OSError):
  """A write failed because the disk is full (ENOSPC); the message names the path."""

  def __init__(self, path: str):
    super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

  def __str__(self):
    return (f"{self.filename}: no space left on device (ENOSPC); free space on that disk and re-run "
            "the same command (finished stages and checkpoints are kept).")


def check_choice(field: str, value, allowed, hint: str = "") -> None:
  """Raises :class:`ConfigError` naming ``field`` unless ``value`` is one of ``allowed``."""
  if value not in tuple(allowed):
    raise ConfigError(" ".join(filter(None, (
        f"config.{field}: {value!r} is not allowed; use one of {tuple(allowed)}.", hint))))


def _range_text(interval: str) -> str:
  """'[1, inf)' -> '>= 1', '(0, inf)' -> '> 0', '[0, 1)' -> 'in [0, 1)'."""
  low, high = interval[1:-1].split(", ")
  if high == "inf":
    return (">= " if interval[0] == "[" else "> ") + low
  return "in " + interval


def _in_range(value, interval: str) -> bool:
  low, high = (float(x) for x in interval[1:-1].split(", "))
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  above = value >= low if interval[0] == "[" else value > low
  below = value <= high if interval[-1] == "]" else value < high
  return above and below  # False for NaN.


def check_range(field: str, value, interval: str, hint: str = "") -> None:
  """Raises :class:`ConfigError` naming ``field`` unless ``value`` (each item of a tuple or list)
  is a number in ``interval``, written as ``'[1, inf)'``, ``'(0, 1)'``, ``'[0, 1]'`` ..."""
  for v in (value if isinstance(value, (tuple, list)) else (value,)):
    if not _in_range(v, interval):
      raise ConfigError(" ".join(filter(None, (
          f"config.{field}: {v!r} must be {_range_text(interval)}.", hint))))


def error_chain(error: BaseException | None) -> Iterator[BaseException]:
  """``error``, then each error it was raised from or while handling, down to the first one (the
  storage layer's own, under orbax's and tensorstore's wraps)."""
  for _ in range(64):  # A bound: a chain is never this deep, and a cyclic one must not hang.
    if error is None:
      return
    yield error
    error = error.__cause__ or error.__context__


def root_cause(error: BaseException) -> str:
  """``'Type: first line'`` of the deepest error in ``error``'s chain (200 characters at most)."""
  root = list(error_chain(error))[-1]
  return f"{type(root).__name__}: {(str(root).strip().splitlines() or [''])[0][:200]}"


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error`` or an error it comes from is ENOSPC (also as tensorstore words it)."""
  return any((isinstance(seen, OSError) and seen.errno == errno.ENOSPC)
             or "No space left on device" in str(seen) for seen in error_chain(error))


def user_error_message(error: BaseException) -> str | None:
  """The one-line message for an error a user can act on; None for a bug (keep the traceback)."""
  if isinstance(error, UserError):
    return str(error)
  chain = list(error_chain(error))  # However deep a library wrapped it.
  if is_disk_full(error):
    named = next((e.filename for e in chain if getattr(e, "filename", None)), "the workdir")
    return str(DiskFullError(named))
  denied = next((e for e in chain if isinstance(e, PermissionError)), None)
  if denied is not None:
    where = denied.filename or "a file"
    return (f"{where}: permission denied. Choose a folder this user can write (--workdir, "
            "config.data.tfds_dir, config.pretrain.cache_dir) or fix its permissions, and re-run "
            "the same command.")
  if isinstance(error, (FileExistsError, NotADirectoryError)):
    if error.filename:
      return (f"{error.filename} is a file where a folder is needed; move or delete it and re-run "
              "the same command.")
    return str(error)
  return None
