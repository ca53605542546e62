"""Benchmarks. Every benchmark prints readable lines and, as its LAST line, one JSON object.

Run:
  python -m claus_jax.bench model --config=configs/synthetic.py
  python -m claus_jax.bench model --config=configs/synthetic.py --config.data.frame_size=224 \\
      --config.model.width=1.0 --batch=1
  python -m claus_jax.bench model --config=configs/ucf101_24.py --config.data.root=/tmp --batch=1 \\
      --profile
  python -m claus_jax.bench train --config=configs/synthetic.py
  python -m claus_jax.bench uncertainty --config=configs/synthetic.py
  python -m claus_jax.bench uncertainty --config=configs/synthetic.py --config.data.frame_size=224 \\
      --config.model.width=1.0 --batch=1

Subcommands:
  model        forward / forward+backward time, FLOPs and size of the detector; with --profile, a
               per-layer-group roofline of the eval forward and each group's backward time
               (:func:`layer_profile`; --no-profile_backward skips the backward). A paper
               config gives the full-size model; it reads no data, so any existing data.root does.
  train        train-step time, the clips/s the input pipeline delivers (ClipSampler on the config's
               real dataset, prefetching workers on) and end-to-end training clips/s.
  uncertainty  R sequential full MC-dropout passes (the authors' way) against the shared-encoder,
               vmapped scorer; encoder/head times; peak memory of scoring a 1x and a 10x pool, each
               in its own child process (peak RSS on CPU, device peak bytes on an accelerator).
  chunks       scorer clips/s and XLA scratch memory over a grid of uncertainty.pass_chunk and
               uncertainty.clip_chunk values (how their defaults were chosen).

Add a benchmark by writing ``def bench_x(config) -> dict`` and registering it with
``@register('x')``; it runs as ``python -m claus_jax.bench x --config=...``. Flags a benchmark needs
are defined here at module level.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from claus_jax import configlib
from claus_jax import models
from claus_jax import parallel
from claus_jax.models import build_model, count_params
from claus_jax.roofline import format_profile, layer_profile, median_times, xla_flops

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).")
_BATCH = flags.DEFINE_integer("batch", 0, "Clips per call; 0 = config.train.batch_size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after one warm-up; the median is used.")
_STEPS = flags.DEFINE_integer("steps", 20, "train: batches drawn from the pipeline and training steps "
                              "run end to end.")
_PASS_CHUNKS = flags.DEFINE_list("pass_chunks", ["1", "2", "5", "10"],
                                 "chunks: uncertainty.pass_chunk values to try.")
_CLIP_CHUNKS = flags.DEFINE_list("clip_chunks", ["1", "4", "8", "16"],
                                 "chunks: uncertainty.clip_chunk values (clips per batch) to try.")
_PROFILE = flags.DEFINE_bool("profile", False, "model: also time each layer group of the eval "
                             "forward beside this machine's 2-D conv and matmul of its shapes.")
_PROFILE_BACKWARD = flags.DEFINE_bool("profile_backward", True, "model --profile: also time each "
                                      "group's backward (gradients of its parameters and inputs).")
_POOL_VIDEOS = flags.DEFINE_integer("pool_videos", 4, "uncertainty: videos in the 1x scoring pool "
                                    "(the 10x pool has ten times as many); 0 = skip the memory runs.")

BENCHMARKS: dict[str, Callable[[ml_collections.ConfigDict], dict]] = {}


def register(name: str):
  """Decorator adding a benchmark ``fn(config) -> dict`` under a subcommand name."""
  def wrap(fn):
    BENCHMARKS[name] = fn
    return fn
  return wrap


def compile_and_time(fn: Callable, *args, repeats: int = 3) -> dict:
  """Compiles ``fn`` (jitted) for ``args``, then times it; FLOPs from XLA's cost analysis.

  Returns:
    {'compile_s', 'seconds' (median wall time per call), 'flops' (per call; 0 if XLA gives none)}.
  """
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  flops = xla_flops(compiled)
  jax.block_until_ready(compiled(*args))  # Warm-up.
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return {"compile_s": compile_s, "seconds": statistics.median(times), "flops": flops}


def _fresh_variables(model, config: ml_collections.ConfigDict) -> dict:
  """The detector's initial variables at the config's clip shape, from ``config.seed``."""
  return models.init_variables(model, jax.random.key(config.seed),
                               clip_length=config.model.clip_length,
                               frame_size=config.data.frame_size)


@register("model")
def bench_model(config: ml_collections.ConfigDict) -> dict:
  """Forward (inference) and forward+backward (training mode) time, FLOPs and size of the detector."""
  model = build_model(config)
  batch = _BATCH.value or config.train.batch_size
  size = config.data.frame_size
  video = jax.random.uniform(jax.random.key(0), (batch, config.model.clip_length, size, size, 3),
                             minval=-1.0, maxval=1.0)
  variables = _fresh_variables(model, config)
  params = count_params(variables["params"])

  def forward(v, x):
    return model.apply(v, x, train=False)

  def loss(p, batch_stats, x, key):  # A stand-in touching every output, as training does.
    out, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                               rngs={"dropout": key}, mutable=["batch_stats"])
    value = (jnp.mean(jax.nn.sigmoid(out["seg_logits"])) + jnp.mean(out["class_probs"])
             + 1e-3 * jnp.mean(out["latent"] ** 2))
    return value, updates

  def forward_backward(p, batch_stats, x, key):
    return jax.grad(loss, has_aux=True)(p, batch_stats, x, key)

  fwd = compile_and_time(forward, variables, video, repeats=_REPEATS.value)
  bwd = compile_and_time(forward_backward, variables["params"], variables["batch_stats"], video,
                         jax.random.key(1), repeats=_REPEATS.value)
  result = {"bench": "model", "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind), "frame_size": size,
            "width": config.model.width, "num_classes": config.model.num_classes,
            "primary_caps": config.model.primary_caps, "dtype": config.model.dtype,
            "batch": batch, "params": params}
  for name, r in (("fwd", fwd), ("fwd_bwd", bwd)):
    result[f"{name}_s_per_clip"] = r["seconds"] / batch
    result[f"{name}_gflop_per_clip"] = r["flops"] / batch / 1e9
    result[f"{name}_gflop_per_s"] = r["flops"] / r["seconds"] / 1e9 if r["seconds"] else 0.0
    result[f"{name}_compile_s"] = r["compile_s"]
  print(f"model: {params / 1e6:.2f} M params, {size}x{size}x{config.model.clip_length} clips, "
        f"batch {batch}, width {config.model.width}, {result['device']}")
  for name in ("fwd", "fwd_bwd"):
    print(f"  {name:8s} {result[name + '_s_per_clip'] * 1e3:9.1f} ms/clip  "
          f"{result[name + '_gflop_per_clip']:8.2f} GFLOP/clip  "
          f"{result[name + '_gflop_per_s']:7.1f} GFLOP/s  (compile {result[name + '_compile_s']:.1f} s)")
  if _PROFILE.value:
    result["profile"] = layer_profile(model, variables, video, repeats=_REPEATS.value,
                                      backward=_PROFILE_BACKWARD.value)
    print("\n".join(format_profile(result["profile"])))
  return result


def _round0_sampler(config: ml_collections.ConfigDict, batch: int):
  """The config's real train split and a ClipSampler over its round-0 labelled set (as a run has;
  with ``loss.ssl.enabled`` also over the rest of the split's frames, unlabelled)."""
  from claus_jax import data as data_lib
  from claus_jax import pool as pool_lib
  from claus_jax.data import clips as clips_lib
  from claus_jax import selection as selection_lib

  dataset = data_lib.get_dataset(config)
  index = dataset.train_index
  budget = selection_lib.BudgetParams.from_section(config.budget)
  pool = pool_lib.initial_pool(
      index.video_ids, index.num_frames, selection_lib.initial_video_count(budget, len(index)),
      selection_lib.initial_frame_count(budget, int(index.num_frames.sum())), seed=config.seed)
  position = {v: i for i, v in enumerate(index.video_ids)}
  items = [(position[v], pool.labelled_frames(v)) for v in pool.labelled_video_ids()]
  ssl = config.loss.ssl
  sampler = clips_lib.ClipSampler(
      dataset.train, items, clips_lib.ClipParams.from_config(config), seed=config.seed,
      round_index=0, batch_size=batch,
      unlabelled=clips_lib.unlabelled_items(index.num_frames, items) if ssl.enabled else None,
      unlabelled_batch_size=ssl.unlabelled_batch_size)
  return dataset, sampler


@register("train")
def bench_train(config: ml_collections.ConfigDict) -> dict:
  """Train-step time, input-pipeline clips/s and end-to-end training clips/s at the config's size.

  * pipeline: :func:`claus_jax.data.clips.measure_throughput` of a ClipSampler over the config's real
    train split (round-0 labelled set), with ``train.data_workers`` prefetching threads, drained by a
    consumer that never waits;
  * step: the jitted, donated :func:`claus_jax.train.train_step` on a batch already on the device
    (median of ``--repeats``);
  * train: ``--steps`` steps fed by the prefetching pipeline, fetching the metrics every
    ``train.log_every`` steps and at the end, as :func:`claus_jax.train.fit` does (no
    checkpoints): what a run gets.
  """
  from claus_jax import train as train_lib
  from claus_jax.data import clips as clips_lib

  batch = _BATCH.value or config.train.batch_size
  steps = max(1, _STEPS.value)
  dataset, sampler = _round0_sampler(config, batch)
  pipe = clips_lib.measure_throughput(sampler, num_batches=steps)

  model = build_model(config)
  params = train_lib.TrainParams.from_config(config)
  state = train_lib.create_state(params, model, jax.random.key_data(jax.random.key(config.seed)),
                                 len(dataset.train_index))
  # The round's own step: its learning-rate schedule (train.lr_schedule) over a round's length.
  step_fn = train_lib.make_train_step(params, parallel.make_mesh(jax.local_devices()[:1]),
                                     train_lib.round_steps(params, sampler.steps_per_epoch))
  epoch = jnp.asarray(0.0, jnp.float32)
  device_batch = jax.device_put(sampler.batch_at(0))
  t0 = time.perf_counter()
  state, metrics = step_fn(state, device_batch, epoch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(max(1, _REPEATS.value)):
    t0 = time.perf_counter()
    state, metrics = step_fn(state, device_batch, epoch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)

  t0 = time.perf_counter()
  window = []
  for done, batch_np in enumerate(sampler.iterate(1, steps), start=1):
    state, metrics = step_fn(state, batch_np, epoch)
    window.append(metrics)
    if done % config.train.log_every == 0:
      jax.device_get(window)
      window = []
  jax.device_get(window)  # The last window: fit fetches at the last step.
  train_s = time.perf_counter() - t0

  step_clips = batch / step_s
  result = {"bench": "train", "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind), "frame_size": config.data.frame_size,
            "lr_schedule": config.train.get("lr_schedule", "constant"),
            "width": config.model.width, "batch": batch, "steps": steps,
            "ssl": bool(config.loss.ssl.enabled),
            "data_workers": config.train.data_workers, "prefetch": config.train.prefetch,
            "labelled_clips": sampler.num_clips,
            "step_s": step_s, "step_compile_s": compile_s, "step_clips_per_s": step_clips,
            "pipeline_clips_per_s": pipe["clips_per_s"],
            "pipeline_first_batch_s": pipe["first_batch_s"],
            "pipeline_ratio": pipe["clips_per_s"] / step_clips,
            "train_clips_per_s": steps * batch / train_s}
  teacher = (f" + {sampler.unlabelled_batch_size} unlabelled (mean teacher)"
             if sampler.unlabelled is not None else "")
  print(f"train: {config.data.frame_size}x{config.data.frame_size} clips, batch {batch}{teacher}, "
        f"width {config.model.width}, {sampler.num_clips} labelled clips, {result['lr_schedule']} "
        f"learning rate, {result['device']}")
  print(f"  train step       {step_s * 1e3:9.1f} ms/step  {step_clips:8.1f} clips/s  "
        f"(compile {compile_s:.1f} s)")
  print(f"  input pipeline   {pipe['clips_per_s']:8.1f} clips/s with {config.train.data_workers} "
        f"workers (first batch {pipe['first_batch_s']:.2f} s)")
  print(f"  pipeline / step  {result['pipeline_ratio']:8.2f}x  (target >= 3x)")
  print(f"  training         {result['train_clips_per_s']:8.1f} clips/s over {steps} steps")
  return result


# ------------------------------------------------------------------------------------ uncertainty


def synthetic_lengths(config: ml_collections.ConfigDict, num_videos: int, seed: int = 0
                      ) -> np.ndarray:
  """``(num_videos,)`` frame counts of :func:`synthetic_records` (known before any video is made),
  drawn from ``[data.synthetic.min_frames, max_frames]``."""
  syn = config.data.synthetic
  return np.random.default_rng([seed, 0]).integers(syn.min_frames, syn.max_frames + 1, num_videos)


def synthetic_records(config: ml_collections.ConfigDict, num_videos: int, seed: int = 0):
  """Yields ``num_videos`` VideoRecords of the synthetic dataset's size (random pixels, no labels).

  Lengths are :func:`synthetic_lengths`, frames are ``(T, frame_size, frame_size, 3) uint8``; made
  one at a time so the pool never sits in memory.
  """
  from claus_jax.data.record import VideoRecord

  size = config.data.frame_size
  rng = np.random.default_rng([seed, 1])
  for i, t in enumerate(int(t) for t in synthetic_lengths(config, num_videos, seed)):
    frames = rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8)
    yield VideoRecord(f"v{i:05d}", f"g{i:05d}", 0, frames, np.zeros((t, size, size), np.uint8),
                      np.full((1, t, 4), np.nan, np.float32), np.zeros(t, bool), (0, t))


def peak_rss_mb() -> float:
  """This process's peak resident set size in MB.

  ``/proc/self/status`` VmHWM where there is one: it belongs to the process image, whereas Linux
  carries ``getrusage(RUSAGE_SELF).ru_maxrss`` over ``exec`` from the forked parent, so a child's
  ru_maxrss would report the parent's size.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  per_mb = 2.0**20 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB elsewhere
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb


def pool_memory(config: ml_collections.ConfigDict, num_videos: int, batch: int) -> dict:
  """Scores a pool of ``num_videos`` synthetic-size videos with :class:`uncertainty.Scorer`.

  Meant to run alone in a child process (see :func:`run_pool_memory`), so its peak memory is that of
  this pool only. One extra video is scored first (compiling, or loading the program from the
  persistent cache), so ``seconds`` is steady state.

  Returns:
    {'videos', 'clips', 'seconds', 'peak_rss_mb' (this process), 'device_peak_mb' (accelerator
    peak bytes in use; None where the backend does not report it)}.
  """
  from claus_jax import uncertainty

  model = build_model(config)
  variables = _fresh_variables(model, config)
  scorer = uncertainty.Scorer(model, variables, uncertainty.ScoreParams.from_config(config),
                              batch_size=batch)
  key = jax.random.key_data(jax.random.key(1))
  scorer.score_videos(synthetic_records(config, 1, seed=1), [0], key)  # Compile.
  t0 = time.perf_counter()
  # With the frame counts the scorer plans the pool up front and reads one video at a time.
  results = scorer.score_videos(synthetic_records(config, num_videos), range(num_videos), key,
                                num_frames=synthetic_lengths(config, num_videos))
  seconds = time.perf_counter() - t0
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (CPU backends may not implement it)
    stats = {}
  peak = stats.get("peak_bytes_in_use")
  return {"videos": len(results),
          "clips": int(sum(scorer.layout(len(r.entropy)).num_clips for r in results)),
          "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
          "device_peak_mb": None if peak is None else peak / 2**20}


def _pool_memory_child() -> None:
  """Child entry: ``python -c '...' CONFIG_PICKLE NUM_VIDEOS BATCH``; prints one JSON line."""
  from claus_jax import experiment

  experiment.quiet_library_logs()
  experiment.enable_compilation_cache()  # The parent compiled the scorer into it.
  path, num_videos, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  with open(path, "rb") as f:
    config = pickle.load(f)
  print(json.dumps(pool_memory(config, num_videos, batch)))


def run_pool_memory(config: ml_collections.ConfigDict, num_videos: int, batch: int) -> dict:
  """Runs :func:`pool_memory` in a fresh Python process and returns its result."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "config.pkl")
    with open(path, "wb") as f:
      pickle.dump(config, f)
    cmd = [sys.executable, "-c", "from claus_jax import bench; bench._pool_memory_child()",
           path, str(num_videos), str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"pool-memory child ({num_videos} videos) failed with exit code "
                       f"{proc.returncode}:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


@register("uncertainty")
def bench_uncertainty(config: ml_collections.ConfigDict) -> dict:
  """Sequential full MC passes (a) against the shared-encoder vmapped scorer (b), in one process.

  (a) is the authors' way: R jitted full forward passes (encoder + stochastic head) of the batch,
  one pass at a time, each followed by a jitted update of the running per-pixel means, then the
  frame scores at R passes. (b) is ``uncertainty.make_score_fn`` jitted: one encoder pass, R head
  passes vmapped in chunks of ``uncertainty.pass_chunk``, and every R' <= R and every threshold of
  the sweep on top. E and H are the jitted encoder and one stochastic head pass, per clip. The ideal
  ratio R(E + H) / (E + R H) assumes (b) saves exactly the R - 1 encoder passes and nothing more;
  batching the passes can beat it where small per-clip ops leave the CPU idle. (c) is the NoiseAug
  scorer (``uncertainty.source='noise'``) on the same clips: R noisy copies, each a full eval-mode
  forward, vmapped in the same chunks; printed as its time over (b)'s.
  """
  from claus_jax import uncertainty

  model = build_model(config)
  passes = config.uncertainty.passes
  batch = _BATCH.value or config.uncertainty.clip_chunk
  size = config.data.frame_size
  video = jax.random.randint(jax.random.key(2), (batch, config.model.clip_length, size, size, 3),
                             0, 256).astype(jnp.uint8)
  variables = _fresh_variables(model, config)
  # (a) and (b) are MC dropout whatever uncertainty.source says; (c) is NoiseAug.
  score_params = dataclasses.replace(uncertainty.ScoreParams.from_config(config),
                                     source="mc_dropout")
  thresholds = score_params.thresholds
  keys = jnp.asarray(uncertainty.clip_keys(jax.random.key_data(jax.random.key(3)), 0,
                                           np.arange(batch)))
  key = jax.random.key_data(jax.random.key(4))
  thr = jnp.asarray([config.uncertainty.bg_threshold], jnp.float32)
  form = config.uncertainty.form

  # (a) the authors' way.
  def one_pass(v, x, k):
    out = model.apply(v, models.preprocess(x), rngs={"dropout": k}, method=uncertainty.mc_forward)
    return jax.nn.sigmoid(out["seg_logits"])

  def accumulate(sums, p):
    return sums[0] + p, sums[1] - jnp.log(jnp.clip(p, 1e-6, 1.0))

  def finish(sums):
    return uncertainty.frame_scores_from_means(sums[0] / passes, sums[1] / passes, thr, form)

  pass_fn, acc_fn, finish_fn = jax.jit(one_pass), jax.jit(accumulate), jax.jit(finish)
  frame_shape = video.shape[:4]

  def sequential():
    sums = (jnp.zeros(frame_shape), jnp.zeros(frame_shape))
    for r in range(passes):
      sums = acc_fn(sums, pass_fn(variables, video, jax.random.fold_in(key, r)))
    return jax.block_until_ready(finish_fn(sums))

  # (b) the shared-encoder vmapped scorer.
  score_fn = jax.jit(uncertainty.make_score_fn(model, score_params, thresholds))

  def vmapped():
    return jax.block_until_ready(score_fn(variables, video, keys))

  # (c) NoiseAug (uncertainty.source='noise'): R noisy copies through the whole eval-mode model.
  noise_params = dataclasses.replace(score_params, source="noise")
  noise_fn = jax.jit(uncertainty.make_score_fn(model, noise_params, noise_params.thresholds))

  def noise():
    return jax.block_until_ready(noise_fn(variables, video, keys))

  # E and H.
  encode_fn = jax.jit(lambda v, x: model.apply(v, models.preprocess(x), train=False,
                                               method="encode"))
  head_fn = jax.jit(lambda v, f, k: model.apply(v, f, train=True, rngs={"dropout": k},
                                                method="head"))
  feats = jax.block_until_ready(encode_fn(variables, video))

  t0 = time.perf_counter()
  sequential()  # Compiles (a) (also its warm-up in _median_times).
  vmapped()
  noise()
  compile_s = time.perf_counter() - t0
  seconds = median_times({
      "sequential": sequential, "vmapped": vmapped, "noise": noise,
      "encoder": lambda: jax.block_until_ready(encode_fn(variables, video)),
      "head": lambda: jax.block_until_ready(head_fn(variables, feats, key)),
  }, _REPEATS.value)
  e, h = seconds["encoder"] / batch, seconds["head"] / batch
  seq_clips = batch / seconds["sequential"]
  vm_clips = batch / seconds["vmapped"]
  noise_clips = batch / seconds["noise"]
  result = {"bench": "uncertainty", "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind), "frame_size": size,
            "width": config.model.width, "batch": batch, "passes": passes,
            "pass_chunk": uncertainty.pass_chunk_size(passes, config.uncertainty.pass_chunk),
            "clip_chunk": config.uncertainty.clip_chunk, "thresholds": len(thresholds),
            "encoder_s_per_clip": e, "head_s_per_clip": h,
            "sequential_clips_per_s": seq_clips, "vmapped_clips_per_s": vm_clips,
            "noise_clips_per_s": noise_clips, "noise_cost_vs_vmapped": vm_clips / noise_clips,
            "speedup": vm_clips / seq_clips,
            "ideal_speedup": passes * (e + h) / (e + passes * h), "compile_s": compile_s}
  print(f"uncertainty: R={passes}, {size}x{size} clips, batch {batch}, width {config.model.width}, "
        f"pass_chunk {result['pass_chunk']}, {result['device']}")
  print(f"  encoder E {e * 1e3:9.2f} ms/clip   head H {h * 1e3:9.2f} ms/clip")
  print(f"  (a) sequential full passes {seq_clips:9.4g} clips/s")
  print(f"  (b) shared-encoder vmapped {vm_clips:9.4g} clips/s")
  print(f"  (c) NoiseAug, R noisy copies {noise_clips:9.4g} clips/s")
  print(f"  speedup (b)/(a) {result['speedup']:.2f}x, ideal R(E+H)/(E+RH) "
        f"{result['ideal_speedup']:.2f}x; NoiseAug costs {result['noise_cost_vs_vmapped']:.2f}x "
        "the time of (b)")

  if _POOL_VIDEOS.value > 0:
    # Compile the scorer here, so that with the persistent compilation cache on (the default) both
    # children load the same program instead of compiling it: the compiler's own peak is not part
    # of scoring and would otherwise hide the pool-size effect under a constant.
    uncertainty.Scorer(model, variables, uncertainty.ScoreParams.from_config(config),
                       batch_size=batch).score_videos(
        synthetic_records(config, 1, seed=1), [0], key)
    mem = {}
    for scale in (1, 10):
      mem[scale] = run_pool_memory(config, scale * _POOL_VIDEOS.value, batch)
      peak = mem[scale]["device_peak_mb"] or mem[scale]["peak_rss_mb"]
      result[f"peak_mem_mb_{scale}x"] = peak
      result[f"peak_rss_mb_{scale}x"] = mem[scale]["peak_rss_mb"]
      result[f"pool_clips_{scale}x"] = mem[scale]["clips"]
      result[f"pool_clips_per_s_{scale}x"] = mem[scale]["clips"] / max(mem[scale]["seconds"], 1e-9)
    result["peak_mem_kind"] = "device" if mem[1]["device_peak_mb"] else "rss"
    result["peak_mem_ratio"] = result["peak_mem_mb_10x"] / result["peak_mem_mb_1x"]
    for scale in (1, 10):
      print(f"  pool {scale:2d}x: {mem[scale]['videos']:4d} videos, {mem[scale]['clips']:5d} clips, "
            f"peak {result['peak_mem_kind']} {result[f'peak_mem_mb_{scale}x']:8.1f} MB, "
            f"{result[f'pool_clips_per_s_{scale}x']:.2f} clips/s")
    print(f"  peak memory 10x / 1x: {result['peak_mem_ratio']:.3f} (target <= 1.2)")
  else:
    result["peak_mem_mb_1x"] = result["peak_mem_mb_10x"] = None
  return result


@register("chunks")
def bench_chunks(config: ml_collections.ConfigDict) -> dict:
  """Chooses ``uncertainty.pass_chunk`` and ``clip_chunk``: scorer clips/s and XLA scratch memory.

  For every pair of ``--pass_chunks`` x ``--clip_chunks`` the jitted scorer of
  ``uncertainty.make_score_fn`` is compiled for a batch of ``clip_chunk`` clips; XLA's memory
  analysis gives the program's scratch (temp) bytes, which is what the chunk sizes bound, and the
  programs are timed round-robin in this one process. Pass-chunk values that do not divide R are
  rounded down to a divisor, as the scorer does.
  """
  from claus_jax import uncertainty

  model = build_model(config)
  passes = config.uncertainty.passes
  size = config.data.frame_size
  variables = _fresh_variables(model, config)
  thresholds = uncertainty.ScoreParams.from_config(config).thresholds
  pass_chunks = sorted({uncertainty.pass_chunk_size(passes, int(p)) for p in _PASS_CHUNKS.value})
  clip_chunks = sorted({int(c) for c in _CLIP_CHUNKS.value})
  fns, info = {}, {}
  for pc in pass_chunks:
    for cc in clip_chunks:
      cfg = config.copy_and_resolve_references()
      cfg.uncertainty.pass_chunk = pc
      video = jax.random.randint(jax.random.key(2), (cc, config.model.clip_length, size, size, 3),
                                 0, 256).astype(jnp.uint8)
      keys = jnp.asarray(uncertainty.clip_keys(jax.random.key_data(jax.random.key(3)), 0,
                                               np.arange(cc)))
      t0 = time.perf_counter()
      score_fn = uncertainty.make_score_fn(model, uncertainty.ScoreParams.from_config(cfg),
                                           thresholds)
      compiled = jax.jit(score_fn).lower(
          variables, video, keys).compile()
      compile_s = time.perf_counter() - t0
      mem = compiled.memory_analysis()
      temp = getattr(mem, "temp_size_in_bytes", 0) if mem is not None else 0
      name = f"p{pc}_c{cc}"
      info[name] = {"pass_chunk": pc, "clip_chunk": cc, "temp_mb": temp / 2**20,
                    "compile_s": compile_s}
      fns[name] = (lambda c=compiled, v=video, k=keys: jax.block_until_ready(c(variables, v, k)))
  seconds = median_times(fns, _REPEATS.value)
  print(f"chunks: R={passes}, {size}x{size} clips, width {config.model.width}, "
        f"{jax.devices()[0].device_kind}")
  print("  pass_chunk clip_chunk   clips/s   scratch MB")
  for name, row in info.items():
    row["clips_per_s"] = row["clip_chunk"] / seconds[name]
    print(f"  {row['pass_chunk']:10d} {row['clip_chunk']:10d} {row['clips_per_s']:9.4g} "
          f"{row['temp_mb']:12.1f}")
  best = max(info.values(), key=lambda r: r["clips_per_s"])
  print(f"  fastest: pass_chunk {best['pass_chunk']}, clip_chunk {best['clip_chunk']}")
  return {"bench": "chunks", "backend": jax.default_backend(),
          "device": str(jax.devices()[0].device_kind), "frame_size": size,
          "width": config.model.width, "passes": passes, "results": list(info.values()),
          "fastest": {"pass_chunk": best["pass_chunk"], "clip_chunk": best["clip_chunk"]}}


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise app.UsageError(f"usage: python -m claus_jax.bench {{{','.join(BENCHMARKS)}}} "
                         "--config=configs/....py")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/synthetic.py")
  config = configlib.validate(_CONFIG.value)
  from claus_jax import experiment  # A run's setup: persistent compilation cache, quiet libraries.
  experiment.quiet_library_logs()
  experiment.enable_compilation_cache()
  result = BENCHMARKS[argv[1]](config)
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  app.run(main)
