"""Benchmarks. Every benchmark prints readable lines and, as its LAST line, one JSON object.

Run:
  python -m claus_jax.bench model --config=configs/synthetic.py
  python -m claus_jax.bench model --config=configs/synthetic.py --config.data.frame_size=224 \\
      --config.model.width=1.0 --batch=1

Add a benchmark by writing ``def bench_x(config) -> dict`` and registering it with
``@register('x')``; it runs as ``python -m claus_jax.bench x --config=...``. Flags a benchmark needs
are defined here at module level.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from claus_jax import configlib
from claus_jax.models import build_model, count_params

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).")
_BATCH = flags.DEFINE_integer("batch", 0, "Clips per call; 0 = config.train.batch_size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after one warm-up; the median is used.")

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
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get("flops", 0.0))
  jax.block_until_ready(compiled(*args))  # Warm-up.
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return {"compile_s": compile_s, "seconds": statistics.median(times), "flops": flops}


@register("model")
def bench_model(config: ml_collections.ConfigDict) -> dict:
  """Forward (inference) and forward+backward (training mode) time, FLOPs and size of the detector."""
  model = build_model(config)
  batch = _BATCH.value or config.train.batch_size
  size = config.data.frame_size
  video = jax.random.uniform(jax.random.key(0), (batch, config.model.clip_length, size, size, 3),
                             minval=-1.0, maxval=1.0)
  variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, video, train=False))(
      jax.random.key(config.seed))
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
  return result


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise app.UsageError(f"usage: python -m claus_jax.bench {{{','.join(BENCHMARKS)}}} "
                         "--config=configs/....py")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/synthetic.py")
  config = configlib.validate(_CONFIG.value)
  result = BENCHMARKS[argv[1]](config)
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  app.run(main)
