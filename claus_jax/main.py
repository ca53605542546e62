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

from claus_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/synthetic.py or configs/synthetic.py:smoke.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder for this run (default: runs/<config name>[_<variant>]).")
_QUIET = flags.DEFINE_bool("quiet", False, "Turn off progress bars.")
_RECOMPUTE = flags.DEFINE_string(
    "recompute_from", None, "round_K (or K): remove round K's results and move the later rounds "
    "into WORKDIR/superseded-<time>/, then compute them again (after a changed input).")
flags.mark_flags_as_required(["config"])


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
  recompute = None
  if _RECOMPUTE.value is not None:
    text = _RECOMPUTE.value.strip().removeprefix("round_")
    if not text.isdigit():
      cli.fail(f"--recompute_from={_RECOMPUTE.value!r}: name a round, e.g. round_001 or 1.")
    recompute = int(text)
  result = experiment.run(config, os.path.expanduser(workdir), recompute_from=recompute)
  if result.get("awaiting_answers"):
    sys.exit(experiment.EXIT_AWAITING_ANSWERS)


if __name__ == "__main__":
  app.run(cli.guarded(main), flags_parser=cli.parse_flags)
