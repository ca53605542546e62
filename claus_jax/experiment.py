"""The active-learning run: ``run(config, workdir)``.

Round layout in ``workdir``::

  config.json            the run's config; a different config is refused
  dataset.json           dataset summary
  round_000/pool.json    labels available for round 0 (the seeded random initial set)
  round_K/requests.json  (files oracle) what people must annotate to start round K
  round_K/answers.json   (files oracle) their answers
  round_K/checkpoints/   orbax checkpoints of round K's training
  round_K/train.json     training history (loss curve) once training is done
  round_K/eval.json/.md  evaluation on the test split
  round_K/scores/        MC-dropout scores of the pool, one file per shard of videos
  round_K/selection.json what round K selected (videos, frames, scores, clusters, cost)
  round_{K+1}/pool.json  the pool after the oracle answered round K's selection
  metrics.jsonl, summary.md, *.png   reports, rebuilt from the rounds' files

Every stage writes its result atomically and is skipped when the result exists, so re-running the
same command after any interruption (even SIGKILL) finishes with the results of an uninterrupted run.

Multi-process runs (``jax.distributed``; launch/README.md) share one workdir: every process trains on
its rows of each global batch, scores its share of the pool (``Scorer.score_pool``) and computes the
selection from the gathered scores; the selection's hash is checked across processes; process 0
alone writes the JSON, score shards and reports, and the others wait at a barrier before reading.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import zipfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from tqdm import auto as tqdm

from claus_jax import clustering
from claus_jax import configlib
from claus_jax import oracle as oracle_lib
from claus_jax import parallel
from claus_jax import pool as pool_lib

log = logging.getLogger(__name__)

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
EXIT_ERROR = 2
EXIT_AWAITING_ANSWERS = 3


class WorkdirMismatchError(ValueError):
  """The workdir was made by a different config."""


def user_error_message(error: BaseException) -> str | None:
  """The one-line message for an error a user can act on; None for a bug (keep the traceback)."""
  from claus_jax import train
  from claus_jax.data import official

  if isinstance(error, (configlib.ConfigError, WorkdirMismatchError, pool_lib.PoolError,
                        pool_lib.StateFileError, pool_lib.DiskFullError, oracle_lib.AnswersError,
                        train.CheckpointError, train.NonFiniteLossError, official.DatasetError)):
    return str(error)
  if pool_lib.is_disk_full(error):  # However deep a library wrapped it.
    seen = error
    while seen is not None and not getattr(seen, "filename", None):
      seen = seen.__cause__ or seen.__context__
    return str(pool_lib.DiskFullError(seen.filename if seen is not None else "the workdir"))
  if isinstance(error, (FileExistsError, NotADirectoryError)):
    if error.filename:
      return (f"{error.filename} is a file where a folder is needed; move or delete it and re-run "
              "the same command.")
    return str(error)
  return None


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
    a, b = (traverse_util.flatten_dict(d, sep=".") for d in (saved, current))
    diff = sorted(k for k in set(a) | set(b)
                  if k not in _RESULT_NEUTRAL and a.get(k, "<absent>") != b.get(k, "<absent>"))
    if diff:
      lines = "\n".join(f"  {k}: workdir has {a.get(k, '<absent>')!r}, this run has "
                        f"{b.get(k, '<absent>')!r}" for k in diff)
      raise WorkdirMismatchError(
          f"{workdir} was made by a different config:\n{lines}\nUse another --workdir, or rerun "
          "with the workdir's config to resume it.")
    return
  if write:
    pool_lib.atomic_write_json(path, current)


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


class Experiment:
  """One active-learning run; :meth:`run` executes (or resumes) every round."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, dataset,
               encoder_init: str = ""):
    from claus_jax import models

    self.config = config
    self.encoder_init = encoder_init  # Pretrained encoder every round starts from ('' = none).
    self.workdir = workdir
    self.dataset = dataset
    self.index = dataset.train_index
    self.num_frames = dict(zip(self.index.video_ids, self.index.num_frames.tolist()))
    self.position = {v: i for i, v in enumerate(self.index.video_ids)}
    self.model = models.build_model(config)
    self.mesh = parallel.make_mesh()
    self.multi = jax.process_count() > 1
    if self.multi and not config.train.data_parallel:
      raise ValueError(f"config.train.data_parallel: this run has {jax.process_count()} processes; "
                       "set --config.train.data_parallel=True so that training uses every process's "
                       "devices.")
    self.root_key = jax.random.PRNGKey(config.seed)
    self.quiet = bool(config.quiet)
    self.overlay = None
    if config.oracle.kind == "files":
      self.overlay = oracle_lib.AnnotationOverlay()
    self.train_source = _OverlaySource(dataset.train, self.overlay)

  # -------------------------------------------------------------------------------- utilities
  def say(self, message: str) -> None:
    if parallel.is_primary():
      print(message, flush=True)

  def _bar(self, total: int, desc: str, unit: str):
    return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stdout,
                     disable=self.quiet or not parallel.is_primary())

  def _write(self, what: str, write):
    """Process 0 runs ``write()`` (an atomic file write); then every process passes a barrier.

    Returns what ``write()`` returned on process 0, None on the others.
    """
    result = write() if parallel.is_primary() else None
    parallel.sync(what)
    return result

  def _load_pool(self, round_index: int) -> pool_lib.PoolState:
    return pool_lib.PoolState.load(os.path.join(round_dir(self.workdir, round_index), "pool.json"),
                                   num_frames=self.num_frames)

  # ------------------------------------------------------------------------------- the oracle
  def _answer(self, selection, pool_before: pool_lib.PoolState, target_round: int) -> None:
    """Asks the oracle for ``selection`` and writes the pool of ``target_round``."""
    rd = round_dir(self.workdir, target_round)
    out = os.path.join(rd, "pool.json")
    if parallel.exists_on_primary(out):
      return
    pool = pool_lib.PoolState.from_json(pool_before.to_json(), num_frames=self.num_frames)
    if self.config.oracle.kind == "files":
      answered = parallel.exists_on_primary(os.path.join(rd, "answers.json"))
      message = None
      # The requests are (re)written while unanswered, and whenever they are missing (deleted after
      # a damage report): the selection that makes them is on disk.
      if not answered or not parallel.exists_on_primary(os.path.join(rd, "requests.json")):
        message = self._write("oracle requests", lambda: oracle_lib.write_requests(
            rd, selection, target_round, self.num_frames, self.dataset.class_names))
      if not answered:
        message = message or f"round {target_round}: awaiting answers in {rd}"
        self.say(message)
        raise oracle_lib.AwaitingAnswers(message)
      answers = oracle_lib.load_answers(rd, self._frame_shape(), self.dataset.class_names)
      self.overlay.add(answers)
    oracle_lib.apply_selection(pool, selection, target_round)
    parallel.assert_same_across_processes(pool.to_json(), f"pool of round {target_round}")
    self._write("pool", lambda: pool.save(out))

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

    cfg = self.config
    pool = pool_lib.initial_pool(
        self.index.video_ids, self.index.num_frames,
        configlib.initial_video_count(cfg, len(self.index)),
        configlib.initial_frame_count(cfg, int(self.index.num_frames.sum())),
        seed=cfg.seed, cost_video=cfg.budget.cost_video, cost_frame=cfg.budget.cost_frame)
    picks = [selection_lib.Pick(video_id=v, frames=pool.labelled_frames(v).tolist(),
                                video_score=float("nan"), cluster=-1, new_video=True)
             for v in pool.labelled_video_ids()]
    return selection_lib.Selection(picks=picks, cost=pool.cost,
                                   num_new_videos=pool.num_labelled_videos,
                                   num_new_frames=pool.num_labelled_frames, strategy="initial",
                                   round=0)

  # -------------------------------------------------------------------------------- training
  def _sampler(self, r: int, pool: pool_lib.PoolState):
    """Round ``r``'s training clips: one per labelled frame of ``pool``."""
    from claus_jax.data import clips as clips_lib

    items = [(self.position[v], pool.labelled_frames(v)) for v in pool.labelled_video_ids()]
    return clips_lib.ClipSampler(self.train_source, items, self.config, seed=self.config.seed,
                                 round_index=r)

  def _train(self, r: int, pool: pool_lib.PoolState):
    from claus_jax import train as train_lib

    cfg = self.config
    rd = round_dir(self.workdir, r)
    sampler = self._sampler(r, pool)
    init_vars = None
    if cfg.train.warm_start and r > 0:
      prev = self._final_state(r - 1)
      init_vars = {"params": prev.params, "batch_stats": prev.batch_stats}
    state = train_lib.create_state(cfg, self.model, jax.random.fold_in(self.root_key, _INIT_STREAM),
                                   len(self.index), variables=init_vars,
                                   encoder_init=self.encoder_init)
    state = state.replace(key=jax.random.fold_in(jax.random.fold_in(self.root_key, _TRAIN_STREAM), r))
    train_json = os.path.join(rd, "train.json")
    ckpt = os.path.join(rd, "checkpoints")
    steps = train_lib.round_steps(cfg, sampler.steps_per_epoch)
    if parallel.exists_on_primary(train_json):
      restored = train_lib.restore_latest(ckpt, jax.eval_shape(lambda s: s, state), cfg)
      if restored is not None and int(restored.step) == steps:
        return restored
      # The final checkpoint is gone (deleted after a damage report, say): an earlier step is no
      # result. Training resumes from the latest checkpoint left, and train.json is written again.
      self.say(f"round {r}: {train_json} exists but {ckpt} holds no step {steps}; "
               f"training resumes from step {0 if restored is None else int(restored.step)}.")
    bar = self._bar(steps, f"round {r} train", "step")
    done_before = [0]

    def progress(step, metrics):
      bar.update(step - done_before[0])
      done_before[0] = step
      if step % cfg.train.log_every == 0:
        bar.set_postfix(loss=f"{metrics['total']:.4f}")

    mesh = self.mesh if cfg.train.data_parallel else None
    # Each process feeds its own rows of every global batch (the same global batch as one process).
    fit_sampler = parallel.ProcessLocalSampler(sampler, mesh) if self.multi else sampler
    history_path = os.path.join(rd, "train_history.json")
    result = train_lib.fit(cfg, state, fit_sampler, ckpt, sampler.steps_per_epoch,
                           cluster_init=lambda s: self._cluster_init(s, sampler),
                           progress=progress, mesh=mesh,
                           history_path=history_path if parallel.is_primary() else None)
    bar.close()
    history = result.history
    self._write("train.json", lambda: pool_lib.atomic_write_json(
        train_json, {"round": r, "steps": steps, "labelled_clips": sampler.num_clips,
                     "history": history}))
    last = history[-1] if history else {}
    self.say(f"round {r} train: {steps} steps on {sampler.num_clips} labelled clips, "
             f"final loss {last.get('total', float('nan')):.4f}")
    return result.state

  def _final_state(self, r: int):
    """The trained state of round ``r`` (restored from its checkpoint)."""
    from claus_jax import train as train_lib

    state = train_lib.create_state(self.config, self.model,
                                   jax.random.fold_in(self.root_key, _INIT_STREAM),
                                   len(self.index))
    steps = train_lib.round_steps(self.config, self._sampler(r, self._load_pool(r)).steps_per_epoch)
    restored = train_lib.restore_latest(os.path.join(round_dir(self.workdir, r), "checkpoints"),
                                        jax.eval_shape(lambda s: s, state), self.config)
    if restored is None or int(restored.step) != steps:
      raise train_lib.CheckpointError(
          f"round {r} has no final checkpoint (step {steps}) in "
          f"{os.path.join(round_dir(self.workdir, r), 'checkpoints')} to warm-start from; re-run "
          "the same command to finish that round's training first.")
    return restored

  def _cluster_init(self, state, sampler):
    """k-means on the latents of the labelled videos' clips (deterministic forward, no dropout)."""
    from claus_jax import models

    cfg = self.config
    # Replicated global arrays (multi-process) -> this process's local copy; every process then
    # computes the same latents and the same k-means (seeded), with no communication.
    variables = parallel.host_local_copy({"params": state.params, "batch_stats": state.batch_stats})
    clips = [(pos, int(c)) for pos, (_, frames) in enumerate(sampler.items) for c in frames]
    batch = max(1, int(cfg.eval.batch_size))
    forward = jax.jit(lambda v, x: self.model.apply(
        v, models.preprocess(x, models.input_range(cfg)), train=False)["latent"])
    latents, owners = [], []
    for start in range(0, len(clips), batch):
      chunk = clips[start:start + batch]
      video = np.stack([sampler.clip(pos, c)["video"] for pos, c in chunk])
      from claus_jax import tiling
      latents.append(np.asarray(forward(variables, tiling.pad_batch(video, batch)))[:len(chunk)])
      owners.extend(sampler.items[pos][0] for pos, _ in chunk)
    init = clustering.init_centres(np.concatenate(latents), np.asarray(owners), cfg.cluster.k,
                                   cfg.cluster.n_init, seed=cfg.seed,
                                   count_init=cfg.cluster.count_init)
    assignments = np.full(state.assignments.shape, -1, np.int32)
    assignments[init.videos] = init.video_cluster
    return state.replace(centres=jnp.asarray(init.centres), counts=jnp.asarray(init.counts),
                         assignments=jnp.asarray(assignments), cluster_active=jnp.asarray(True))

  # ------------------------------------------------------------------------------ evaluation
  def _evaluate(self, r: int, state) -> dict:
    from claus_jax import evaluation
    from claus_jax import models

    path = os.path.join(round_dir(self.workdir, r), "eval.json")
    if parallel.exists_on_primary(path):
      return pool_lib.read_json(path, require=("per_class",))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predict_fn = evaluation.make_predict_fn(self.model, variables,
                                            input_range=models.input_range(self.config))
    result, markdown = evaluation.evaluate(predict_fn, self.dataset.test,
                                           self.dataset.num_classes, self.dataset.class_names,
                                           self.config.eval, progress=not self.quiet)
    def write():
      pool_lib.atomic_write_text(os.path.join(round_dir(self.workdir, r), "eval.md"), markdown)
      pool_lib.atomic_write_json(path, result)
    self._write("eval.json", write)
    return result

  # --------------------------------------------------------------------------------- scoring
  def _score(self, r: int, state) -> dict:
    """MC-dropout scores of every train video, in resumable shards of SCORE_SHARD videos."""
    from claus_jax import uncertainty

    folder = os.path.join(round_dir(self.workdir, r), "scores")
    self._write("scores folder", lambda: os.makedirs(folder, exist_ok=True))
    n = len(self.index)
    shards = [(s, min(n, s + SCORE_SHARD)) for s in range(0, n, SCORE_SHARD)]
    todo = [(i, s) for i, s in enumerate(shards)
            if not parallel.exists_on_primary(os.path.join(folder, f"shard_{i:04d}.npz"))]
    if todo:
      variables = {"params": state.params, "batch_stats": state.batch_stats}
      scorer = uncertainty.Scorer(self.model, variables, self.config, mesh=self.mesh)
      key = uncertainty.score_key(self.config.seed, r)
      bar = self._bar(sum(b - a for _, (a, b) in todo), f"round {r} score", "video")
      ids, frames = self.index.video_ids, self.index.num_frames
      for i, (a, b) in todo:
        if self.multi:  # Each process decodes and scores its share; all get every result.
          results = scorer.score_pool(_Offset(self.train_source, a), ids[a:b], frames[a:b], key,
                                      uids=range(a, b), progress=bar.update)
        else:
          records = (self.train_source[j] for j in range(a, b))
          results = scorer.score_videos(records, range(a, b), key, progress=bar.update)
        self._write("score shard", lambda: _save_shard(
            os.path.join(folder, f"shard_{i:04d}.npz"), results))
      bar.close()
    scores = {}
    for i in range(len(shards)):
      scores.update(_load_shard(os.path.join(folder, f"shard_{i:04d}.npz")))
    return scores

  # ------------------------------------------------------------------------------- selection
  def _select(self, r: int, state, pool: pool_lib.PoolState, scores: dict):
    from claus_jax import selection as selection_lib

    cfg = self.config
    path = os.path.join(round_dir(self.workdir, r), "selection.json")
    if parallel.exists_on_primary(path):
      record = pool_lib.read_json(path, require=("picks", "clusters"))
      try:
        return selection_lib.Selection.from_json(record)
      except (KeyError, TypeError, ValueError) as e:
        raise pool_lib.state_file_error(path, f"{type(e).__name__}: {e}") from None
    latents = np.stack([scores[v]["latent"] for v in self.index.video_ids])
    if bool(state.cluster_active) and cfg.cluster.latents == "eval":
      clusters = self._eval_mode_clusters(state)
    elif bool(state.cluster_active):
      clusters = np.asarray(clustering.assign(jnp.asarray(latents), state.centres))
    else:
      clusters = np.full(len(latents), -1, np.int32)
    candidates = []
    for i, vid in enumerate(self.index.video_ids):
      s = scores[vid]
      span = None
      if cfg.selection.restrict_to_gt_span:
        span = tuple(self.dataset.train[i].span)  # leaks ground truth: explicit opt-in only
      candidates.append(selection_lib.VideoCandidate(
          video_id=vid, num_frames=self.num_frames[vid], frame_scores=s["frame_scores"],
          entropy_scores=s["entropy"], labelled_frames=pool.labelled_frames(vid),
          video_labelled=pool.is_labelled(vid), cluster=int(clusters[i]), gt_span=span))
    budget = selection_lib.round_budget(cfg, r + 1, len(self.index), pool.total_frames,
                                        pool.num_labelled_videos, pool.num_labelled_frames)
    rng = np.random.default_rng([cfg.seed, r, 7])
    chosen = selection_lib.select(candidates, budget, cfg, rng)
    chosen = dataclasses.replace(chosen, round=r)
    record = chosen.to_json()
    record["budget"] = dataclasses.asdict(budget)
    record["clusters"] = {v: int(c) for v, c in zip(self.index.video_ids, clusters)}
    # Every process selected on its own: a process that saw other data or scores stops the run here.
    parallel.assert_same_across_processes(record, f"selection of round {r}")

    def write():
      pool_lib.atomic_write(os.path.join(round_dir(self.workdir, r), "latents.npy"),
                            lambda f: np.save(f, latents))
      pool_lib.atomic_write_json(path, record)
    self._write("selection.json", write)
    return chosen

  def _eval_mode_clusters(self, state) -> np.ndarray:
    """cluster.latents='eval': each pool video's majority cluster over ``cluster.latent_clips``
    evenly spaced clips, latents in eval mode (clustering.majority_clusters)."""
    from claus_jax import models
    from claus_jax import tiling
    from claus_jax.data import clips as clips_lib

    cfg = self.config
    variables = parallel.host_local_copy({"params": state.params, "batch_stats": state.batch_stats})
    batch = max(1, int(cfg.eval.batch_size))
    forward = jax.jit(lambda v, x: self.model.apply(
        v, models.preprocess(x, models.input_range(cfg)), train=False)["latent"])
    latents, owners, pending = [], [], []

    def flush():
      video = np.stack([p[1] for p in pending])
      latents.append(np.asarray(forward(variables, tiling.pad_batch(video, batch)))[:len(pending)])
      owners.extend(p[0] for p in pending)
      pending.clear()

    for i in range(len(self.index)):
      record = self.train_source[i]
      for centre in clustering.latent_clip_centres(record.num_frames, cfg.cluster.latent_clips):
        frames = clips_lib.clip_frames(int(centre), record.num_frames, cfg.model.clip_length,
                                       cfg.train.clip_skip)
        pending.append((i, np.asarray(record.frames[frames])))
        if len(pending) == batch:
          flush()
    if pending:
      flush()
    vote = clustering.majority_clusters(np.concatenate(latents), np.asarray(owners),
                                        np.asarray(state.centres))
    return np.array([vote[i] for i in range(len(self.index))], np.int32)

  # ------------------------------------------------------------------------------------- run
  def run(self) -> dict:
    from claus_jax import reporting
    from claus_jax import selection as selection_lib

    cfg = self.config
    last_round = selection_lib.num_rounds(cfg)
    first = os.path.join(round_dir(self.workdir, 0), "pool.json")
    if not parallel.exists_on_primary(first):
      initial = self.initial_selection()
      empty = pool_lib.PoolState(self.num_frames, cfg.budget.cost_video, cfg.budget.cost_frame)
      self._answer(initial, empty, 0)
    r = 0
    while r <= last_round:
      self._replay_answers(r)
      pool = self._load_pool(r)
      pct = pool.percentages()
      self.say(f"round {r}: {pool.num_labelled_videos} labelled videos ({pct['videos_pct']:.1f}%), "
               f"{pool.num_labelled_frames} frames ({pct['frames_pct']:.2f}%), cost {pool.cost:g}")
      t0 = time.time()
      state = self._train(r, pool)
      t1 = time.time()
      result = self._evaluate(r, state)
      self.say(f"round {r} eval ({time.time() - t1:.0f} s; train {t1 - t0:.0f} s): " + ", ".join(
          f"{k}={result[k]:.3f}" for k in reporting.HEADLINE if result.get(k) is not None))
      self._write("reports", lambda: reporting.write_reports(self.workdir, self.dataset, quiet=True))
      if r == last_round:
        break
      t0 = time.time()
      scores = self._score(r, state)
      t1 = time.time()
      chosen = self._select(r, state, pool, scores)
      self.say(f"round {r} selection ({chosen.strategy}; scoring {t1 - t0:.0f} s): "
               f"{chosen.num_new_videos} new videos, {chosen.num_new_frames} frames, "
               f"cost {chosen.cost:g}")
      self._answer(chosen, pool, r + 1)
      r += 1
    summary = self._write("final reports",
                          lambda: reporting.write_reports(self.workdir, self.dataset, quiet=False))
    return summary or {}


class _Offset:
  """``source[a + i]`` as ``[i]``: one score shard of the pool for ``Scorer.score_pool``."""

  def __init__(self, source, offset: int):
    self.source, self.offset = source, offset

  def __getitem__(self, i):
    return self.source[self.offset + i]


def _save_shard(path: str, results: Sequence) -> None:
  arrays = {}
  for res in results:
    for field in ("frame_scores", "entropy", "mean_prob", "latent", "class_probs"):
      arrays[f"{res.video_id}/{field}"] = getattr(res, field)
  pool_lib.atomic_write_npz(path, arrays)


def _load_shard(path: str) -> dict:
  out: dict = {}
  try:
    with np.load(path) as data:
      for key in data.files:
        vid, field = key.rsplit("/", 1)
        out.setdefault(vid, {})[field] = data[key]
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise pool_lib.state_file_error(path, f"{type(e).__name__}: {e}", "delete it and re-run the "
                                    "same command to score its videos again.") from None
  # Selection uses the configured R (all passes) and the configured threshold (index 0).
  for vid, fields in out.items():
    fields["all_frame_scores"] = fields["frame_scores"]
    fields["frame_scores"] = fields["frame_scores"][-1, 0]
  return out


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
  """Orbax and tfds log every checkpoint and file at INFO; keep the console to our status lines."""
  from absl import logging as absl_logging

  from claus_jax import train

  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("absl", "orbax", "tensorflow_datasets", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.WARNING)
  # A failed checkpoint save or restore (a full disk, a damaged folder) reaches the run as one
  # exception, which it reports; meanwhile orbax's threads log it again at ERROR, asyncio logs each
  # unretrieved future, and late reads print 'Event loop is closed': thousands of lines around
  # the one that matters. Orbax's warnings stay.
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)
  absl_logger = logging.getLogger("absl")  # Orbax logs through absl.
  if _drop_orbax_errors not in absl_logger.filters:
    absl_logger.addFilter(_drop_orbax_errors)
  train.drop_closed_event_loop_reports()


def _drop_orbax_errors(record: logging.LogRecord) -> bool:
  return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the active-learning experiment described by ``config`` in ``workdir``."""
  from claus_jax import data as data_lib

  quiet_library_logs()
  enable_compilation_cache()
  configlib.validate(config)
  configlib.check_encoder_init(config)
  workdir = os.path.expanduser(workdir)
  primary = parallel.is_primary()
  if primary:
    make_folder(workdir, "--workdir")
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
    _print_dataset_summary(summary)
  encoder_init = ""
  if config.pretrain.enabled:
    from claus_jax import pretrain as pretrain_lib
    if primary:
      pretrain_lib.ensure_pretrained(config, progress=not config.quiet)
    parallel.sync("encoder pretrained")
    encoder_init = pretrain_lib.find_pretrained(config)
    if not encoder_init:  # Process 0 pretrained into a cache this process cannot see.
      raise configlib.ConfigError(
          f"config.pretrain.cache_dir: process {jax.process_index()} finds no pretrained encoder at "
          f"{pretrain_lib.cache_dir(config)}; point --config.pretrain.cache_dir at a folder every "
          "host shares (like the workdir).")
  try:
    return Experiment(config, workdir, dataset, encoder_init).run()
  except oracle_lib.AwaitingAnswers:
    return {"awaiting_answers": True}


def _print_dataset_summary(summary: dict) -> None:
  print(f"dataset {summary['dataset']}: {summary['classes']} classes")
  for split in ("train", "test"):
    s = summary[split]
    print(f"  {split}: {s['videos']} videos, {s['frames']} frames, {s['groups']} groups, "
          f"videos per class {s['videos_per_class']}")
