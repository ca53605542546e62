"""Detector speed and memory on one accelerator: the measurements behind launch/device_check.sh.

  python launch/device_check.py                                   # paper size: 224x224x8, width 1, 24 classes
  python launch/device_check.py --frame_size=64 --width=0.25 --repeats=2   # a quick CPU run

Measures, in order (most important first, so a run cut short still reports them):
  1. forward and forward+backward (loss and gradients w.r.t. float32 parameters) time per clip,
     in float32 and in bfloat16 compute;
  2. MC-dropout scoring clips/s at R passes: the shared-encoder vmapped scorer (the project's) against
     R sequential full forward passes per clip (the authors' way), per scoring dtype;
  3. peak device memory after each measurement (``memory_stats()['peak_bytes_in_use']``, cumulative
     since the start; the host's peak RSS where the device has no memory stats, e.g. CPU).

Each measurement is one warm-up call (compile included, reported) then up to ``--repeats`` timed
calls, stopping early once ``--budget_s`` seconds are spent; a failing one (e.g. out of memory) is
reported as an error and the rest go on. The JSON (``$OUT/device_check.json`` when OUT is set, else
``--json``) is rewritten after every measurement; a Markdown table is printed last.

Needs only jax, numpy, flax, ml_collections and absl (no orbax, optax, tfds): it imports the model,
losses and scorer modules of this checkout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def _parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--frame_size", type=int, default=224, help="square frame side (paper 224)")
  p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (paper 1.0)")
  p.add_argument("--num_classes", type=int, default=24, help="class capsules (UCF-101-24: 24)")
  p.add_argument("--primary_caps", type=int, default=32, help="primary capsule types (paper 32)")
  p.add_argument("--batch", type=int, default=8, help="clips per forward/backward call (paper 8)")
  p.add_argument("--score_batch", type=int, default=4, help="clips per scoring call")
  p.add_argument("--passes", type=int, default=10, help="MC-dropout passes R (paper 10)")
  p.add_argument("--pass_chunk", type=int, default=10, help="passes vmapped at once")
  p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes for forward/backward")
  p.add_argument("--score_dtypes", default="float32,bfloat16", help="compute dtypes for scoring")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
  p.add_argument("--budget_s", type=float, default=20.0, help="stop a measurement's repeats after this")
  p.add_argument("--json", default="", help="JSON output path (default $OUT/device_check.json)")
  return p.parse_args(argv)


def _config(args, dtype: str):
  from claus_jax import configlib, models
  c = configlib.base_config()
  c.data.frame_size = args.frame_size
  c.model.num_classes = args.num_classes
  c.model.width = args.width
  c.model.primary_caps = args.primary_caps
  c.model.dtype = dtype
  c.uncertainty.passes = args.passes
  c.uncertainty.pass_chunk = args.pass_chunk
  models.geometry(args.frame_size)  # Fails early, naming the field, on a bad frame size.
  return c


def _peak_bytes() -> tuple[int, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device"
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "host RSS"


def _time(fn, *args, repeats: int, budget_s: float) -> dict:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  while len(times) < repeats and sum(times) < budget_s:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return {"seconds": statistics.median(times), "first_call_s": first, "calls": len(times)}


def _inputs(args, batch: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  s = args.frame_size
  mask = np.zeros((batch, 8, s, s), np.float32)
  mask[:, :, s // 4:3 * s // 4, s // 3:2 * s // 3] = 1.0
  return {"video": rng.integers(0, 256, (batch, 8, s, s, 3), dtype=np.uint8),
          "pseudo_mask": mask, "weight": np.ones((batch, 8, s, s), np.float32),
          "label": (np.arange(batch) % args.num_classes).astype(np.int32),
          "cluster": np.full((batch,), -1, np.int32)}


def _init(model, args):
  from claus_jax import models
  x = models.preprocess(jnp.zeros((1, 8, args.frame_size, args.frame_size, 3), jnp.uint8))
  keys = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  return jax.jit(lambda x: model.init(keys, x, train=False))(x)


def measure_forward_backward(args, dtype: str) -> list[dict]:
  from claus_jax import losses, models
  config = _config(args, dtype)
  model = models.build_model(config)
  variables = _init(model, args)
  batch = jax.device_put(_inputs(args, args.batch))
  rows = []

  @jax.jit
  def forward(v, video):
    out = model.apply(v, models.preprocess(video), train=False)
    return out["seg_logits"], out["class_probs"]

  r = _time(forward, variables, batch["video"], repeats=args.repeats, budget_s=args.budget_s)
  rows.append({"measurement": "forward", "dtype": dtype, "batch": args.batch,
               "ms_per_clip": 1e3 * r["seconds"] / args.batch, **r})

  loss_params = losses.LossParams.from_section(config.loss)

  @jax.jit
  def forward_backward(v, b):
    def loss(params):
      out, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]},
                           models.preprocess(b["video"]), train=True,
                           rngs={"dropout": jax.random.PRNGKey(2)}, mutable=["batch_stats"])
      return losses.loss_fn(out, b, None, None, jnp.float32(1.0), loss_params)[0]
    return jax.value_and_grad(loss)(v["params"])

  r = _time(forward_backward, variables, batch, repeats=args.repeats, budget_s=args.budget_s)
  rows.append({"measurement": "forward+backward", "dtype": dtype, "batch": args.batch,
               "ms_per_clip": 1e3 * r["seconds"] / args.batch, **r})
  return rows


def measure_scoring(args, dtype: str) -> list[dict]:
  from claus_jax import models, uncertainty
  config = _config(args, dtype)
  model = models.build_model(config)
  variables = _init(model, args)
  b = args.score_batch
  video = jax.device_put(_inputs(args, b)["video"])
  keys = jax.device_put(uncertainty.clip_keys(jax.random.PRNGKey(3), 0, np.arange(b)))
  score_params = uncertainty.ScoreParams.from_config(config)
  score = jax.jit(uncertainty.make_score_fn(model, score_params, (score_params.threshold,)))
  r = _time(score, variables, video, keys, repeats=args.repeats, budget_s=args.budget_s)
  rows = [{"measurement": f"MC scoring, shared encoder + vmapped head (R={args.passes})",
           "dtype": dtype, "batch": b, "clips_per_s": b / r["seconds"], **r}]
  del score
  gc.collect()

  one = jax.jit(lambda v, x, k: jax.nn.sigmoid(model.apply(
      v, models.preprocess(x), rngs={"dropout": k}, method=uncertainty.mc_forward)["seg_logits"]))
  clip = video[:1]

  def sequential(v, x, key):  # The authors' way: R full forward passes, one clip at a time.
    return [one(v, x, jax.random.fold_in(key, r)) for r in range(args.passes)]

  r = _time(sequential, variables, clip, keys[0], repeats=args.repeats, budget_s=args.budget_s)
  rows.append({"measurement": f"MC scoring, {args.passes} sequential full passes", "dtype": dtype,
               "batch": 1, "clips_per_s": 1.0 / r["seconds"], **r})
  rows[0]["speedup_vs_sequential"] = rows[0]["clips_per_s"] / rows[1]["clips_per_s"]
  return rows


def _markdown(rows: list[dict], head: dict) -> str:
  lines = [f"device: {head['device']} ({head['backend']}), jax {head['jax']}; frame "
           f"{head['frame_size']}, width {head['width']}, {head['num_classes']} classes",
           "", "| measurement | dtype | batch | ms/clip | clips/s | first call s | peak memory GiB |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['measurement']} | {r['dtype']} | | error: {r['error'][:80]} | | | |")
      continue
    ms = r["ms_per_clip"] if "ms_per_clip" in r else 1e3 / r["clips_per_s"]
    cps = r["clips_per_s"] if "clips_per_s" in r else 1e3 / r["ms_per_clip"]
    extra = f" ({r['speedup_vs_sequential']:.1f}x)" if "speedup_vs_sequential" in r else ""
    lines.append(f"| {r['measurement']} | {r['dtype']} | {r['batch']} | {ms:.2f} | {cps:.2f}{extra} "
                 f"| {r['first_call_s']:.1f} | {r['peak_gib']:.2f} ({r['peak_kind']}) |")
  return "\n".join(lines)


def main(argv=None) -> int:
  args = _parse(argv)
  out = args.json or (os.path.join(os.environ["OUT"], "device_check.json")
                      if os.environ.get("OUT") else "")
  dev = jax.local_devices()[0]
  head = {"device": getattr(dev, "device_kind", str(dev)), "backend": jax.default_backend(),
          "jax": jax.__version__, "python": platform.python_version(),
          "frame_size": args.frame_size, "width": args.width, "num_classes": args.num_classes,
          "passes": args.passes}
  print(json.dumps(head), flush=True)
  plan = [(measure_forward_backward, d, ["forward", "forward+backward"])
          for d in args.dtypes.split(",") if d]
  plan += [(measure_scoring, d, ["MC scoring"]) for d in args.score_dtypes.split(",") if d]
  rows: list[dict] = []
  for fn, dtype, names in plan:
    t0 = time.perf_counter()
    try:
      new = fn(args, dtype)
    except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory; keep measuring)
      new = [{"measurement": n, "dtype": dtype, "error": f"{type(e).__name__}: {e}"} for n in names]
    peak, kind = _peak_bytes()
    for r in new:
      r.update(peak_gib=peak / 2**30, peak_kind=kind)
      print(json.dumps(r), flush=True)
    rows += new
    print(f"# {fn.__name__}({dtype}): {time.perf_counter() - t0:.0f} s", flush=True)
    gc.collect()
    if out:
      os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
      with open(out + ".tmp", "w") as f:
        json.dump({**head, "rows": rows}, f, indent=1)
      os.replace(out + ".tmp", out)
  print(_markdown(rows, head), flush=True)
  return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
