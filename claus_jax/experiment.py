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

Every stage (:func:`stage`: the pool, training, evaluation, each score shard, the selection) writes
its result atomically and is skipped when the result exists, so re-running the same command after
any interruption (even SIGKILL) finishes with the results of an uninterrupted run. Status lines go
through absl logging (:func:`say`; stderr under absl.app); stdout carries the final results table.

Multi-process runs (``jax.distributed``; launch/README.md) share one workdir: every process trains on
its rows of each global batch, scores its share of the pool (``Scorer.score_pool``) and computes the
selection from the gathered scores; the selection's hash is checked across processes; process 0
alone writes the JSON, score shards and reports, and the others wait at a barrier before reading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import jax
import ml_collections
import numpy as np
from absl import logging as absl_logging
from tqdm import auto as tqdm

from claus_jax import cli
from claus_jax import clustering
from claus_jax import configlib
from claus_jax import errors
from claus_jax import events
from claus_jax import oracle as oracle_lib
from claus_jax import parallel
from claus_jax import pool as pool_lib
from claus_jax import provenance
from claus_jax import runlock
from claus_jax import score_files
from claus_jax.data import record as record_lib

# Fields that do not change results: a resumed run may differ in them.
_RESULT_NEUTRAL = ("quiet", "distributed.coordinator_address", "distributed.num_processes",
                   "distributed.process_id", "pretrain.cache_dir")
# Videos per scoring shard file (the unit of resume inside the scoring stage).
SCORE_SHARD = 16
# Stream ids folded into the root key, one per use.
_INIT_STREAM, _TRAIN_STREAM = 0, 1  # Root-key streams; scoring's is uncertainty.SCORE_STREAM.


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
  say(f"running on {env['backend']}: {env['devices']} x {env['device_kind']} in "
      f"{env['processes']} process(es), mesh {env['mesh']}, compute dtype {env['compute_dtype']}, "
      f"JAX {env['jax']}")
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


def round_dir(workdir: str, round_index: int) -> str:
  return os.path.join(workdir, f"round_{round_index:03d}")


class _OverlaySource:
  """A train split seen through the files oracle's annotation overlay (lazy, random access)."""

  def __init__(self, source, overlay: oracle_lib.AnnotationOverlay | None):
    self.source, self.overlay = source, overlay

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    record = self.source[i]
    return record if self.overlay is None else self.overlay.apply(record)


# ------------------------------------------------------------------------------------- stages
# ``load`` returns it when a stage's file is there but its result is not (the stage computes again).
INCOMPLETE = object()

T = TypeVar("T")
R = TypeVar("R")


def say(message: str) -> None:
  """A status line for the console (absl logging, INFO), from process 0 only."""
  if parallel.is_primary():
    absl_logging.info(message)


def on_primary(what: str, write: Callable[[], T]) -> T | None:
  """Process 0 runs ``write()`` (an atomic file write); then every process passes a barrier.

  Returns what ``write()`` returned on process 0, None on the others.
  """
  result = write() if parallel.is_primary() else None
  parallel.sync(what)
  return result


def stage(what: str, path: str, compute: Callable[[], tuple[T, R]], load: Callable[[str], T],
          save: Callable[[str, R], None]) -> T:
  """One resumable stage of a run: load its result file, or compute the result and write it.

  Process 0 decides for every process whether ``path`` exists (``parallel.exists_on_primary``), so
  that all processes take the same branch and meet the same collectives. Then either every process
  loads the result, or every process computes it (``compute`` may hold collectives: scoring,
  hash checks), process 0 alone writes it, and every process waits at a barrier until it is written.

  Args:
    what: what the stage makes (the barrier's name).
    path: the result file; once it exists the stage is done.
    compute: ``() -> (result, record)``: the stage's result, and what ``save`` writes.
    load: ``path -> result``, or :data:`INCOMPLETE` when the file is there but the result is not
      (training whose final checkpoint is gone): the stage then computes again.
    save: ``(path, record) -> None``, on process 0 only. It writes ``path`` atomically (temporary
      file, fsync, rename: ``pool.atomic_write*``), after any other file of the stage, so that a
      crash leaves ``path`` either absent or whole.

  Returns:
    The result (on every process).
  """
  if parallel.exists_on_primary(path):
    result = load(path)
    if result is not INCOMPLETE:
      return result
  result, record = compute()
  on_primary(what, lambda: save(path, record))
  return result


class Experiment:
  """One active-learning run; :meth:`run` executes (or resumes) every round."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, dataset,
               encoder_init: str = "", mesh=None):
    from claus_jax import models
    from claus_jax import selection as selection_lib
    from claus_jax import train as train_lib
    from claus_jax import uncertainty
    from claus_jax.data import clips as clips_lib

    self.config = config
    # config.selection and config.budget, read once for the whole run.
    self.selection_params = selection_lib.SelectionParams.from_config(config)
    self.train_params = train_lib.TrainParams.from_config(config)
    self.score_params = uncertainty.ScoreParams.from_config(config)
    self.clip_params = clips_lib.ClipParams.from_config(config)
    self.cluster_params = clustering.ClusterParams.from_config(config)
    self.encoder_init = encoder_init  # Pretrained encoder every round starts from ('' = none).
    self.workdir = workdir
    self.dataset = dataset
    self.index = dataset.train_index
    self.num_frames = dict(zip(self.index.video_ids, self.index.num_frames.tolist()))
    self.position = {v: i for i, v in enumerate(self.index.video_ids)}
    self.model = models.build_model(config)
    self.mesh = parallel.make_mesh() if mesh is None else mesh
    self.multi = jax.process_count() > 1
    if self.multi and not config.train.data_parallel:
      raise ValueError(f"config.train.data_parallel: this run has {jax.process_count()} processes; "
                       "set --config.train.data_parallel=True so that training uses every process's "
                       "devices.")
    if config.train.data_parallel:  # Each device takes an equal share of every batch.
      n = self.mesh.devices.size
      sizes = [("train.batch_size", int(config.train.batch_size))]
      if self.train_params.ssl.enabled:
        sizes.append(("loss.ssl.unlabelled_batch_size", self.train_params.ssl.unlabelled_batch_size))
      for field, size in sizes:
        if size % n:
          raise errors.ConfigError(
              f"config.{field}: {size} clips do not split over the {n} devices of "
              f"train.data_parallel; use a multiple of {n}.")
    self.root_key = jax.random.PRNGKey(config.seed)
    self.quiet = bool(config.quiet)
    self.overlay = None
    if config.oracle.kind == "files":
      self.overlay = oracle_lib.AnnotationOverlay()
    self.train_source = _OverlaySource(dataset.train, self.overlay)
    self.flat_config = provenance.flat_config(configlib.to_dict(config), _RESULT_NEUTRAL)

  # ------------------------------------------------------------------------------------- run
  def run(self) -> dict:
    """Runs (or resumes) every round; returns the final reports' summary."""
    from claus_jax import reporting
    from claus_jax import selection as selection_lib

    last_round = selection_lib.num_rounds(self.selection_params.budget)
    self._answer(self.initial_selection(), self._empty_pool(), 0)
    for r in range(last_round + 1):
      self._replay_answers(r)
      self._check_inputs(r)
      pool = self._load_pool(r)
      pct = pool.percentages()
      say(f"round {r}: {pool.num_labelled_videos} labelled videos ({pct['videos_pct']:.1f}%), "
          f"{pool.num_labelled_frames} frames ({pct['frames_pct']:.2f}%), cost {pool.cost:g}")
      t0 = time.time()
      state = self._train(r, pool)
      t1 = time.time()
      result = self._evaluate(r, state)
      say(f"round {r} eval ({time.time() - t1:.0f} s; train {t1 - t0:.0f} s): " + ", ".join(
          f"{k}={result[k]:.3f}" for k in reporting.HEADLINE if result.get(k) is not None))
      on_primary("reports", lambda: reporting.write_reports(self.workdir, self.dataset, quiet=True))
      if r == last_round:
        break
      t0 = time.time()
      # A strategy that reads no score does not score the pool (selection_lib.SCORE_FREE).
      scores = (None if self.selection_params.strategy in selection_lib.SCORE_FREE
                else self._score(r, state))
      t1 = time.time()
      chosen = self._select(r, state, pool, scores)
      say(f"round {r} selection ({chosen.strategy}; scoring {t1 - t0:.0f} s): "
          f"{chosen.num_new_videos} new videos, {chosen.num_new_frames} frames, "
          f"cost {chosen.cost:g}")
      self._answer(chosen, pool, r + 1, state)
    summary = on_primary("final reports",
                         lambda: reporting.write_reports(self.workdir, self.dataset, quiet=False))
    return summary or {}

  # -------------------------------------------------------------------------------- utilities
  def _bar(self, total: int, desc: str, unit: str):
    return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False,
                     disable=self.quiet or not total or not parallel.is_primary())

  def _check_inputs(self, r: int) -> None:
    """Round ``r``'s inputs equal those its results were computed from (provenance)."""
    current = provenance.round_inputs(self.flat_config,
                                      [round_dir(self.workdir, j) for j in range(r + 1)],
                                      answers=self.overlay is not None)
    provenance.check_or_record(os.path.join(round_dir(self.workdir, r), provenance.INPUTS_FILE),
                               current, r, write=parallel.is_primary())
    parallel.sync(f"round {r} inputs")

  def _load_pool(self, round_index: int) -> pool_lib.PoolState:
    return pool_lib.PoolState.load(os.path.join(round_dir(self.workdir, round_index), "pool.json"),
                                   num_frames=self.num_frames)

  def _empty_pool(self) -> pool_lib.PoolState:
    budget = self.selection_params.budget
    return pool_lib.PoolState(self.num_frames, budget.cost_video, budget.cost_frame)

  # ------------------------------------------------------------------------------- the oracle
  def _answer(self, selection, pool_before: pool_lib.PoolState, target_round: int,
              state=None) -> None:
    """Asks the oracle for ``selection`` and writes the pool of ``target_round``; ``state`` (the
    model that selected it) gives people its predictions to correct (files oracle)."""
    rd = round_dir(self.workdir, target_round)

    def compute():
      pool = pool_lib.PoolState.from_json(pool_before.to_json(), num_frames=self.num_frames)
      if self.config.oracle.kind == "files":
        self.overlay.add(self._files_oracle_answers(selection, rd, target_round, state))
      oracle_lib.apply_selection(pool, selection, target_round)
      parallel.assert_same_across_processes(pool.to_json(), f"pool of round {target_round}")
      return None, pool

    stage("pool", os.path.join(rd, "pool.json"), compute, load=lambda _: None,
          save=lambda path, pool: pool.save(path))

  def _files_oracle_answers(self, selection, rd: str, target_round: int, state=None) -> dict:
    """The answers in ``rd``; while there are none, writes the requests (after the predictions of
    ``state``, if given) and stops the run."""
    if not selection.picks:  # Nothing to ask: the round goes on without waiting for people.
      if not parallel.exists_on_primary(os.path.join(rd, "requests.json")):
        on_primary("oracle requests", lambda: oracle_lib.write_requests(
            rd, selection, target_round, self.num_frames, self.dataset.class_names))
      return {}
    answered = parallel.exists_on_primary(os.path.join(rd, "answers.json"))
    message = None
    # The requests are (re)written while unanswered, and whenever they are missing (deleted after a
    # damage report): the selection that makes them is on disk.
    if not answered or not parallel.exists_on_primary(os.path.join(rd, "requests.json")):
      if state is not None:
        on_primary("model predictions", lambda: self._write_predictions(selection, rd, state,
                                                                        target_round - 1))
      message = on_primary("oracle requests", lambda: oracle_lib.write_requests(
          rd, selection, target_round, self.num_frames, self.dataset.class_names))
    if not answered:
      message = message or f"round {target_round}: awaiting answers in {rd}"
      say(message)
      raise oracle_lib.AwaitingAnswers(message)
    return oracle_lib.load_answers(rd, self._frame_shape(), self.dataset.class_names)

  def _write_predictions(self, selection, rd: str, state, from_round: int) -> None:
    """predictions.json: round ``from_round``'s model on every requested video and frame."""
    from claus_jax import evaluation
    from claus_jax import models

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predict_fn = evaluation.make_predict_fn(self.model, variables,
                                            input_range=models.input_range(self.config.model))
    out = {}
    for pick in selection.picks:
      record = self.dataset.train[self.position[pick.video_id]]
      mask_probs, class_probs = evaluation.predict_record(predict_fn, record, self.config.eval)
      out[pick.video_id] = oracle_lib.frame_predictions(
          mask_probs, class_probs, pick.frames, self.dataset.class_names,
          float(self.config.eval.mask_threshold))
    oracle_lib.write_predictions(rd, out, from_round)

  def _frame_shape(self) -> tuple[int, int]:
    s = int(self.config.data.frame_size)
    return (s, s)

  def _replay_answers(self, upto_round: int) -> None:
    """Rebuilds the files oracle's overlay from the answered rounds (validated again)."""
    if self.overlay is None:
      return
    for r in range(upto_round + 1):
      rd = round_dir(self.workdir, r)
      if os.path.exists(os.path.join(rd, "answers.json")) and os.path.exists(
          os.path.join(rd, "pool.json")):
        self.overlay.add(oracle_lib.load_answers(rd, self._frame_shape(),
                                                 self.dataset.class_names))

  def initial_selection(self):
    """Round 0: the seeded random set (V% videos, A% frames), as a selection for the oracle."""
    from claus_jax import selection as selection_lib

    budget = self.selection_params.budget
    pool = pool_lib.initial_pool(
        self.index.video_ids, self.index.num_frames,
        selection_lib.initial_video_count(budget, len(self.index)),
        selection_lib.initial_frame_count(budget, int(self.index.num_frames.sum())),
        seed=self.config.seed, cost_video=budget.cost_video, cost_frame=budget.cost_frame)
    picks = [selection_lib.Pick(video_id=v, frames=pool.labelled_frames(v).tolist(),
                                video_score=float("nan"), cluster=-1, new_video=True)
             for v in pool.labelled_video_ids()]
    return selection_lib.Selection(picks=picks, cost=pool.cost,
                                   num_new_videos=pool.num_labelled_videos,
                                   num_new_frames=pool.num_labelled_frames, strategy="initial",
                                   round=0)

  # -------------------------------------------------------------------------------- training
  def _sampler(self, r: int, pool: pool_lib.PoolState):
    """Round ``r``'s training clips: one per labelled frame of ``pool``; in a mean-teacher round
    also clips of every train video's unlabelled frames."""
    from claus_jax.data import clips as clips_lib

    items = [(self.position[v], pool.labelled_frames(v)) for v in pool.labelled_video_ids()]
    ssl = self.train_params.ssl
    unlabelled = clips_lib.unlabelled_items(self.index.num_frames, items) if ssl.enabled else None
    return clips_lib.ClipSampler(self.train_source, items, self.clip_params, seed=self.config.seed,
                                 round_index=r, unlabelled=unlabelled,
                                 unlabelled_batch_size=ssl.unlabelled_batch_size)

  def _initial_state(self, r: int):
    """The state round ``r`` trains from: fresh (or the previous round's, with warm_start)."""
    from claus_jax import train as train_lib

    init_vars = None
    if self.config.train.warm_start and r > 0:
      prev = self._final_state(r - 1)
      init_vars = {"params": prev.params, "batch_stats": prev.batch_stats}
    state = train_lib.create_state(self.train_params, self.model,
                                   jax.random.fold_in(self.root_key, _INIT_STREAM), len(self.index),
                                   variables=init_vars, encoder_init=self.encoder_init)
    train_key = jax.random.fold_in(jax.random.fold_in(self.root_key, _TRAIN_STREAM), r)
    return state.replace(key=train_key)

  def _train(self, r: int, pool: pool_lib.PoolState):
    """Round ``r``'s trained state: restored when train.json and the final checkpoint exist."""
    from claus_jax import train as train_lib

    rd = round_dir(self.workdir, r)
    sampler = self._sampler(r, pool)
    state = self._initial_state(r)
    ckpt = os.path.join(rd, "checkpoints")
    steps = train_lib.round_steps(self.train_params, sampler.steps_per_epoch)

    def load(train_json):
      restored = train_lib.restore_latest(ckpt, jax.eval_shape(lambda s: s, state),
                                          self.train_params)
      if restored is not None and int(restored.step) == steps:
        return restored
      # The final checkpoint is gone (deleted after a damage report, say): an earlier step is no
      # result. Training resumes from the latest checkpoint left, and train.json is written again.
      say(f"round {r}: {train_json} exists but {ckpt} holds no step {steps}; "
          f"training resumes from step {0 if restored is None else int(restored.step)}.")
      return INCOMPLETE

    def compute():
      fitted = self._fit(r, state, sampler, ckpt, steps)
      last = fitted.history[-1] if fitted.history else {}
      say(f"round {r} train: {steps} steps on {sampler.num_clips} labelled clips, "
          f"final loss {last.get('total', float('nan')):.4f}")
      return fitted.state, {"round": r, "steps": steps, "labelled_clips": sampler.num_clips,
                            "history": fitted.history}

    return stage("train.json", os.path.join(rd, "train.json"), compute, load,
                 pool_lib.atomic_write_json)

  def _fit(self, r: int, state, sampler, ckpt: str, steps: int):
    """Trains round ``r`` from ``state``, resuming from the latest checkpoint in ``ckpt``."""
    from claus_jax import train as train_lib

    cfg = self.config
    bar = self._bar(steps, f"round {r} train", "step")

    def progress(step, row):
      bar.update(step - bar.n)
      if row is not None:  # A log step: train_history.json was just rewritten.
        bar.set_postfix(loss=f"{row['total']:.4f}")
        if parallel.is_primary():  # The process that writes the history (no barrier needed).
          events.write_training(self.workdir, r)

    mesh = self.mesh if cfg.train.data_parallel else None
    # Each process feeds its own rows of every global batch (the same global batch as one process).
    fit_sampler = parallel.ProcessLocalSampler(sampler, mesh) if self.multi else sampler
    history_path = os.path.join(round_dir(self.workdir, r), "train_history.json")
    cluster_init = functools.partial(clustering.initialise, model=self.model, sampler=sampler,
                                     params=self.cluster_params)
    result = train_lib.fit(self.train_params, state, fit_sampler, ckpt, sampler.steps_per_epoch,
                           cluster_init=cluster_init, progress=progress, mesh=mesh,
                           history_path=history_path if parallel.is_primary() else None)
    bar.close()
    return result

  def _final_state(self, r: int):
    """The trained state of round ``r`` (restored from its checkpoint)."""
    from claus_jax import train as train_lib

    state = train_lib.create_state(self.train_params, self.model,
                                   jax.random.fold_in(self.root_key, _INIT_STREAM),
                                   len(self.index))
    steps = train_lib.round_steps(self.train_params,
                                  self._sampler(r, self._load_pool(r)).steps_per_epoch)
    restored = train_lib.restore_latest(os.path.join(round_dir(self.workdir, r), "checkpoints"),
                                        jax.eval_shape(lambda s: s, state), self.train_params)
    if restored is None or int(restored.step) != steps:
      raise train_lib.CheckpointError(
          f"round {r} has no final checkpoint (step {steps}) in "
          f"{os.path.join(round_dir(self.workdir, r), 'checkpoints')} to warm-start from; re-run "
          "the same command to finish that round's training first.")
    return restored

  # ------------------------------------------------------------------------------ evaluation
  def _evaluate(self, r: int, state) -> dict:
    """Round ``r``'s metrics on the test split (eval.json; eval.md beside it)."""
    from claus_jax import evaluation
    from claus_jax import models

    rd = round_dir(self.workdir, r)

    def compute():
      variables = {"params": state.params, "batch_stats": state.batch_stats}
      predict_fn = evaluation.make_predict_fn(self.model, variables,
                                              input_range=models.input_range(self.config.model))
      result, markdown = evaluation.evaluate(predict_fn, self.dataset.test,
                                             self.dataset.num_classes, self.dataset.class_names,
                                             self.config.eval, progress=not self.quiet)
      return result, (result, markdown)

    def save(path, written):
      result, markdown = written
      pool_lib.atomic_write_text(os.path.join(rd, "eval.md"), markdown)
      pool_lib.atomic_write_json(path, result)

    return stage("eval.json", os.path.join(rd, "eval.json"), compute,
                 lambda path: pool_lib.read_json(path, require=("per_class",)), save)

  # --------------------------------------------------------------------------------- scoring
  def _score(self, r: int, state) -> dict:
    """MC-dropout scores of every train video, in resumable shards of SCORE_SHARD videos.

    Returns:
      ``{video_id: {field: array}}`` (score_files.for_selection).
    """
    from claus_jax import uncertainty

    folder = os.path.join(round_dir(self.workdir, r), "scores")
    on_primary("scores folder", lambda: os.makedirs(folder, exist_ok=True))
    n = len(self.index)
    shards = [(os.path.join(folder, f"shard_{i:04d}.npz"), range(a, min(n, a + SCORE_SHARD)))
              for i, a in enumerate(range(0, n, SCORE_SHARD))]
    todo = sum(len(videos) for path, videos in shards if not parallel.exists_on_primary(path))
    scorer = None
    if todo:
      variables = {"params": state.params, "batch_stats": state.batch_stats}
      scorer = uncertainty.Scorer(self.model, variables, self.score_params, mesh=self.mesh)
    key = uncertainty.score_key(self.config.seed, r)
    bar = self._bar(todo, f"round {r} score", "video")
    scores = {}
    for path, videos in shards:
      compute = functools.partial(self._score_videos, scorer, key, videos, bar.update)
      scores.update(stage("score shard", path, compute, score_files.load_shard,
                          score_files.save_shard))
    bar.close()
    return score_files.for_selection(scores)

  def _score_videos(self, scorer, key: jax.Array, videos: range, progress):
    """Scores of the train videos ``videos``, as (result, record) of one shard stage."""
    a, b = videos.start, videos.stop
    if self.multi:  # Each process decodes and scores its share; all get every result.
      results = scorer.score_pool(record_lib.Rows(self.train_source, videos),
                                  self.index.video_ids[a:b], self.index.num_frames[a:b], key,
                                  uids=videos, progress=progress)
    else:  # The frame counts are known: the videos are read one at a time, as batches reach them.
      records = (self.train_source[j] for j in videos)
      results = scorer.score_videos(records, videos, key, progress=progress,
                                    num_frames=self.index.num_frames[a:b])
    fields = score_files.video_fields(results)
    return fields, fields

  # ------------------------------------------------------------------------------- selection
  def _select(self, r: int, state, pool: pool_lib.PoolState, scores: dict | None):
    """Round ``r``'s selection from the pool's scores (selection.json; latents.npy beside it).

    ``scores`` None: a score-free strategy's round (every frame score NaN, every cluster -1, no
    latents.npy)."""
    from claus_jax import selection as selection_lib

    cfg = self.config
    params = self.selection_params
    rd = round_dir(self.workdir, r)

    def load(path):
      record = pool_lib.read_json(path, require=("picks", "clusters"))
      try:
        return selection_lib.Selection.from_json(record)
      except (KeyError, TypeError, ValueError) as e:
        raise pool_lib.state_file_error(path, f"{type(e).__name__}: {e}") from None

    def compute():
      ids = self.index.video_ids
      if scores is None:
        latents, clusters = None, np.full(len(ids), -1, np.int32)
        unscored = {v: {"frame_scores": np.full(self.num_frames[v], np.nan), "entropy": None}
                    for v in ids}
      else:
        latents = np.stack([scores[v]["latent"] for v in ids])
        clusters = clustering.video_clusters(state, self.model, self.train_source, latents,
                                             self.cluster_params)
      spans = None
      if params.restrict_to_gt_span:  # Leaks ground truth: explicit opt-in only.
        spans = [tuple(self.dataset.train[i].span) for i in range(len(ids))]
      candidates = selection_lib.video_candidates(ids, self.num_frames,
                                                  unscored if scores is None else scores, pool,
                                                  clusters, spans)
      budget = selection_lib.round_budget(params.budget, r + 1, len(ids), pool.total_frames,
                                          pool.num_labelled_videos, pool.num_labelled_frames)
      rng = np.random.default_rng([cfg.seed, r, 7])
      chosen = dataclasses.replace(selection_lib.select(candidates, budget, params, rng), round=r)
      record = chosen.to_json()
      record["budget"] = dataclasses.asdict(budget)
      record["clusters"] = {v: int(c) for v, c in zip(ids, clusters)}
      # Every process selected on its own: a process that saw other data or scores stops here.
      parallel.assert_same_across_processes(record, f"selection of round {r}")
      return chosen, (record, latents)

    def save(path, written):
      record, latents = written
      if latents is not None:
        pool_lib.atomic_write(os.path.join(rd, "latents.npy"), lambda f: np.save(f, latents))
      pool_lib.atomic_write_json(path, record)

    return stage("selection.json", os.path.join(rd, "selection.json"), compute, load, save)


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
    on_primary("recompute", lambda: provenance.recompute_from(workdir, recompute_from, round_dir,
                                                                      log=say))
  mesh = parallel.make_mesh()
  record_environment(config, workdir, mesh)
  try:
    return Experiment(config, workdir, dataset, encoder_init, mesh).run()
  except oracle_lib.AwaitingAnswers:
    return {"awaiting_answers": True}


def _say_dataset_summary(summary: dict) -> None:
  say(f"dataset {summary['dataset']}: {summary['classes']} classes")
  for split in ("train", "test"):
    s = summary[split]
    say(f"dataset {split} split: {s['videos']} videos, {s['frames']} frames, {s['groups']} groups, "
        f"videos per class {s['videos_per_class']}")
