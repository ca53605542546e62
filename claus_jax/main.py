"""Entry point: ``python -m claus_jax.main --config=configs/synthetic.py [--workdir=DIR]``.

A thin absl main, as in the Flax examples: it parses the config (with ``--config.x.y=value``
overrides), starts ``jax.distributed`` when the environment or config asks for several processes,
and calls :func:`claus_jax.experiment.run`. Everything else is importable and tested.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/synthetic.py or configs/synthetic.py:smoke.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder for this run (default: runs/<config name>[_<variant>]).")
_QUIET = flags.DEFINE_bool("quiet", False, "Turn off progress bars.")
flags.mark_flags_as_required(["config"])


def fail(message: str) -> None:
  """Prints ``error: message`` (one line) to stderr and exits with ``experiment.EXIT_ERROR``."""
  from claus_jax import experiment

  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(experiment.EXIT_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a missing or failing --config file, or a bad override, is one line."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    # A config file that raises is reported by ml_collections with its traceback inside the
    # message ('flag --config=...: Error whilst parsing config file: Traceback ...'); its last line
    # is the config's own error.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if "Traceback" not in str(e):
      fail(" ".join(lines))
    flag = lines[0].split()[1].rstrip(":") if lines[0].startswith("flag ") else "--config"
    fail(f"{flag}: {lines[-1]}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # --config.x.y=... on no field
    fail(f"a --config.* override: {' '.join(str(e).strip(chr(39)).split())}")
  config_flag = flags.FLAGS["config"]
  # 'configs/synthetic.py:smoke' names the file before the colon, as ml_collections reads it.
  path = config_flag.config_filename.split(":", 1)[0] if config_flag.present else None
  if path is not None and not os.path.isfile(path):
    fail(f"--config: no such file {path!r} (paths are relative to the current folder, e.g. "
         "--config=configs/synthetic.py from the repository root).")
  return rest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from claus_jax import experiment  # Imported here so --help stays fast.
  from claus_jax import parallel

  config = _CONFIG.value
  # Multi-process (TPU pod slice, SLURM, --config.distributed.*): jax.distributed starts before any
  # other JAX call; one process otherwise (launch/README.md).
  parallel.initialize_from_config(config)
  if _QUIET.value:
    with config.unlocked():
      config.quiet = True
  workdir = _WORKDIR.value or experiment.default_workdir(
      config_flags.get_config_filename(flags.FLAGS["config"]))
  try:
    result = experiment.run(config, os.path.expanduser(workdir))
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless a user can act on it)
    message = experiment.user_error_message(e)
    if message is None:
      raise
    fail(message)
  if result.get("awaiting_answers"):
    sys.exit(experiment.EXIT_AWAITING_ANSWERS)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
