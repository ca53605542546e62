"""What each round was computed from, so that a resumed run never mixes results of other inputs.

A round's results (train.json and its checkpoints, eval.json, the scores, selection.json) are a
function of three inputs: the config, the round's pool (``round_K/pool.json``: which videos and
frames are labelled) and, with the files oracle, the answers of every round up to K (the labels
themselves). Before a round's first stage runs, ``round_K/inputs.json`` records them: the config's
result-relevant fields as a flat dict, and a digest of the pool and of each answers file. A run that
resumes the round compares them with its own; a difference stops it with one line that names the
round, the input and the choice (:class:`InputsChangedError`):

* a new ``--workdir``; or
* ``--recompute_from=round_K``: :func:`recompute_from` removes round K's results and moves the
  later rounds into ``superseded-<time>/`` (answers kept), and the run computes them again.

So nothing downstream of a changed input is kept silently: an edited ``config.json`` followed by the
matching override, or an ``answers.json`` edited after its round trained, is refused where before
the old results were kept beside new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time

from flax import traverse_util

from claus_jax import errors
from claus_jax import pool as pool_lib

INPUTS_FILE = "inputs.json"
# Round K's stage results: recompute_from removes them (its pool.json and answers.json stay).
_ROUND_RESULTS = ("train.json", "train_history.json", "checkpoints", "eval.json", "eval.md",
                  "scores", "selection.json", "latents.npy", INPUTS_FILE)
_ROUND = re.compile(r"^round_(\d+)$")
ABSENT = "<absent>"  # How a field one config lacks is shown.
# Fields added to the config after runs were recorded, each with the value under which the code does
# what it did before the field existed: a recorded config (config.json, round_K/inputs.json) that
# lacks the field matches a run that holds this value, so such runs resume after an upgrade.
LATER_FIELDS = {"uncertainty.source": "mc_dropout", "uncertainty.noise_amplitude": 0.05,
                "uncertainty.noise_threshold": 0.2, "uncertainty.noise_min_mass": 0.1,
                "loss.ssl.enabled": False, "loss.ssl.unlabelled_batch_size": 4,
                "loss.ssl.ema_max": 0.99, "loss.ssl.mse_weight": 0.1,
                "loss.ssl.high_pass_weight": 0.1, "loss.ssl.temporal_weight": 0.0,
                "loss.ssl.ramp_fraction": 0.5, "loss.ssl.jitter": 0.4,
                "loss.ssl.grayscale_prob": 0.2, "loss.ssl.blur_prob": 0.5}


class InputsChangedError(errors.UserError, ValueError):
  """A round's recorded inputs differ from this run's."""


def _file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def round_inputs(flat_config: dict, round_dirs: list[str], answers: bool) -> dict:
  """The inputs of the round whose folder is ``round_dirs[-1]`` (``round_dirs``: rounds 0..K): the
  config fields, the pool's digest and, with ``answers``, each answers file's digest."""
  workdir = os.path.dirname(round_dirs[-1])
  record = {"config": flat_config, "pool": _file_digest(os.path.join(round_dirs[-1], "pool.json"))}
  if answers:
    found = {}
    for rd in round_dirs:
      path = os.path.join(rd, "answers.json")
      if os.path.exists(path):
        found[os.path.relpath(path, workdir)] = _file_digest(path)
    record["answers"] = found
  return record


def flat_config(config_dict: dict, neutral) -> dict:
  """The config as ``{'train.steps': 20, ...}``, without the result-neutral fields."""
  flat = traverse_util.flatten_dict(json.loads(json.dumps(config_dict)), sep=".")
  return {k: v for k, v in sorted(flat.items()) if k not in neutral}


def changed_fields(a: dict, b: dict) -> list[str]:
  """The sorted keys of two flat configs whose values differ (a key one lacks counts, unless it is
  one of LATER_FIELDS that the recorded ``a`` lacks and ``b`` holds at its earlier behaviour)."""
  def same(k):
    if k not in a and k in LATER_FIELDS and b.get(k, ABSENT) == LATER_FIELDS[k]:
      return True
    return a.get(k, ABSENT) == b.get(k, ABSENT)
  return sorted(k for k in set(a) | set(b) if not same(k))


def _differences(recorded: dict, current: dict, limit: int = 4) -> list[str]:
  a, b = recorded.get("config", {}), current["config"]
  lines = [f"config {key}: {a.get(key, ABSENT)!r} then, {b.get(key, ABSENT)!r} now"
           for key in changed_fields(a, b)]
  if recorded.get("pool") != current["pool"]:
    lines.append("its pool.json changed")
  old, new = recorded.get("answers", {}), current.get("answers", {})
  for path in sorted(set(old) | set(new)):
    if old.get(path) != new.get(path):
      how = "changed" if path in old and path in new else "appeared" if path in new else "vanished"
      lines.append(f"{path} {how}")
  return lines[:limit] + ([f"{len(lines) - limit} more"] if len(lines) > limit else [])


def check_or_record(path: str, current: dict, round_index: int, write: bool) -> None:
  """Compares ``current`` with the inputs recorded at ``path`` (first run: records them).

  Raises:
    InputsChangedError: they differ; names the round, what changed and the two choices.
  """
  if os.path.exists(path):
    recorded = pool_lib.read_json(path, require=("config", "pool"))
    changed = _differences(recorded, current)
    if changed:
      raise InputsChangedError(
          f"round {round_index} was computed from other inputs ({'; '.join(changed)}); its "
          "results would not match them. Use a new --workdir, or re-run with "
          f"--recompute_from=round_{round_index:03d} to compute round {round_index} and the later "
          "rounds again (their answers are kept aside).")
    return
  if write:
    pool_lib.atomic_write_json(path, current)


def recompute_from(workdir: str, round_index: int, round_dir, log=print) -> None:
  """Removes round ``round_index``'s results and moves every later round aside, so they are
  computed again. Answers files are never deleted: the later rounds' folders move whole into
  ``superseded-<time>/``. ``round_dir(workdir, r)`` is the layout's round folder."""
  rd = round_dir(workdir, round_index)
  if not os.path.exists(os.path.join(rd, "pool.json")):
    raise InputsChangedError(
        f"--recompute_from=round_{round_index:03d}: {rd} holds no pool.json; name a round this "
        "workdir has reached.")
  for name in _ROUND_RESULTS:
    path = os.path.join(rd, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  stamp = time.strftime("%Y%m%d-%H%M%S")
  later = sorted(int(m.group(1)) for m in map(_ROUND.match, os.listdir(workdir))
                 if m and int(m.group(1)) > round_index)
  aside = os.path.join(workdir, f"superseded-{stamp}")
  for r in later:
    os.makedirs(aside, exist_ok=True)
    src = round_dir(workdir, r)
    os.replace(src, os.path.join(aside, os.path.basename(src)))
  log(f"recompute from round {round_index}: its results removed"
      + (f"; rounds {later[0]}-{later[-1]} moved to {aside}" if later else ""))
