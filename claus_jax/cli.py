"""What every command line shares: flag parsing with one-line errors, and one line per user error.

Every program (``main``, ``score``, ``prepare``, ``pretrain``) runs as
``app.run(cli.guarded(main), flags_parser=cli.parse_flags)``:

* a ``--config`` file that is missing, fails to import (``SyntaxError``), or raises while building
  its config (``NameError``, ``ValueError`` ...) is one line naming the file and the error;
* a ``--config.x.y=value`` override on no field names the full field (``config.train.stepz``) and
  the suggestion, if any;
* an error a user can act on (``errors.user_error_message``: a bad value, a workdir of another
  config, an unwritable folder, a damaged checkpoint ...) is one line;
* each exits with ``EXIT_ERROR`` (2); a bug keeps its traceback (exit 1).

``CLAUS_DEBUG=1`` in the environment shows the traceback of every error instead.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Sequence

from absl import flags

from claus_jax import errors

EXIT_ERROR = 2  # A user error (bad config, bad input, a workdir of another config ...).
DEBUG_ENV = "CLAUS_DEBUG"


def debug() -> bool:
  """``$CLAUS_DEBUG`` is set (and not 0): tracebacks instead of one-line errors."""
  return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def fail(message: str) -> None:
  """Prints ``error: message`` to stderr and exits with ``EXIT_ERROR``."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_ERROR)


def _config_flag_names() -> list[str]:
  """The program's ml_collections config flags (``--config``; the ones with a config file)."""
  return [name for name in flags.FLAGS
          if hasattr(type(flags.FLAGS[name]), "config_filename")] or ["config"]


def _unknown_override(error: BaseException, argv: Sequence[str]) -> str:
  """The one-line message of an override on no field: its full name and the suggestion."""
  text = str(error.args[0] if error.args else error)
  # ml_collections puts the repr of its message in the exception: literal \\' and \\n.
  text = " ".join(text.replace("\\n", " ").replace("\\'", "'").split()).strip("'\"")
  field, _, hint = text.partition(" ")
  field = field.strip("'\"")
  for arg in argv:
    name = arg.lstrip("-").split("=", 1)[0]
    parts = name.split(".")
    if parts[0] in _config_flag_names() and field in parts[1:]:
      full = ".".join(parts[:parts.index(field, 1) + 1])
      return f"{arg.split('=', 1)[0]}: no such field {full!r}. {hint}".strip()
  return f"a --config.* override: no such field {field!r}. {hint}".strip()


def _config_arg(argv: Sequence[str]) -> str:
  """``--config=FILE`` as the user typed it (the flag is not parsed yet when its file fails)."""
  for arg in argv:
    for name in _config_flag_names():
      if arg.startswith(f"--{name}="):
        return arg
  return "--config"


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).strip("'").split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every config-file and override error as one line."""
  if debug():
    return flags.FLAGS(argv)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    # A config file whose get_config raises is reported by ml_collections with its traceback inside
    # the message ('flag --config=...: Error whilst parsing config file: Traceback ...'); its last
    # line is the config's own error.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if "Traceback" not in str(e):
      fail(" ".join(lines))
    flag = lines[0].split()[1].rstrip(":") if lines[0].startswith("flag ") else "--config"
    fail(f"{flag}: {lines[-1]}")
  except (AttributeError, KeyError) as e:  # --config.x.y=... on no field ('stepz' Did you mean ...)
    if any(arg.startswith("--config.") for arg in argv):
      fail(_unknown_override(e, argv))
    fail(f"{_config_arg(argv)}: {type(e).__name__}: {_one_line(e)} (set {DEBUG_ENV}=1 for the "
         "traceback).")
  except SyntaxError as e:  # The config file does not parse.
    where = f"{e.filename}:{e.lineno}" if e.filename else _config_arg(argv)
    fail(f"{where}: SyntaxError: {e.msg}; fix the config file.")
  except Exception as e:  # pylint: disable=broad-except  (a config file raises anything)
    fail(f"{_config_arg(argv)}: {type(e).__name__}: {_one_line(e)} (set {DEBUG_ENV}=1 for the "
         "traceback).")
  for name in _config_flag_names():
    flag = flags.FLAGS[name]
    # 'configs/synthetic.py:smoke' names the file before the colon, as ml_collections reads it.
    path = flag.config_filename.split(":", 1)[0] if flag.present else None
    if path is not None and not os.path.isfile(path):
      fail(f"--{name}: no such file {path!r} (paths are relative to the current folder, e.g. "
           "--config=configs/synthetic.py from the repository root).")
  return rest


def guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """``main`` with every user error (``errors.user_error_message``) as one line, exit 2."""

  @functools.wraps(main)
  def run(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless a user can act on it)
      if debug():
        raise
      message = errors.user_error_message(e)
      if message is None:
        raise
      fail(message)

  return run
