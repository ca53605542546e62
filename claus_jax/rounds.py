"""The stages of an active-learning round, each a function with its inputs and its result explicit.

The loop of the paper's Section 3 (``experiment.active_learning``) calls them in order:

  answer    the oracle labels a selection: the next round's pool  (round_K/pool.json)
  train     the detector on the round's labelled frames           (round_K/train.json, checkpoints/)
  evaluate  the trained detector on the test split                (round_K/eval.json, eval.md)
  score     every train video's uncertainty                       (round_K/scores/)
  select    the videos and frames to label next                   (round_K/selection.json)

What every stage of a run shares (the workdir, the data, the model, the mesh) is a :class:`Context`,
passed in; each stage's own settings, read once from the config by the driver, are a
:class:`Settings`. Every stage writes its result file atomically and loads it instead of computing
when it is there (:func:`stage`), which is how an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
from absl import logging as absl_logging
from tqdm import auto as tqdm

from claus_jax import clustering
from claus_jax import evaluation
from claus_jax import events
from claus_jax import oracle as oracle_lib
from claus_jax import parallel
from claus_jax import pool as pool_lib
from claus_jax import provenance
from claus_jax import score_files
from claus_jax import selection as selection_lib
from claus_jax import train as train_lib
from claus_jax import uncertainty
from claus_jax.data import clips as clips_lib
from claus_jax.data import record as record_lib

# Videos per scoring shard file (the unit of resume inside the scoring stage).
SCORE_SHARD = 16
# Stream ids folded into the root key, one per use.
_INIT_STREAM, _TRAIN_STREAM = 0, 1  # Root-key streams; scoring's is uncertainty.SCORE_STREAM.

# ``load`` returns it when a stage's file is there but its result is not (the stage computes again).
INCOMPLETE = object()

T = TypeVar("T")
R = TypeVar("R")


def round_dir(workdir: str, round_index: int) -> str:
  return os.path.join(workdir, f"round_{round_index:03d}")


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


class OverlaySource:
  """A train split seen through the files oracle's annotation overlay (lazy, random access)."""

  def __init__(self, source, overlay: oracle_lib.AnnotationOverlay | None):
    self.source, self.overlay = source, overlay

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    record = self.source[i]
    return record if self.overlay is None else self.overlay.apply(record)


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
  """What every stage of one run shares: the workdir, the data, the model and the mesh, fixed for
  the run, and the files oracle's annotations.

  ``overlay`` holds those annotations (None for the simulated oracle): the oracle stage alone adds
  to it, and every stage reads the train split through it (:attr:`train_source`).
  """
  workdir: str
  dataset: Any  # data.Dataset: train and test splits, the train index, class names.
  model: Any  # The detector (flax module).
  mesh: jax.sharding.Mesh
  seed: int
  quiet: bool = False
  overlay: oracle_lib.AnnotationOverlay | None = None
  multi_process: bool = False

  @functools.cached_property
  def index(self):
    return self.dataset.train_index

  @functools.cached_property
  def train_source(self) -> OverlaySource:
    return OverlaySource(self.dataset.train, self.overlay)

  @functools.cached_property
  def num_frames(self) -> dict[str, int]:
    return dict(zip(self.index.video_ids, self.index.num_frames.tolist()))

  @functools.cached_property
  def position(self) -> dict[str, int]:
    return {v: i for i, v in enumerate(self.index.video_ids)}

  @property
  def root_key(self) -> jax.Array:
    return jax.random.PRNGKey(self.seed)

  def round_dir(self, r: int) -> str:
    return round_dir(self.workdir, r)

  def bar(self, total: int, desc: str, unit: str):
    return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False,
                     disable=self.quiet or not total or not parallel.is_primary())


@dataclasses.dataclass(frozen=True)
class Settings:
  """Each stage's own settings, read once from the config (``experiment.round_settings``)."""
  train: train_lib.TrainParams
  clips: clips_lib.ClipParams
  clusters: clustering.ClusterParams
  scores: uncertainty.ScoreParams
  selection: selection_lib.SelectionParams
  eval: ml_collections.ConfigDict  # config.eval, as evaluation reads it.
  data_parallel: bool = False  # Training splits every batch over the mesh's devices.
  warm_start: bool = False  # Round K > 0 trains from round K - 1's final weights.
  encoder_init: str = ""  # Pretrained encoder every round starts from ('' = none).


# -------------------------------------------------------------------------------------- pools
def empty_pool(ctx: Context, budget: selection_lib.BudgetParams) -> pool_lib.PoolState:
  return pool_lib.PoolState(ctx.num_frames, budget.cost_video, budget.cost_frame)


def load_pool(ctx: Context, r: int) -> pool_lib.PoolState:
  return pool_lib.PoolState.load(os.path.join(ctx.round_dir(r), "pool.json"),
                                 num_frames=ctx.num_frames)


def initial_selection(ctx: Context, budget: selection_lib.BudgetParams) -> selection_lib.Selection:
  """Round 0: the seeded random set (V% videos, A% frames), as a selection for the oracle."""
  index = ctx.index
  pool = pool_lib.initial_pool(
      index.video_ids, index.num_frames,
      selection_lib.initial_video_count(budget, len(index)),
      selection_lib.initial_frame_count(budget, int(index.num_frames.sum())),
      seed=ctx.seed, cost_video=budget.cost_video, cost_frame=budget.cost_frame)
  picks = [selection_lib.Pick(video_id=v, frames=pool.labelled_frames(v).tolist(),
                              video_score=float("nan"), cluster=-1, new_video=True)
           for v in pool.labelled_video_ids()]
  return selection_lib.Selection(picks=picks, cost=pool.cost,
                                 num_new_videos=pool.num_labelled_videos,
                                 num_new_frames=pool.num_labelled_frames, strategy="initial",
                                 round=0)


def check_inputs(ctx: Context, r: int, flat_config: dict) -> None:
  """Round ``r``'s inputs equal those its results were computed from (provenance)."""
  current = provenance.round_inputs(flat_config, [ctx.round_dir(j) for j in range(r + 1)],
                                    answers=ctx.overlay is not None)
  provenance.check_or_record(os.path.join(ctx.round_dir(r), provenance.INPUTS_FILE), current, r,
                             write=parallel.is_primary())
  parallel.sync(f"round {r} inputs")


# --------------------------------------------------------------------------------- the oracle
def answer(ctx: Context, settings: Settings, selection, pool_before: pool_lib.PoolState,
           target_round: int, state=None) -> pool_lib.PoolState:
  """The oracle labels ``selection``: the pool of ``target_round`` (written, then read back).

  ``state`` (the model that selected it) gives people its predictions to correct (files oracle).
  """
  rd = ctx.round_dir(target_round)

  def compute():
    pool = pool_lib.PoolState.from_json(pool_before.to_json(), num_frames=ctx.num_frames)
    if ctx.overlay is not None:
      ctx.overlay.add(files_oracle_answers(ctx, settings, selection, target_round, state))
    oracle_lib.apply_selection(pool, selection, target_round)
    parallel.assert_same_across_processes(pool.to_json(), f"pool of round {target_round}")
    return None, pool

  stage("pool", os.path.join(rd, "pool.json"), compute, load=lambda _: None,
        save=lambda path, pool: pool.save(path))
  return load_pool(ctx, target_round)


def files_oracle_answers(ctx: Context, settings: Settings, selection, target_round: int,
                         state=None) -> dict:
  """The answers in round ``target_round``'s folder; while there are none, writes the requests
  (after the predictions of ``state``, if given) and stops the run (oracle.AwaitingAnswers)."""
  rd = ctx.round_dir(target_round)
  class_names = ctx.dataset.class_names
  if not selection.picks:  # Nothing to ask: the round goes on without waiting for people.
    if not parallel.exists_on_primary(os.path.join(rd, "requests.json")):
      on_primary("oracle requests", lambda: oracle_lib.write_requests(
          rd, selection, target_round, ctx.num_frames, class_names))
    return {}
  answered = parallel.exists_on_primary(os.path.join(rd, "answers.json"))
  message = None
  # The requests are (re)written while unanswered, and whenever they are missing (deleted after a
  # damage report): the selection that makes them is on disk.
  if not answered or not parallel.exists_on_primary(os.path.join(rd, "requests.json")):
    if state is not None:
      on_primary("model predictions", lambda: write_predictions(ctx, settings, selection, rd,
                                                                state, target_round - 1))
    message = on_primary("oracle requests", lambda: oracle_lib.write_requests(
        rd, selection, target_round, ctx.num_frames, class_names))
  if not answered:
    message = message or f"round {target_round}: awaiting answers in {rd}"
    say(message)
    raise oracle_lib.AwaitingAnswers(message)
  return oracle_lib.load_answers(rd, _frame_shape(settings), class_names)


def write_predictions(ctx: Context, settings: Settings, selection, rd: str, state,
                      from_round: int) -> None:
  """predictions.json: round ``from_round``'s model on every requested video and frame."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  predict_fn = evaluation.make_predict_fn(ctx.model, variables,
                                          input_range=settings.train.input_range)
  out = {}
  for pick in selection.picks:
    record = ctx.dataset.train[ctx.position[pick.video_id]]
    mask_probs, class_probs = evaluation.predict_record(predict_fn, record, settings.eval)
    out[pick.video_id] = oracle_lib.frame_predictions(
        mask_probs, class_probs, pick.frames, ctx.dataset.class_names,
        float(settings.eval.mask_threshold))
  oracle_lib.write_predictions(rd, out, from_round)


def _frame_shape(settings: Settings) -> tuple[int, int]:
  """The prepared frames' shape, onto which answers are mapped."""
  return (settings.train.frame_size, settings.train.frame_size)


def replay_answers(ctx: Context, settings: Settings, upto_round: int) -> None:
  """Rebuilds the files oracle's overlay from the answered rounds (validated again)."""
  if ctx.overlay is None:
    return
  for r in range(upto_round + 1):
    rd = ctx.round_dir(r)
    if os.path.exists(os.path.join(rd, "answers.json")) and os.path.exists(
        os.path.join(rd, "pool.json")):
      ctx.overlay.add(oracle_lib.load_answers(rd, _frame_shape(settings),
                                              ctx.dataset.class_names))


# ----------------------------------------------------------------------------------- training
def sampler(ctx: Context, settings: Settings, r: int, pool: pool_lib.PoolState):
  """Round ``r``'s training clips: one per labelled frame of ``pool``; in a mean-teacher round
  also clips of every train video's unlabelled frames."""
  items = [(ctx.position[v], pool.labelled_frames(v)) for v in pool.labelled_video_ids()]
  ssl = settings.train.ssl
  unlabelled = clips_lib.unlabelled_items(ctx.index.num_frames, items) if ssl.enabled else None
  return clips_lib.ClipSampler(ctx.train_source, items, settings.clips, seed=ctx.seed,
                               round_index=r, unlabelled=unlabelled,
                               unlabelled_batch_size=ssl.unlabelled_batch_size)


def initial_state(ctx: Context, settings: Settings, r: int):
  """The state round ``r`` trains from: fresh (or the previous round's, with warm_start)."""
  init_vars = None
  if settings.warm_start and r > 0:
    prev = final_state(ctx, settings, r - 1)
    init_vars = {"params": prev.params, "batch_stats": prev.batch_stats}
  state = train_lib.create_state(settings.train, ctx.model,
                                 jax.random.fold_in(ctx.root_key, _INIT_STREAM), len(ctx.index),
                                 variables=init_vars, encoder_init=settings.encoder_init)
  train_key = jax.random.fold_in(jax.random.fold_in(ctx.root_key, _TRAIN_STREAM), r)
  return state.replace(key=train_key)


def train(ctx: Context, settings: Settings, r: int, pool: pool_lib.PoolState):
  """Round ``r``'s trained state: restored when train.json and the final checkpoint exist."""
  clip_sampler = sampler(ctx, settings, r, pool)
  state = initial_state(ctx, settings, r)
  ckpt = os.path.join(ctx.round_dir(r), "checkpoints")
  steps = train_lib.round_steps(settings.train, clip_sampler.steps_per_epoch)

  def load(train_json):
    restored = train_lib.restore_latest(ckpt, jax.eval_shape(lambda s: s, state), settings.train)
    if restored is not None and int(restored.step) == steps:
      return restored
    # The final checkpoint is gone (deleted after a damage report, say): an earlier step is no
    # result. Training resumes from the latest checkpoint left, and train.json is written again.
    say(f"round {r}: {train_json} exists but {ckpt} holds no step {steps}; "
        f"training resumes from step {0 if restored is None else int(restored.step)}.")
    return INCOMPLETE

  def compute():
    fitted = fit(ctx, settings, r, state, clip_sampler, ckpt, steps)
    last = fitted.history[-1] if fitted.history else {}
    say(f"round {r} train: {steps} steps on {clip_sampler.num_clips} labelled clips, "
        f"final loss {last.get('total', float('nan')):.4f}")
    return fitted.state, {"round": r, "steps": steps, "labelled_clips": clip_sampler.num_clips,
                          "history": fitted.history}

  return stage("train.json", os.path.join(ctx.round_dir(r), "train.json"), compute, load,
               pool_lib.atomic_write_json)


def fit(ctx: Context, settings: Settings, r: int, state, clip_sampler, ckpt: str, steps: int):
  """Trains round ``r`` from ``state``, resuming from the latest checkpoint in ``ckpt``."""
  bar = ctx.bar(steps, f"round {r} train", "step")

  def progress(step, row):
    bar.update(step - bar.n)
    if row is not None:  # A log step: train_history.json was just rewritten.
      bar.set_postfix(loss=f"{row['total']:.4f}")
      if parallel.is_primary():  # The process that writes the history (no barrier needed).
        events.write_training(ctx.workdir, r)

  mesh = ctx.mesh if settings.data_parallel else None
  # Each process feeds its own rows of every global batch (the same global batch as one process).
  fit_sampler = (parallel.ProcessLocalSampler(clip_sampler, mesh) if ctx.multi_process
                 else clip_sampler)
  history_path = os.path.join(ctx.round_dir(r), "train_history.json")
  cluster_init = functools.partial(clustering.initialise, model=ctx.model, sampler=clip_sampler,
                                   params=settings.clusters)
  result = train_lib.fit(settings.train, state, fit_sampler, ckpt, clip_sampler.steps_per_epoch,
                         cluster_init=cluster_init, progress=progress, mesh=mesh,
                         history_path=history_path if parallel.is_primary() else None)
  bar.close()
  return result


def final_state(ctx: Context, settings: Settings, r: int):
  """The trained state of round ``r`` (restored from its checkpoint)."""
  state = train_lib.create_state(settings.train, ctx.model,
                                 jax.random.fold_in(ctx.root_key, _INIT_STREAM), len(ctx.index))
  steps = train_lib.round_steps(settings.train,
                                sampler(ctx, settings, r, load_pool(ctx, r)).steps_per_epoch)
  ckpt = os.path.join(ctx.round_dir(r), "checkpoints")
  restored = train_lib.restore_latest(ckpt, jax.eval_shape(lambda s: s, state), settings.train)
  if restored is None or int(restored.step) != steps:
    raise train_lib.CheckpointError(
        f"round {r} has no final checkpoint (step {steps}) in {ckpt} to warm-start from; re-run "
        "the same command to finish that round's training first.")
  return restored


# --------------------------------------------------------------------------------- evaluation
def evaluate(ctx: Context, settings: Settings, r: int, state) -> dict:
  """Round ``r``'s metrics on the test split (eval.json; eval.md beside it)."""
  rd = ctx.round_dir(r)

  def compute():
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predict_fn = evaluation.make_predict_fn(ctx.model, variables,
                                            input_range=settings.train.input_range)
    result, markdown = evaluation.evaluate(predict_fn, ctx.dataset.test, ctx.dataset.num_classes,
                                           ctx.dataset.class_names, settings.eval,
                                           progress=not ctx.quiet)
    return result, (result, markdown)

  def save(path, written):
    result, markdown = written
    pool_lib.atomic_write_text(os.path.join(rd, "eval.md"), markdown)
    pool_lib.atomic_write_json(path, result)

  return stage("eval.json", os.path.join(rd, "eval.json"), compute,
               lambda path: pool_lib.read_json(path, require=("per_class",)), save)


# ------------------------------------------------------------------------------------ scoring
def score(ctx: Context, settings: Settings, r: int, state) -> dict:
  """Uncertainty scores of every train video, in resumable shards of SCORE_SHARD videos.

  Returns:
    ``{video_id: {field: array}}`` (score_files.for_selection).
  """
  folder = os.path.join(ctx.round_dir(r), "scores")
  on_primary("scores folder", lambda: os.makedirs(folder, exist_ok=True))
  n = len(ctx.index)
  shards = [(os.path.join(folder, f"shard_{i:04d}.npz"), range(a, min(n, a + SCORE_SHARD)))
            for i, a in enumerate(range(0, n, SCORE_SHARD))]
  todo = sum(len(videos) for path, videos in shards if not parallel.exists_on_primary(path))
  scorer = None
  if todo:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    scorer = uncertainty.Scorer(ctx.model, variables, settings.scores, mesh=ctx.mesh)
  key = uncertainty.score_key(ctx.seed, r)
  bar = ctx.bar(todo, f"round {r} score", "video")
  scores = {}
  for path, videos in shards:
    compute = functools.partial(_score_videos, ctx, scorer, key, videos, bar.update)
    scores.update(stage("score shard", path, compute, score_files.load_shard,
                        score_files.save_shard))
  bar.close()
  return score_files.for_selection(scores)


def _score_videos(ctx: Context, scorer, key: jax.Array, videos: range, progress):
  """Scores of the train videos ``videos``, as (result, record) of one shard stage."""
  a, b = videos.start, videos.stop
  index = ctx.index
  if ctx.multi_process:  # Each process decodes and scores its share; all get every result.
    results = scorer.score_pool(record_lib.Rows(ctx.train_source, videos),
                                index.video_ids[a:b], index.num_frames[a:b], key,
                                uids=videos, progress=progress)
  else:  # The frame counts are known: the videos are read one at a time, as batches reach them.
    records = (ctx.train_source[j] for j in videos)
    results = scorer.score_videos(records, videos, key, progress=progress,
                                  num_frames=index.num_frames[a:b])
  fields = score_files.video_fields(results)
  return fields, fields


# ---------------------------------------------------------------------------------- selection
def select(ctx: Context, settings: Settings, r: int, state, pool: pool_lib.PoolState,
           scores: dict | None) -> selection_lib.Selection:
  """Round ``r``'s selection from the pool's scores (selection.json; latents.npy beside it).

  ``scores`` None: a score-free strategy's round (every frame score NaN, every cluster -1, no
  latents.npy)."""
  params = settings.selection
  rd = ctx.round_dir(r)

  def load(path):
    record = pool_lib.read_json(path, require=("picks", "clusters"))
    try:
      return selection_lib.Selection.from_json(record)
    except (KeyError, TypeError, ValueError) as e:
      raise pool_lib.state_file_error(path, f"{type(e).__name__}: {e}") from None

  def compute():
    ids = ctx.index.video_ids
    if scores is None:
      latents, clusters = None, np.full(len(ids), -1, np.int32)
      unscored = {v: {"frame_scores": np.full(ctx.num_frames[v], np.nan), "entropy": None}
                  for v in ids}
    else:
      latents = np.stack([scores[v]["latent"] for v in ids])
      clusters = clustering.video_clusters(state, ctx.model, ctx.train_source, latents,
                                           settings.clusters)
    spans = None
    if params.restrict_to_gt_span:  # Leaks ground truth: explicit opt-in only.
      spans = [tuple(ctx.dataset.train[i].span) for i in range(len(ids))]
    candidates = selection_lib.video_candidates(ids, ctx.num_frames,
                                                unscored if scores is None else scores, pool,
                                                clusters, spans)
    budget = selection_lib.round_budget(params.budget, r + 1, len(ids), pool.total_frames,
                                        pool.num_labelled_videos, pool.num_labelled_frames)
    rng = np.random.default_rng([ctx.seed, r, 7])
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
