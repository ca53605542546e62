"""A round of the files oracle through an annotation tool: ``export`` the requests, ``import`` the
tool's export as the round's ``answers.json``.

  # The run stopped with exit code 3, awaiting round K's answers:
  python -m claus_jax.annotate export --config=configs/jhmdb.py --workdir=runs/jhmdb
  #   -> runs/jhmdb/round_K/label_studio/{label_config.xml, tasks.json, README.txt}
  python -m claus_jax.annotate import --config=configs/jhmdb.py --workdir=runs/jhmdb \\
      --tool=label_studio --file=project-1-at-....json
  python -m claus_jax.annotate import --config=configs/jhmdb.py --workdir=runs/jhmdb \\
      --tool=cvat --file=task_a.xml --file=task_b.xml
  # Then the same main command as before continues the run.

``--config`` (with the run's overrides) must be the run's: the workdir's config.json is checked. The
round is the latest that has requests and no answers, unless ``--round`` names one. Frame files and
coordinates are those of the original videos under ``config.data.root``
(:mod:`claus_jax.annotation`); the synthetic benchmark's frames are written as PNG files into the
export folder. Nothing is written when an import has problems: the message names each one.
The commands themselves are :func:`claus_jax.annotation.commands.run`.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from claus_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file (and overrides).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.")
_ROUND = flags.DEFINE_integer("round", -1, "Round K (round_K/requests.json); -1 = the latest "
                              "round with requests and no answers.")
_TOOL = flags.DEFINE_enum("tool", "label_studio", ["label_studio", "cvat"],
                          "The annotation tool (export: label_studio only).")
_OUT = flags.DEFINE_string("out", None, "export: output folder (default round_K/label_studio).")
_DOCUMENT_ROOT = flags.DEFINE_string(
    "document_root", None, "export: the folder Label Studio serves the frames from "
    "(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); default: config.data.root, or the output folder for "
    "the synthetic benchmark.")
_FILE = flags.DEFINE_multi_string("file", [], "import: the tool's export file(s).")
_VIDEO_ID = flags.DEFINE_multi_string("video_id", [], "import --tool=cvat: the video of each "
                                      "--file, in order (default: each CVAT task's name).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) != 2 or argv[1] not in ("export", "import"):
    raise app.UsageError(f"Name one command: export or import (got {argv[1:]}).")
  from claus_jax.annotation import commands
  from claus_jax.annotation import geometry

  try:
    result = commands.run(argv[1], _CONFIG.value, os.path.expanduser(_WORKDIR.value),
                          _ROUND.value, _TOOL.value, _FILE.value, _VIDEO_ID.value, _OUT.value,
                          _DOCUMENT_ROOT.value)
  except geometry.AnnotationError as e:
    cli.fail(str(e))
  if argv[1] == "export":
    print(f"round {result['round']}: {result['tasks']} Label Studio tasks in {result['out']} "
          f"(frames served from {result['document_root']}; "
          f"{'with' if result['predictions'] else 'no'} model pre-annotations); see its README.txt.")
  else:
    print(f"round {result['round']}: {result['videos']} videos, {result['frames']} frames answered "
          f"in {result['answers']}; re-run the main command to continue.")


if __name__ == "__main__":
  app.run(cli.guarded(main), flags_parser=cli.parse_flags)
