"""The active-learning run: ``run(config, workdir)``.

Round layout in ``workdir``::

  config.json            the run's config; a different config is refused
  dataset.json           dataset summary
  round_000/pool.json    labels available for round 0 (the seeded random initial set)
  round_K/requests.json  (files oracle) what people must annotate to start round K
  round_K/predictions.json (files oracle) the selecting model's class and boxes, to correct
  round_K/answers.json   (files oracle) their answers (claus_jax.annotate imports tools' exports)
  round_K/checkpoints/   orbax checkpoints of round K's training
  round_K/train.json     training history (loss curve) once training is done
  round_K/eval.json/.md  evaluation on the test split
  round_K/scores/        MC-dropout scores of the pool, one file per shard of videos
  round_K/selection.json what round K selected (videos, frames, scores, clusters, cost)
  round_{K+1}/pool.json  the pool after the oracle answered round K's selection
  metrics.jsonl, summary.md, *.png   reports, rebuilt from the rounds' files
  tensorboard/           TensorBoard events (claus_jax.events): round_K/ training, rounds/ metrics

The round loop (:func:`active_learning`) calls the stages of ``claus_jax.rounds`` (answer, train,
evaluate, score, select). Each writes its result atomically and is skipped when the result exists
(``rounds.stage``), so re-running the same command after any interruption (even SIGKILL) finishes
with the results of an uninterrupted run. Status lines go through absl logging (``rounds.say``;
stderr under absl.app); stdout carries the final results table.

Multi-process runs (``jax.distributed``; launch/README.md) share one workdir: every process trains on
its rows of each global batch, scores its share of the pool (``Scorer.score_pool``) and computes the
selection from the gathered scores; the selection's hash is checked across processes; process 0
alone writes the JSON, score shards and reports, and the others wait at a barrier before reading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import jax
import ml_collections
from absl import logging as absl_logging

from claus_jax import cli
from claus_jax import clustering
from claus_jax import configlib
from claus_jax import errors
from claus_jax import oracle as oracle_lib
from claus_jax import parallel
from claus_jax import pool as pool_lib
from claus_jax import provenance
from claus_jax import rounds
from claus_jax import runlock

# Fields that do not change results: a resumed run may differ in them.
_RESULT_NEUTRAL = ("quiet", "distributed.coordinator_address", "distributed.num_processes",
                   "distributed.process_id", "pretrain.cache_dir")


# Exit codes of ``python -m claus_jax.main`` (README): 0 the run finished; 3 the files oracle waits
# for round_K/answers.json; 2 an error whose one-line message names the file or field and the fix;
# 1 anything else (a bug, with its traceback).
EXIT_ERROR = cli.EXIT_ERROR
EXIT_AWAITING_ANSWERS = 3


class WorkdirMismatchError(errors.UserError, ValueError):
  """The workdir was made by a different config."""


def check_or_write_config(config: ml_collections.ConfigDict, workdir: str,
                          write: bool = True) -> None:
  """Writes config.json on the first run; later runs must use the same config (but neutral fields).

  ``write=False`` only compares with an existing config.json (a run refuses a different config
  before preparing data, and writes its own only once every check has passed).
  """
  path = os.path.join(workdir, "config.json")
  current = json.loads(json.dumps(configlib.to_dict(config)))  # tuples -> lists, as on disk
  if os.path.exists(path):
    saved = pool_lib.read_json(path, require=("dataset", "seed", "train"))
    a, b = (provenance.flat_config(d, _RESULT_NEUTRAL) for d in (saved, current))
    diff = provenance.changed_fields(a, b)
    if diff:
      lines = "\n".join(f"  {k}: workdir has {a.get(k, provenance.ABSENT)!r}, this run has "
                        f"{b.get(k, provenance.ABSENT)!r}" for k in diff)
      raise WorkdirMismatchError(
          f"{workdir} was made by a different config:\n{lines}\nUse another --workdir, or rerun "
          "with the workdir's config to resume it.")
    return
  if write:
    pool_lib.atomic_write_json(path, current)


RUN_FILE = "run.json"  # Beside config.json: where the run computes (record_environment).


def record_environment(config: ml_collections.ConfigDict, workdir: str, mesh) -> dict:
  """Logs where this invocation computes and writes it into ``workdir/run.json`` (process 0).

  run.json holds this invocation's JAX version, backend, device kind and counts, processes, mesh
  and compute dtype; the different environments of earlier invocations (a run resumed on another
  machine) stay listed under ``earlier``, oldest first. A resume on the same machine leaves it as
  it was.
  """
  env = {**parallel.describe(mesh), "compute_dtype": str(config.model.dtype),
         "data_parallel_training": bool(config.train.data_parallel)}
  rounds.say(f"running on {env['backend']}: {env['devices']} x {env['device_kind']} in "
             f"{env['processes']} process(es), mesh {env['mesh']}, compute dtype "
             f"{env['compute_dtype']}, JAX {env['jax']}")
  if not parallel.is_primary():
    return env
  path = os.path.join(workdir, RUN_FILE)
  earlier = []
  if os.path.exists(path):
    saved = pool_lib.read_json(path, require=("backend", "earlier"))
    earlier = list(saved.pop("earlier"))
    if saved == env:
      return env
    earlier.append(saved)
  pool_lib.atomic_write_json(path, {**env, "earlier": earlier})
  return env


def make_folder(path: str, what: str) -> None:
  """``os.makedirs(path)``; a file in the way is a FileExistsError naming it and the fix."""
  try:
    os.makedirs(path, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    blocker = os.path.abspath(path)  # Its deepest existing part: a file, or makedirs would work.
    while not os.path.exists(blocker):
      blocker = os.path.dirname(blocker)
    raise FileExistsError(f"{what}: {blocker} is a file where a folder is needed; move or delete "
                          f"it, or choose another path than {path}.") from None


def default_workdir(config_arg: str) -> str:
  """runs/<config file stem>[_<variant>] for ``configs/synthetic.py:smoke``-style arguments."""
  path, _, variant = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", f"{name}_{variant}" if variant else name)


def round_settings(config: ml_collections.ConfigDict, encoder_init: str = "") -> rounds.Settings:
  """Each stage's settings, read from the config once for the whole run."""
  from claus_jax import selection as selection_lib
  from claus_jax import train as train_lib
  from claus_jax import uncertainty
  from claus_jax.data import clips as clips_lib

  return rounds.Settings(
      train=train_lib.TrainParams.from_config(config),
      clips=clips_lib.ClipParams.from_config(config),
      clusters=clustering.ClusterParams.from_config(config),
      scores=uncertainty.ScoreParams.from_config(config),
      selection=selection_lib.SelectionParams.from_config(config),
      eval=config.eval, data_parallel=bool(config.train.data_parallel),
      warm_start=bool(config.train.warm_start), encoder_init=encoder_init)


def check_devices(config: ml_collections.ConfigDict, mesh) -> None:
  """Refuses, before any compute, a run whose batches cannot use every process's devices."""
  if jax.process_count() > 1 and not config.train.data_parallel:
    raise ValueError(f"config.train.data_parallel: this run has {jax.process_count()} processes; "
                     "set --config.train.data_parallel=True so that training uses every process's "
                     "devices.")
  if config.train.data_parallel:  # Each device takes an equal share of every batch.
    n = mesh.devices.size
    sizes = [("train.batch_size", int(config.train.batch_size))]
    if config.loss.ssl.enabled:
      sizes.append(("loss.ssl.unlabelled_batch_size", int(config.loss.ssl.unlabelled_batch_size)))
    for field, size in sizes:
      if size % n:
        raise errors.ConfigError(
            f"config.{field}: {size} clips do not split over the {n} devices of "
            f"train.data_parallel; use a multiple of {n}.")


def run_context(config: ml_collections.ConfigDict, workdir: str, dataset, mesh) -> rounds.Context:
  """What every stage of the run in ``workdir`` shares: the data, the model, the mesh."""
  from claus_jax import models

  overlay = oracle_lib.AnnotationOverlay() if config.oracle.kind == "files" else None
  return rounds.Context(workdir=workdir, dataset=dataset, model=models.build_model(config),
                        mesh=mesh, seed=int(config.seed), quiet=bool(config.quiet),
                        overlay=overlay, multi_process=jax.process_count() > 1)


def active_learning(ctx: rounds.Context, settings: rounds.Settings, flat_config: dict) -> dict:
  """The loop of the paper's Section 3: label, train, evaluate, score, select; then the next round.

  Runs (or resumes: every stage loads its result file when it is there) every round; returns the
  final reports' summary. ``flat_config`` is the run's result-bearing fields, which each round's
  inputs record (provenance).
  """
  from claus_jax import reporting
  from claus_jax import selection as selection_lib

  budget = settings.selection.budget
  last_round = selection_lib.num_rounds(budget)
  pool = rounds.answer(ctx, settings, rounds.initial_selection(ctx, budget),
                       rounds.empty_pool(ctx, budget), 0)
  for r in range(last_round + 1):
    rounds.replay_answers(ctx, settings, r)
    rounds.check_inputs(ctx, r, flat_config)
    pct = pool.percentages()
    rounds.say(f"round {r}: {pool.num_labelled_videos} labelled videos "
               f"({pct['videos_pct']:.1f}%), {pool.num_labelled_frames} frames "
               f"({pct['frames_pct']:.2f}%), cost {pool.cost:g}")
    t0 = time.time()
    state = rounds.train(ctx, settings, r, pool)
    t1 = time.time()
    result = rounds.evaluate(ctx, settings, r, state)
    rounds.say(f"round {r} eval ({time.time() - t1:.0f} s; train {t1 - t0:.0f} s): " + ", ".join(
               f"{k}={result[k]:.3f}" for k in reporting.HEADLINE if result.get(k) is not None))
    rounds.on_primary("reports",
                      lambda: reporting.write_reports(ctx.workdir, ctx.dataset, quiet=True))
    if r == last_round:
      break
    t0 = time.time()
    # A strategy that reads no score does not score the pool (selection_lib.SCORE_FREE).
    scores = (None if settings.selection.strategy in selection_lib.SCORE_FREE
              else rounds.score(ctx, settings, r, state))
    t1 = time.time()
    chosen = rounds.select(ctx, settings, r, state, pool, scores)
    rounds.say(f"round {r} selection ({chosen.strategy}; scoring {t1 - t0:.0f} s): "
               f"{chosen.num_new_videos} new videos, {chosen.num_new_frames} frames, "
               f"cost {chosen.cost:g}")
    pool = rounds.answer(ctx, settings, chosen, pool, r + 1, state)
  summary = rounds.on_primary(
      "final reports", lambda: reporting.write_reports(ctx.workdir, ctx.dataset, quiet=False))
  return summary or {}


def enable_compilation_cache(path: str | None = None) -> str:
  """Turns on JAX's persistent compilation cache.

  Rounds, resumed runs and sweeps compile the same programs again and again; with the cache every
  program after the first is loaded in milliseconds. ``CLAUS_JAX_CACHE`` overrides the folder;
  set it to an empty string to turn the cache off.
  """
  path = os.environ.get("CLAUS_JAX_CACHE", path or os.path.join(
      os.path.expanduser("~"), ".cache", "claus_jax", "jax_cache"))
  if path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def quiet_library_logs() -> None:
  """One console: claus_jax's status lines (absl logging, INFO) and the libraries' warnings.

  Orbax and tfds log every checkpoint and file at INFO (through absl), so below WARNING only the
  records of claus_jax's own modules pass. absl.app runs (python -m claus_jax.main, score, ...)
  write them to stderr; elsewhere (a notebook, a script) absl adds a stderr handler on first use.
  """
  from claus_jax import train

  absl_logging.set_verbosity(absl_logging.INFO)
  for name in ("orbax", "tensorflow_datasets", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.WARNING)
  # A failed checkpoint save or restore (a full disk, a damaged folder) reaches the run as one
  # exception, which it reports; meanwhile orbax's threads log it again at ERROR, asyncio logs each
  # unretrieved future, and late reads print 'Event loop is closed': thousands of lines around
  # the one that matters. Orbax's warnings stay.
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)
  # Orbax and tfds log through the absl logger. Under absl.app the root logger is at INFO too, and
  # its one handler (absl's) sees every library's records: it gets the same filter.
  for where in (logging.getLogger("absl"), absl_logging.get_absl_handler()):
    if _console_filter not in where.filters:
      where.addFilter(_console_filter)
  train.drop_closed_event_loop_reports()


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _console_filter(record: logging.LogRecord) -> bool:
  """Keeps claus_jax's records, and other code's warnings and errors but orbax's errors."""
  if f"{os.sep}orbax{os.sep}" in record.pathname:
    return record.levelno == logging.WARNING
  return record.levelno >= logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def run(config: ml_collections.ConfigDict, workdir: str, recompute_from: int | None = None) -> dict:
  """Runs (or resumes) the active-learning experiment described by ``config`` in ``workdir``.

  ``recompute_from=K``: first remove round K's results and set the later rounds aside
  (provenance.recompute_from), so that they are computed again from the current inputs.
  """
  quiet_library_logs()
  enable_compilation_cache()
  configlib.validate(config)
  configlib.check_encoder_init(config)
  workdir = os.path.expanduser(workdir)
  primary = parallel.is_primary()
  if primary:
    make_folder(workdir, "--workdir")
  # One run per workdir: process 0 holds the lock until the run returns or dies (runlock).
  with runlock.hold(workdir) if primary else contextlib.nullcontext():
    return _run_locked(config, workdir, primary, recompute_from)


def _run_locked(config: ml_collections.ConfigDict, workdir: str, primary: bool,
                recompute_from: int | None) -> dict:
  """:func:`run` once the workdir is this run's."""
  from claus_jax import data as data_lib

  if primary:
    check_or_write_config(config, workdir, write=False)  # A different config stops here.
  # Process 0 prepares the tfds store (a first run generates or converts the data); the others
  # wait, then read it.
  dataset = data_lib.get_dataset(config) if primary else None
  parallel.sync("dataset prepared")
  if dataset is None:
    dataset = data_lib.get_dataset(config)
  index = dataset.train_index
  configlib.validate_against_data(config, len(index), int(index.num_frames.sum()),
                                  dataset.num_classes)
  # config.json is written once every check has passed: a bad value never locks the workdir.
  if primary:
    check_or_write_config(config, workdir)
  parallel.sync("config.json")
  if not primary:
    check_or_write_config(config, workdir)  # Reads it: every process must run the same config.
  summary = dataset.summary()
  if primary:
    pool_lib.atomic_write_json(os.path.join(workdir, "dataset.json"), summary)
    _say_dataset_summary(summary)
  encoder_init = ""
  if config.pretrain.enabled:
    from claus_jax import pretrain as pretrain_lib
    settings = pretrain_lib.PretrainSettings.from_config(config)
    if primary:
      encoder_init = pretrain_lib.ensure_pretrained(settings, progress=not config.quiet)
    parallel.sync("encoder pretrained")
    if not primary:
      encoder_init = pretrain_lib.find_pretrained(settings)
    if not encoder_init:  # Process 0 pretrained into a cache this process cannot see.
      raise configlib.ConfigError(
          f"config.pretrain.cache_dir: process {jax.process_index()} finds no pretrained encoder at "
          f"{pretrain_lib.cache_dir(settings)}; point --config.pretrain.cache_dir at a folder every "
          "host shares (like the workdir).")
  if recompute_from is not None:
    rounds.on_primary("recompute", lambda: provenance.recompute_from(
        workdir, recompute_from, rounds.round_dir, log=rounds.say))
  mesh = parallel.make_mesh()
  check_devices(config, mesh)
  record_environment(config, workdir, mesh)
  flat_config = provenance.flat_config(configlib.to_dict(config), _RESULT_NEUTRAL)
  try:
    return active_learning(run_context(config, workdir, dataset, mesh),
                           round_settings(config, encoder_init), flat_config)
  except oracle_lib.AwaitingAnswers:
    return {"awaiting_answers": True}


def _say_dataset_summary(summary: dict) -> None:
  rounds.say(f"dataset {summary['dataset']}: {summary['classes']} classes")
  for split in ("train", "test"):
    s = summary[split]
    rounds.say(f"dataset {split} split: {s['videos']} videos, {s['frames']} frames, "
               f"{s['groups']} groups, videos per class {s['videos_per_class']}")
