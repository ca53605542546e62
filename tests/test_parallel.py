"""Scale-out checks: bf16 numerics, the sharded train step, and two real processes on localhost.

The multi-device and multi-process checks run in child processes: the fake CPU device count
(``--xla_force_host_platform_device_count``) and ``jax.distributed.initialize`` must be set before
JAX starts. This file is also the child's program (``python tests/test_parallel.py <mode> ...``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import xla_flags
from tests.config_files import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(dtype: str = "float32"):
  from claus_jax import configlib
  c = configlib.base_config()
  c.data.frame_size = 32
  c.model.num_classes = c.data.synthetic.num_classes = 3
  c.model.width = 0.125
  c.model.primary_caps = 4
  c.model.dtype = dtype
  c.train.batch_size = 4
  # The sharding under test does not depend on the routing sign, but the float32 floor of the
  # sharded-step check does: with the 'em' sign (the base default) this random tiny model's gradient
  # at dropout 0.5 moved by 4.2% between 1 and 4 devices against a dropout-0 row-permutation floor of
  # 0.2%, while the loss (so the dropout masks) agreed to 1.2e-5; with 'port' the same figures are
  # 0.36% against 1.7%. The floor is measured at dropout 0 (a permutation would move the masks), so
  # the check needs a model whose gradient is no more reorder-sensitive with dropout than without.
  c.model.routing_sign = "port"
  return c


def fixed_batch(config, batch: int = 4, seed: int = 0) -> dict:
  """A training batch with the ClipSampler's fields (random content, fixed by ``seed``)."""
  rng = np.random.default_rng(seed)
  s, length = config.data.frame_size, config.model.clip_length
  pseudo = np.zeros((batch, length, s, s), np.float32)
  pseudo[:, :, s // 4:3 * s // 4, s // 3:2 * s // 3] = 1.0  # A box-shaped actor.
  return {
      "video": rng.integers(0, 256, (batch, length, s, s, 3), dtype=np.uint8),
      "pseudo_mask": pseudo,
      "weight": rng.uniform(0.2, 1.0, (batch, length, s, s)).astype(np.float32),
      "labelled": np.ones((batch, length), bool),
      "label": (np.arange(batch) % config.model.num_classes).astype(np.int32),
      "video_index": np.arange(batch, dtype=np.int32),
  }


def _run_child(args: list[str], env_extra: dict) -> subprocess.Popen:
  env = {**os.environ, **env_extra, "PYTHONPATH": ROOT}
  return subprocess.Popen([sys.executable, os.path.abspath(__file__)] + args, env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen, timeout: float = 600.0) -> str:
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    raise AssertionError(f"child timed out after {timeout} s:\n{out[-4000:]}")
  assert proc.returncode == 0, f"child failed (rc {proc.returncode}):\n{out[-6000:]}"
  return out


# ------------------------------------------------------------------------------------ bf16


def test_bfloat16_loss_within_2_percent_and_params_stay_float32():
  import jax
  import jax.numpy as jnp

  from claus_jax import losses, models, train

  c32, c16 = tiny_config("float32"), tiny_config("bfloat16")
  m32, m16 = models.build_model(c32), models.build_model(c16)
  batch = fixed_batch(c32)
  video = models.preprocess(jnp.asarray(batch["video"]))
  keys = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  variables = jax.jit(lambda x: m32.init(keys, x, train=False))(video[:1])
  vars16 = jax.jit(lambda x: m16.init(keys, x, train=False))(video[:1])
  # bf16 is a compute dtype only: the bf16 model's own parameters are float32 too.
  assert {x.dtype for x in jax.tree.leaves(vars16)} == {jnp.dtype(jnp.float32)}
  lbatch = {**batch, "cluster": np.full((4,), -1, np.int32)}

  def loss(model):
    def f(v, x):
      out = model.apply(v, x, train=False)
      return losses.loss_fn(out, lbatch, None, None, jnp.float32(1.0),
                            losses.LossParams.from_section(c32.loss))
    return jax.jit(f)(variables, video)

  (t32, p32), (t16, p16) = loss(m32), loss(m16)
  t32, t16 = float(t32), float(t16)
  assert np.isfinite(t16) and t32 > 0
  assert abs(t16 - t32) / t32 < 0.02, (t32, t16)
  for part in ("bce", "dice", "classification"):
    assert abs(float(p16[part]) - float(p32[part])) <= 0.02 * abs(float(p32[part])) + 1e-4, part

  # A bf16 train step keeps parameters, Adam moments and batch statistics in float32 (traced
  # abstractly: the dtypes are decided at trace time, no compilation needed).
  params16 = train.TrainParams.from_config(c16)
  state = train.create_state(params16, m16, jax.random.PRNGKey(0), num_videos=4, variables=variables)
  new_state, metrics = jax.eval_shape(
      lambda s, b: train.train_step(s, b, jnp.float32(0.0), params16), state, batch)
  assert metrics["total"].dtype == jnp.float32
  for tree in (new_state.params, new_state.opt_state, new_state.batch_stats):
    dtypes = {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes


# ------------------------------------------------------------------- sharded train step (4 dev)

# The 1- vs 4-device check is bounded by the float32 noise of this very step, measured in the same
# run: the single-device step on the batch with its rows permuted (every permutation of the 4 rows),
# which is mathematically the same step with other summation orders. The gradient of this model is
# ill-conditioned (EM routing), so float32 reorderings move it by 0.07% to 1.7% of its norm depending
# on the order alone; the largest of the 23 permutations is the floor. Measured on a 2-core Xeon
# (float32, tiny config): floor loss 1.2e-5, update 1.7%; the 4-device step differed by 7.7e-6 and
# 0.97%, inside the permutations' spread. A real sharding bug is far above 6x the floor: gradients
# summed over the devices instead of averaged move the update by 300% (170x the floor), per-device
# BatchNorm statistics move the loss by 5.9e-3 (490x) and the update by 164% (95x).
FLOOR_MULTIPLE = 6.0
# Absolute floors (relative units) for a machine whose reorderings happen to agree exactly.
MIN_LOSS_FLOOR, MIN_UPDATE_FLOOR = 1e-6, 1e-4


def sharding_bounds(floor: dict) -> dict:
  """The largest loss and update differences the sharded step may show, from the measured floor."""
  return {"loss": FLOOR_MULTIPLE * max(floor["loss"], MIN_LOSS_FLOOR),
          "update": FLOOR_MULTIPLE * max(floor["update"], MIN_UPDATE_FLOOR)}


def sharding_gaps(diff: dict, floor: dict) -> list[str]:
  """The differences of ``diff`` (relative loss and update gaps to one device) above their bound.

  Empty when the sharded step is the single-device step up to float32 reordering.
  """
  bounds = sharding_bounds(floor)
  return [f"{what} differs by {diff[what]:.3g} (relative), above {FLOOR_MULTIPLE:g} x the float32 "
          f"reordering floor {floor[what]:.3g} = {bounds[what]:.3g}"
          for what in ("loss", "update") if not diff[what] <= bounds[what]]


def _per_device_batchnorm_step(model, config, mesh):
  """A wrong data-parallel step: every device normalises with its own rows' BatchNorm statistics.

  ``shard_map`` gives each device its shard of the batch; the loss and gradient are computed there
  (BatchNorm sees one clip) and averaged over devices, as a pmap step without ``axis_name`` would.
  Returns ``f(state, sharded_batch) -> (loss, grads)`` for dropout 0.
  """
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P

  from claus_jax import losses, models, parallel

  def local(params, batch_stats, centres, batch):
    batch = {**batch, "cluster": jnp.full(batch["label"].shape, -1, jnp.int32)}

    def loss(p):
      out, _ = model.apply({"params": p, "batch_stats": batch_stats},
                           models.preprocess(batch["video"]), train=True,
                           rngs={"dropout": jax.random.PRNGKey(0)}, mutable=["batch_stats"])
      return losses.loss_fn(out, batch, centres, None, jnp.float32(0.5),
                            losses.LossParams.from_section(config.loss))[0]

    value, grads = jax.value_and_grad(loss)(params)
    axis = parallel.DATA_AXIS
    return jax.lax.pmean(value, axis), jax.lax.pmean(grads, axis)

  f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P(parallel.DATA_AXIS)),
                            out_specs=(P(), P())))
  return lambda state, batch: f(state.params, state.batch_stats, state.centres, batch)


def _child_sharded_step() -> None:
  import itertools

  import jax
  import jax.numpy as jnp
  import optax

  from claus_jax import models, parallel, train

  assert jax.device_count() == 4, jax.devices()
  mesh = parallel.make_mesh()
  one = jax.devices()[0]
  out = {}
  # SGD, not the run's Adam: Adam's first update is lr * g / (|g| + eps), about lr * sign(g), so a
  # gradient that is 0 up to summation order (1e-9) moves by +-lr depending on the reduction order
  # of the device count, which no tolerance on parameters can absorb. With SGD at lr 1 the update
  # is minus the gradient, so the updates below compare gradients.
  sgd = optax.sgd(1.0)

  def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])

  for dropout in (0.0, 0.5):
    config = tiny_config()
    config.model.dropout = dropout
    model = models.build_model(config)
    params = train.TrainParams.from_config(config)
    state0 = train.create_state(params, model, jax.random.PRNGKey(0), num_videos=8)
    state0 = state0.replace(tx=sgd, opt_state=sgd.init(state0.params))
    params0 = flat(state0.params)
    batch = fixed_batch(config, 4, 1)
    step = jax.jit(lambda s, b, params=params: train.train_step(s, b, jnp.float32(0.5), params))

    s1, m1 = step(jax.device_put(state0, one), jax.device_put(batch, one))  # One device.
    loss1, update1 = float(m1["total"]), flat(s1.params) - params0

    def diff(loss, update, loss1=loss1, update1=update1):
      return {"loss": abs(float(loss) - loss1) / abs(loss1),
              "update": float(np.linalg.norm(update - update1) / np.linalg.norm(update1))}

    gb = parallel.shard_batch(batch, mesh)
    assert gb["video"].sharding.spec == parallel.batch_sharding(mesh).spec
    assert len(gb["video"].addressable_shards) == 4
    s4, m4 = step(parallel.replicate(state0, mesh), gb)
    update4 = flat(s4.params) - params0
    res = {"loss1": loss1, "loss4": float(m4["total"]), "diff": diff(m4["total"], update4),
           "stats_diff": max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                             zip(jax.tree.leaves(s1.batch_stats), jax.tree.leaves(s4.batch_stats))),
           "param_sharding": str(jax.tree.leaves(s4.params)[0].sharding.spec)}
    if dropout == 0.0:
      # The float32 reordering floor: every permutation of the rows, on one device. (With dropout
      # on, a permutation would also move the masks between clips, so the floor is measured here,
      # with the same model and batch, and serves both variants.)
      perms = []
      for perm in itertools.permutations(range(4)):
        if perm == (0, 1, 2, 3):
          continue
        perm = np.array(perm)
        sp, mp = step(jax.device_put(state0, one),
                      jax.device_put({k: v[perm] for k, v in batch.items()}, one))
        perms.append(diff(mp["total"], flat(sp.params) - params0))
      out["floor"] = {k: max(p[k] for p in perms) for k in ("loss", "update")}
      out["permutations"] = perms
      # The test of the test: two data-parallel bugs, computed for real on the 4 devices.
      # Gradients summed over the devices instead of averaged: each device's gradient of its mean
      # loss, summed, is n x the averaged gradient of the correct step (every loss term is a mean
      # over the batch rows, and the cluster term is off at step 0).
      res["wrong_summed_gradients"] = diff(m4["total"], jax.device_count() * update4)
      bn_loss, bn_grads = _per_device_batchnorm_step(model, config, mesh)(
          parallel.replicate(state0, mesh), gb)
      res["wrong_per_device_batchnorm"] = diff(bn_loss, -flat(bn_grads))
    out[f"dropout_{dropout}"] = res
  print(json.dumps(out))


def _child_sharded_ssl_step() -> None:
  """A mean-teacher step on 4 devices against one: loss, consistency and gradient (SGD update).

  The float32 floor is measured as in :func:`_child_sharded_step`, by row permutations on one
  device, with every random part of the step off (dropout 0, no strong-view augmentation), so that a
  permutation only reorders sums; the run with dropout and strong views on is held to that floor.
  """
  import jax
  import jax.numpy as jnp
  import optax

  from claus_jax import models, parallel, train

  assert jax.device_count() == 4, jax.devices()
  mesh = parallel.make_mesh()
  one = jax.devices()[0]
  sgd = optax.sgd(1.0)  # Updates compare gradients (see _child_sharded_step).
  flat = lambda tree: np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])
  out = {}
  for name, dropout, strong in (("plain", 0.0, 0.0), ("random", 0.5, 1.0)):
    config = tiny_config()
    config.model.dropout = dropout
    config.loss.ssl.enabled = True
    config.loss.ssl.unlabelled_batch_size = 4
    config.loss.ssl.temporal_weight = 1.0
    config.loss.ssl.jitter = 0.4 * strong
    config.loss.ssl.grayscale_prob = config.loss.ssl.blur_prob = 0.5 * strong
    model = models.build_model(config)
    params = train.TrainParams.from_config(config)
    state0 = train.create_state(params, model, jax.random.PRNGKey(0), num_videos=8)
    state0 = state0.replace(tx=sgd, opt_state=sgd.init(state0.params))
    params0 = flat(state0.params)
    batch = dict(fixed_batch(config, 4, 1), unlabelled_video=fixed_batch(config, 4, 2)["video"])
    step = jax.jit(lambda s, b, params=params: train.train_step(s, b, jnp.float32(0.5), params,
                                                                total_steps=4))
    s1, m1 = step(jax.device_put(state0, one), jax.device_put(batch, one))
    loss1, ssl1, update1 = float(m1["total"]), float(m1["ssl_total"]), flat(s1.params) - params0

    def diff(m, update, loss1=loss1, ssl1=ssl1, update1=update1):
      return {"loss": abs(float(m["total"]) - loss1) / abs(loss1),
              "ssl": abs(float(m["ssl_total"]) - ssl1) / abs(ssl1),
              "update": float(np.linalg.norm(update - update1) / np.linalg.norm(update1))}

    s4, m4 = step(parallel.replicate(state0, mesh), parallel.shard_batch(batch, mesh))
    res = {"diff": diff(m4, flat(s4.params) - params0), "ssl_total": ssl1,
           "teacher_diff": max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                               zip(jax.tree.leaves(s1.teacher), jax.tree.leaves(s4.teacher)))}
    if name == "plain":
      rng = np.random.default_rng(0)
      perms = []
      for _ in range(6):
        lab, unl = rng.permutation(4), rng.permutation(4)
        moved = {k: (v[unl] if k == "unlabelled_video" else v[lab]) for k, v in batch.items()}
        sp, mp = step(jax.device_put(state0, one), jax.device_put(moved, one))
        perms.append(diff(mp, flat(sp.params) - params0))
      out["floor"] = {k: max(p[k] for p in perms) for k in ("loss", "ssl", "update")}
    out[name] = res
  print(json.dumps(out))


def test_sharding_check_rejects_a_gap_above_the_floor_and_tolerates_a_zero_floor():
  floor = {"loss": 1e-5, "update": 1e-2}
  assert sharding_gaps({"loss": 5e-5, "update": 5e-2}, floor) == []
  gaps = sharding_gaps({"loss": 7e-5, "update": 3.0}, floor)
  assert len(gaps) == 2 and gaps[0].startswith("loss differs by 7e-05")
  assert "update differs by 3" in gaps[1] and "= 0.06" in gaps[1]
  # A floor of exactly 0 (reorderings that agree bit for bit) still admits a few float32 ulps.
  zero = {"loss": 0.0, "update": 0.0}
  assert sharding_gaps({"loss": 3e-6, "update": 3e-4}, zero) == []
  assert sharding_gaps({"loss": 1e-4, "update": 0.0}, zero) == [
      "loss differs by 0.0001 (relative), above 6 x the float32 reordering floor 0 = 6e-06"]
  assert sharding_gaps({"loss": float("nan"), "update": 0.0}, floor)  # NaN is never "within".


@pytest.mark.slow  # ~160 s (2 CPU cores): CI runs it in its -m slow step.
def test_sharded_train_step_equals_single_device():
  out = _wait(_run_child(["sharded_step"], {
      "XLA_FLAGS": xla_flags.with_devices(4), "JAX_PLATFORMS": "cpu"}))
  res = json.loads(out.strip().splitlines()[-1])
  floor = res["floor"]
  assert 0 < floor["update"] < 0.05, res  # The floor is real, and small next to a bug's 300%.
  bounds = sharding_bounds(floor)
  margins = {}
  for name in ("dropout_0.0", "dropout_0.5"):
    r = res[name]
    # Dropout masks, global BatchNorm statistics, the loss and the gradient (SGD update) agree to
    # the float32 reordering floor of this step.
    assert sharding_gaps(r["diff"], floor) == [], (name, res)
    assert r["stats_diff"] <= 1e-5, res
    assert r["param_sharding"] in ("P()", "PartitionSpec()")  # Parameters replicated.
    margins[name] = {k: r["diff"][k] / bounds[k] for k in ("loss", "update")}
  # The same check fails for each bug, by a wide margin.
  r = res["dropout_0.0"]
  summed = sharding_gaps(r["wrong_summed_gradients"], floor)
  assert len(summed) == 1 and summed[0].startswith("update differs by"), (summed, res)
  per_device_bn = sharding_gaps(r["wrong_per_device_batchnorm"], floor)
  assert [g.split()[0] for g in per_device_bn] == ["loss", "update"], (per_device_bn, res)
  for wrong in ("wrong_summed_gradients", "wrong_per_device_batchnorm"):
    margins[wrong] = {k: r[wrong][k] / bounds[k] for k in ("loss", "update")}
  print("sharded step, observed / bound:", json.dumps(margins))


@pytest.mark.slow  # Two tiny mean-teacher steps compiled in a 4-device child (~4 min cold).
def test_sharded_mean_teacher_step_equals_single_device():
  out = _wait(_run_child(["sharded_ssl_step"], {
      "XLA_FLAGS": xla_flags.with_devices(4), "JAX_PLATFORMS": "cpu"}))
  res = json.loads(out.strip().splitlines()[-1])
  floor = res["floor"]
  for name in ("plain", "random"):
    r = res[name]
    # Dropout masks, strong views, the teacher, the loss with its consistency part and the gradient
    # agree with one device to the float32 reordering floor of this step.
    assert sharding_gaps(r["diff"], floor) == [], (name, res)
    assert r["diff"]["ssl"] <= FLOOR_MULTIPLE * max(floor["ssl"], MIN_LOSS_FLOOR), (name, res)
    assert r["ssl_total"] > 0 and r["teacher_diff"] <= 1e-6, (name, res)


# -------------------------------------------------------------------------- two processes


def _child_helpers(port: int, process_id: int, out_path: str) -> None:
  """Two processes: row gathers with unequal counts, local rows, the hash check both ways, and a
  sharded evaluation."""
  import jax

  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id, initialization_timeout=120)
  from claus_jax import parallel

  mesh = parallel.make_mesh()
  me = jax.process_index()
  rows = parallel.allgather_rows({"x": np.full((2 + me, 3), me, np.float32),
                                  "i": np.arange(2 + me, dtype=np.int32) + 10 * me})
  sl = parallel.local_rows(4, mesh)
  glob = parallel.shard_batch(np.arange(4, dtype=np.float32)[sl] * 1.5, mesh)
  full = parallel.gather_to_host(glob)
  back = parallel.local_part(glob)
  same = parallel.assert_same_across_processes({"picks": [1, 2, 3]}, "selection")
  # Evaluation from a global (replicated over both processes) state runs on local devices.
  from claus_jax.evaluation import inference

  class Scale:  # A stand-in detector: seg = w * first channel, class_probs = w * channel means.
    def apply(self, v, x, train):
      return {"seg_logits": x[..., 0] * v["w"], "class_probs": x.mean(axis=(1, 2, 3)) * v["w"]}

  state = parallel.replicate({"w": np.float32(2.0)}, mesh)
  assert not state["w"].is_fully_addressable
  seg, cls = inference.make_predict_fn(Scale(), state)(np.full((3, 8, 4, 4, 3), 255, np.uint8))
  # Evaluation of the test split: each process predicts its share; all merge every share.
  from claus_jax import evaluation, reporting
  from tests import test_evaluation as te

  records, read = te.coded_records(*EVAL_RECORDS), []

  class Logged:  # The records, noting which ones this process reads.
    def __len__(self):
      return len(records)

    def __getitem__(self, i):
      read.append(i)
      return records[i]

  result, markdown = evaluation.evaluate(te.coded_predict_fn, Logged(), 3, ["a", "b", "c"],
                                         te.eval_config(**EVAL_CONFIG), progress=False)
  assert markdown == reporting.to_markdown(result)
  try:
    parallel.assert_same_across_processes({"picks": [me]}, "selection")
    mismatch = ""
  except AssertionError as e:
    mismatch = str(e)
  with open(out_path, "w") as f:
    json.dump({"x": rows["x"].tolist(), "i": rows["i"].tolist(), "slice": [sl.start, sl.stop],
               "full": full.tolist(), "back": back.tolist(), "same": same,
               "mismatch": mismatch, "seg": float(np.asarray(seg).mean()),
               "cls": np.asarray(cls).shape, "shard": [parallel.process_slice(5).start,
                                               parallel.process_slice(5).stop],
               "eval": result, "read": read}, f)
  jax.distributed.shutdown()


# The evaluation the two-process test runs: coded_records(num, classes, seed) and config.eval.
EVAL_RECORDS = (7, 3, 5)
EVAL_CONFIG = {"batch_size": 2, "video_top_k": 2, "score_rule": "class_prob_x_mask_mean"}


def test_two_process_helpers(tmp_path):
  from claus_jax import evaluation, parallel
  from tests import test_evaluation as te

  port = _free_port()
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags.with_devices(1)}
  procs = [_run_child(["helpers", str(port), str(i), str(tmp_path / f"h{i}.json")], env)
           for i in range(2)]
  for p in procs:
    _wait(p, timeout=300)
  res = [json.loads((tmp_path / f"h{i}.json").read_text()) for i in range(2)]
  one, _ = evaluation.evaluate(te.coded_predict_fn, te.coded_records(*EVAL_RECORDS), 3,
                               ["a", "b", "c"], te.eval_config(**EVAL_CONFIG), progress=False)
  for i, r in enumerate(res):
    # Process 0 had 2 rows, process 1 had 3: everyone gets all 5, in process order.
    assert r["x"] == [[0.0] * 3] * 2 + [[1.0] * 3] * 3
    assert r["i"] == [0, 1, 10, 11, 12]
    assert r["slice"] == [2 * i, 2 * i + 2]
    assert r["full"] == [0.0, 1.5, 3.0, 4.5]  # The global array assembled from local rows.
    assert r["back"] == [1.5 * j for j in range(2 * i, 2 * i + 2)]
    assert r["same"] == parallel.digest({"picks": [1, 2, 3]})
    assert "selection differs between processes" in r["mismatch"] and "[1]" in r["mismatch"]
    assert r["shard"] == [[0, 3], [3, 5]][i]
    assert abs(r["seg"] - 2.0) < 1e-5 and r["cls"] == [3, 3]  # preprocess: 255 -> 1.0; w = 2.
    # Each process predicted its own 4 or 3 of the 7 test videos, and both hold the one-process
    # evaluation exactly (JSON keeps every float bit).
    assert r["read"] == [[0, 1, 2, 3], [4, 5, 6]][i]
    assert r["eval"] == json.loads(json.dumps(one))
  assert one["num_videos"] == 7 and 0 < one["detection/f-mAP@0.5"] < 1
  assert 0 < one["accuracy"] < 1 and 0 < one["detection/v-mAP@0.5"] < 1


def smoke_config():
  c = load_config("synthetic", "smoke")
  c.quiet = True
  c.train.steps = 4
  c.train.checkpoint_every = 2
  c.train.log_every = 1
  c.train.data_workers = 0
  c.train.data_parallel = True
  return c


def _child_round(mode: str, out_dir: str, port: int = 0, process_id: int = 0) -> None:
  """Smoke round 0 on a 2-device mesh: fit (orbax, collective), score_pool, CLAUS selection."""
  import jax

  if mode == "mp":
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=120)
  assert jax.device_count() == 2 and jax.process_count() == (2 if mode == "mp" else 1)

  from claus_jax import configlib, data, models, parallel, train, uncertainty
  from claus_jax import pool as pool_lib
  from claus_jax import selection as selection_lib
  from claus_jax.data import clips as clips_lib

  config = smoke_config()
  dataset = data.get_dataset(config)
  index = dataset.train_index
  mesh = parallel.make_mesh()
  model = models.build_model(config)
  selection_params = selection_lib.SelectionParams.from_config(config)
  budget_params = selection_params.budget
  pool = pool_lib.initial_pool(
      index.video_ids, index.num_frames,
      selection_lib.initial_video_count(budget_params, len(index)),
      selection_lib.initial_frame_count(budget_params, int(index.num_frames.sum())),
      seed=config.seed)
  position = {v: i for i, v in enumerate(index.video_ids)}
  items = [(position[v], pool.labelled_frames(v)) for v in pool.labelled_video_ids()]
  sampler = clips_lib.ClipSampler(dataset.train, items, clips_lib.ClipParams.from_config(config),
                                  seed=config.seed, round_index=0)
  train_params = train.TrainParams.from_config(config)
  state = train.create_state(train_params, model, jax.random.PRNGKey(0), len(index))
  ckpt = os.path.join(out_dir, "checkpoints")
  # train.restore_latest opens a CheckpointManager (a collective in orbax) only when the folder
  # exists: it must exist for every process before fit, or the processes' barriers diverge.
  os.makedirs(ckpt, exist_ok=True)
  parallel.sync("checkpoint folder")
  result = train.fit(train_params, state, parallel.ProcessLocalSampler(sampler, mesh), ckpt,
                     sampler.steps_per_epoch, mesh=mesh)
  variables = {"params": result.state.params, "batch_stats": result.state.batch_stats}
  scorer = uncertainty.Scorer(model, variables, uncertainty.ScoreParams.from_config(config),
                              mesh=mesh)
  scores = scorer.score_pool(dataset.train, index.video_ids, index.num_frames,
                             jax.random.PRNGKey(7))
  candidates = [selection_lib.VideoCandidate(
      video_id=s.video_id, num_frames=int(n), frame_scores=s.scores(), entropy_scores=s.entropy,
      labelled_frames=pool.labelled_frames(s.video_id), video_labelled=pool.is_labelled(s.video_id),
      cluster=-1, gt_span=None) for s, n in zip(scores, index.num_frames)]
  budget = selection_lib.round_budget(budget_params, 1, len(index), pool.total_frames,
                                      pool.num_labelled_videos, pool.num_labelled_frames)
  chosen = selection_lib.select(candidates, budget, selection_params,
                                np.random.default_rng([config.seed, 0]))
  digest = parallel.assert_same_across_processes(chosen.to_json(), "selection")
  params = parallel.gather_to_host(result.state.params)
  with open(os.path.join(out_dir, f"result_{mode}_{process_id}.json"), "w") as f:
    json.dump({"history": result.history, "selection": chosen.to_json(), "digest": digest,
               "params": [float(np.sum(np.abs(x), dtype=np.float64)) for x in jax.tree.leaves(params)],
               "scores": np.concatenate([s.frame_scores.reshape(-1) for s in scores]).tolist(),
               "latest_step": train.restore_latest(ckpt, jax.eval_shape(lambda s: s, state),
                                                   train_params) is not None}, f)
  if mode == "mp":
    jax.distributed.shutdown()


def _child_driver(mode: str, workdir: str, port: int = 0, process_id: int = 0) -> None:
  """The whole smoke run through ``experiment.run`` (the user's path), on 2 devices."""
  import jax

  if mode == "mp":
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=120)
  assert jax.device_count() == 2 and jax.process_count() == (2 if mode == "mp" else 1)
  from claus_jax import experiment

  experiment.run(smoke_config(), workdir)
  if mode == "mp":
    jax.distributed.shutdown()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # About 3 to 7 minutes on 2 CPU cores: CI runs it in its `-m slow` step.
@pytest.mark.multiprocess
def test_two_processes_equal_one_process_with_two_devices(tmp_path):
  from claus_jax import data

  tfds_dir = str(tmp_path / "tfds")
  env = {"CLAUS_TFDS_DIR": tfds_dir, "JAX_PLATFORMS": "cpu"}
  old = os.environ.get("CLAUS_TFDS_DIR")
  os.environ["CLAUS_TFDS_DIR"] = tfds_dir
  try:
    data.get_dataset(smoke_config())  # Prepare the store once; the children only read it.
  finally:
    if old is None:
      os.environ.pop("CLAUS_TFDS_DIR")
    else:
      os.environ["CLAUS_TFDS_DIR"] = old
  t0 = time.time()
  single_dir, mp_dir = tmp_path / "single", tmp_path / "mp"
  single_dir.mkdir()
  mp_dir.mkdir()
  port = _free_port()
  procs = [_run_child(["round", "mp", str(mp_dir), str(port), str(i)],
                      {**env, "XLA_FLAGS": xla_flags.with_devices(1)})
           for i in range(2)]
  for p in procs:
    _wait(p)
  _wait(_run_child(["round", "single", str(single_dir)],
                   {**env, "XLA_FLAGS": xla_flags.with_devices(2)}))
  print(f"two-process round + single-process reference: {time.time() - t0:.0f} s")
  results = []
  for path in (mp_dir / "result_mp_0.json", mp_dir / "result_mp_1.json",
               single_dir / "result_single_0.json"):
    with open(path) as f:
      results.append(json.load(f))
  ref = results[2]
  assert ref["latest_step"] and len(ref["history"]) == 4
  assert ref["selection"]["picks"], "the selection must pick something"
  for res in results[:2]:
    assert res["latest_step"]  # The collective orbax checkpoint restores.
    assert res["digest"] == ref["digest"]
    assert res["selection"] == ref["selection"]
    np.testing.assert_allclose([h["total"] for h in res["history"]],
                               [h["total"] for h in ref["history"]], rtol=1e-5)
    np.testing.assert_allclose(res["params"], ref["params"], rtol=1e-5)
    np.testing.assert_allclose(res["scores"], ref["scores"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # About 3 to 5 minutes on 2 CPU cores: CI runs it in its `-m slow` step.
@pytest.mark.multiprocess
def test_two_process_driver_run_equals_one_process_with_two_devices(tmp_path):
  """``experiment.run`` in two processes sharing one workdir: same files as one process."""
  tfds_dir = str(tmp_path / "tfds")
  env = {"CLAUS_TFDS_DIR": tfds_dir, "JAX_PLATFORMS": "cpu"}
  single_dir, mp_dir = tmp_path / "single", tmp_path / "mp"
  port = _free_port()
  # No store prepared beforehand: process 0 generates it while process 1 waits at the barrier.
  procs = [_run_child(["driver", "mp", str(mp_dir), str(port), str(i)],
                      {**env, "XLA_FLAGS": xla_flags.with_devices(1)})
           for i in range(2)]
  outs = [_wait(p) for p in procs]
  _wait(_run_child(["driver", "single", str(single_dir)],
                   {**env, "XLA_FLAGS": xla_flags.with_devices(2)}))
  assert "round 1 eval" in outs[0] and "round 1 eval" not in outs[1]  # Process 0 alone reports.

  def read(folder, name):
    with open(folder / name) as f:
      return json.load(f)

  for name in ("round_000/pool.json", "round_001/pool.json"):
    assert read(mp_dir, name) == read(single_dir, name), name
  sel_mp, sel_one = read(mp_dir, "round_000/selection.json"), read(single_dir,
                                                                   "round_000/selection.json")
  assert sel_mp["picks"] and [p["video_id"] for p in sel_mp["picks"]] == [
      p["video_id"] for p in sel_one["picks"]]
  assert [p["frames"] for p in sel_mp["picks"]] == [p["frames"] for p in sel_one["picks"]]
  for r in ("round_000", "round_001"):
    h_mp = read(mp_dir, f"{r}/train.json")["history"]
    h_one = read(single_dir, f"{r}/train.json")["history"]
    np.testing.assert_allclose([h["total"] for h in h_mp], [h["total"] for h in h_one], rtol=1e-5)
    e_mp, e_one = read(mp_dir, f"{r}/eval.json"), read(single_dir, f"{r}/eval.json")
    for key in ("accuracy", "capsule/f-mAP@0.5", "capsule/v-mAP@0.5"):
      assert e_mp[key] == pytest.approx(e_one[key], abs=1e-6), (r, key)
  assert os.path.exists(mp_dir / "summary.md")
  assert not [f for f in os.listdir(mp_dir / "round_000") if f.endswith(".tmp")]
  # Each run says where it computed: two processes of one device, or one of two, on a 2-wide mesh.
  for folder, processes in ((mp_dir, 2), (single_dir, 1)):
    env = read(folder, "run.json")
    assert (env["backend"], env["devices"], env["processes"], env["mesh"]) == (
        "cpu", 2, processes, {"data": 2}), env


if __name__ == "__main__":
  import faulthandler

  import jax
  if os.environ.get("CHILD_TRACE_AFTER_S"):  # Debugging a hung child: dump every thread's stack.
    faulthandler.dump_traceback_later(float(os.environ["CHILD_TRACE_AFTER_S"]), exit=True)
  if os.environ.get("CLAUS_JAX_CACHE"):  # The test session's compilation cache (conftest.py).
    jax.config.update("jax_compilation_cache_dir", os.environ["CLAUS_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if sys.argv[1] == "sharded_step":
    _child_sharded_step()
  elif sys.argv[1] == "sharded_ssl_step":
    _child_sharded_ssl_step()
  elif sys.argv[1] == "helpers":
    _child_helpers(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
  elif sys.argv[1] == "driver":
    mode, out = sys.argv[2], sys.argv[3]
    _child_driver(mode, out, *(int(x) for x in sys.argv[4:]))
  elif sys.argv[1] == "round":
    mode, out = sys.argv[2], sys.argv[3]
    _child_round(mode, out, *(int(x) for x in sys.argv[4:]))
  else:
    raise SystemExit(f"unknown child mode {sys.argv[1]!r}")
