r"""Prepares J-HMDB-21 or UCF-101-24 into tfds (array_record) once, and reports what was written.

  python -m claus_jax.prepare --config=configs/jhmdb.py --config.data.root=/data/jhmdb
  python -m claus_jax.prepare --config=configs/ucf101_24.py --config.data.root=/data/ucf24

The root defaults to $CLAUS_DATA_DIR; the output goes to config.data.tfds_dir (else $CLAUS_TFDS_DIR,
else ~/.cache/claus_jax/tfds). Running it again with the same settings only prints the report.
Useful overrides: --config.data.split=2 (J-HMDB), --config.data.on_bad_video=skip,
--config.data.truncate_to_shorter=True, --config.data.frame_size=112.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags
import tensorflow_datasets as tfds

from claus_jax import cli
from claus_jax import configlib
from claus_jax.data import jhmdb, official, tfds_store, ucf24

READERS = {"jhmdb": jhmdb, "ucf101_24": ucf24}


def run(config) -> dict:
  """Prepares the config's dataset if needed; returns what a person checks (JSON-able dict).

  Keys: dataset, root, tfds_dir (the prepared version's folder), generated (False if it was already
  prepared), summary (:meth:`VideoDataset.summary`), skipped and warnings (``[split, video, why]``).
  """
  if config.dataset not in READERS:
    raise official.DatasetError(f"config.dataset={config.dataset!r}: prepare handles {sorted(READERS)}; "
                                "the synthetic dataset is generated on first use.")
  configlib.validate(config)
  module = READERS[config.dataset]
  builder = module.make_builder(config.data, config.quiet)
  root = official.resolve_root(config.data.root)
  generated = official.prepare(builder, root, quiet=config.quiet)
  dataset = tfds_store.load_or_prepare(builder, module.NAME, quiet=config.quiet)
  report = official.stored_report(builder)
  return {"dataset": config.dataset, "root": root, "tfds_dir": str(builder.data_dir),
          "generated": generated, "summary": dataset.summary(), **report.to_dict()}


def format_report(result: dict) -> str:
  """A few readable lines: where, counts per split, then every skipped video and warning."""
  s = result["summary"]
  lines = [f"{result['dataset']}: {'prepared' if result['generated'] else 'already prepared'} at "
           f"{result['tfds_dir']} (from {result['root']})"]
  for split in ("train", "test"):
    lines.append(f"  {split}: {s[split]['videos']} videos, {s[split]['frames']} frames, "
                 f"{s[split]['groups']} groups; videos per class {s[split]['videos_per_class']}")
  lines.append(f"  skipped videos: {len(result['skipped'])}")
  lines += [f"    [{split}] {video}: {why}" for split, video, why in result["skipped"]]
  if result["skipped"]:
    lines.append("    (fix them and run this command again: a change under the root prepares the "
                 "dataset again, with them)")
  if result["warnings"]:
    lines.append(f"  warnings: {len(result['warnings'])}")
    lines += [f"    [{split}] {video}: {what}" for split, video, what in result["warnings"]]
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError("pass --config=configs/jhmdb.py or --config=configs/ucf101_24.py")
  tfds.disable_progress_bar()  # Our bar counts videos; tfds' would count the same examples again.
  result = run(config)
  print(format_report(result))
  print(json.dumps({k: result[k] for k in ("dataset", "generated", "tfds_dir")}))


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing run() defines none.
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/jhmdb.py.",
                                  lock_config=True)
  app.run(cli.guarded(main), flags_parser=cli.parse_flags)
