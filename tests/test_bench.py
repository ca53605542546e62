"""Benchmarks run at the smoke size and end with one JSON line holding the documented keys.

The first run of this file compiles the smoke detector's training step (about a minute on a loaded
2-core CPU); later runs load it from the persistent compilation cache set up in conftest.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  tfds = tmp_path_factory.mktemp("bench_tfds")
  return dict(os.environ, CLAUS_TFDS_DIR=str(tfds))


def run_bench(env, name, *flags):
  cmd = [sys.executable, "-m", "claus_jax.bench", name, "--config=configs/synthetic.py:smoke",
         "--repeats=1", *flags]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  return json.loads(lines[-1]), lines[:-1]


@pytest.mark.slow  # ~70 s (2 CPU cores): CI runs it in its -m slow step.
def test_uncertainty_bench(env):
  result, lines = run_bench(env, "uncertainty", "--batch=2", "--pool_videos=1",
                            "--config.uncertainty.passes=3")
  for key in ("speedup", "ideal_speedup", "peak_mem_mb_1x", "peak_mem_mb_10x",
              "sequential_clips_per_s", "vmapped_clips_per_s", "encoder_s_per_clip",
              "head_s_per_clip", "pool_clips_1x", "pool_clips_10x"):
    assert key in result, key
  assert result["bench"] == "uncertainty" and result["passes"] == 3 and result["batch"] == 2
  e, h, r = result["encoder_s_per_clip"], result["head_s_per_clip"], 3
  assert e > 0 and h > 0
  np.testing.assert_allclose(result["ideal_speedup"], r * (e + h) / (e + r * h), rtol=1e-9)
  np.testing.assert_allclose(result["speedup"],
                             result["vmapped_clips_per_s"] / result["sequential_clips_per_s"],
                             rtol=1e-9)
  np.testing.assert_allclose(result["noise_cost_vs_vmapped"],
                             result["vmapped_clips_per_s"] / result["noise_clips_per_s"], rtol=1e-9)
  assert any("NoiseAug" in line for line in lines)
  # The 10x pool holds about ten times the clips of the 1x pool, each scored in its own process.
  assert result["pool_clips_10x"] >= 5 * result["pool_clips_1x"] > 0
  assert result["peak_mem_mb_1x"] > 50 and result["peak_mem_mb_10x"] > 50
  assert any("speedup" in line for line in lines)


@pytest.mark.slow  # ~95 s (2 CPU cores): CI runs it in its -m slow step.
def test_train_bench(env):
  # The synthetic default's cosine rate: the bench times the step a round runs.
  result, lines = run_bench(env, "train", "--steps=2", "--batch=2",
                            "--config.train.lr_schedule=cosine")
  for key in ("step_s", "step_clips_per_s", "pipeline_clips_per_s", "pipeline_ratio",
              "train_clips_per_s"):
    assert result[key] > 0, key
  assert result["bench"] == "train" and result["batch"] == 2 and result["steps"] == 2
  assert result["lr_schedule"] == "cosine"
  assert any(line.startswith("train: ") and "cosine learning rate" in line for line in lines)
  np.testing.assert_allclose(result["step_clips_per_s"], 2 / result["step_s"], rtol=1e-9)
  np.testing.assert_allclose(result["pipeline_ratio"],
                             result["pipeline_clips_per_s"] / result["step_clips_per_s"], rtol=1e-9)
  assert any("pipeline / step" in line for line in lines)


def test_chunks_bench(env):
  result, _ = run_bench(env, "chunks", "--pass_chunks=1,3", "--clip_chunks=1,2",
                        "--config.uncertainty.passes=4")
  rows = {(r["pass_chunk"], r["clip_chunk"]): r for r in result["results"]}
  assert set(rows) == {(1, 1), (1, 2), (2, 1), (2, 2)}  # pass chunk 3 -> divisor 2 of R=4
  assert all(r["clips_per_s"] > 0 for r in rows.values())
  # XLA scratch grows with the work in flight: more passes or more clips per call.
  assert rows[(2, 2)]["temp_mb"] > rows[(1, 1)]["temp_mb"] > 0
  assert (result["fastest"]["pass_chunk"], result["fastest"]["clip_chunk"]) in rows


@pytest.mark.slow
def test_model_bench(env):
  result, lines = run_bench(env, "model", "--batch=1", "--profile")
  assert result["bench"] == "model" and result["fwd_s_per_clip"] > 0
  assert result["fwd_bwd_s_per_clip"] > 0 and result["params"] > 0
  assert len(result["profile"]["rows"]) == 18  # roofline.PROFILE_GROUPS
  assert any(line.split()[:2] == ["whole", "forward"] for line in lines)
  # The backward columns: every group's forward + backward program ran and has backward work.
  assert result["profile"]["backward"]
  for row in result["profile"]["rows"]:
    assert row["fwd_bwd_ms"] > 0 and row["bwd_gflop"] > 0, row
    np.testing.assert_allclose(row["bwd_ms"], row["fwd_bwd_ms"] - row["ms"])
  assert any("bwd GFLOP" in line for line in lines)


def test_unknown_subcommand_is_a_usage_error(env):
  proc = subprocess.run([sys.executable, "-m", "claus_jax.bench", "nope",
                         "--config=configs/synthetic.py:smoke"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "uncertainty" in proc.stderr and "train" in proc.stderr


def test_child_peak_rss_is_its_own():
  """A child's peak RSS excludes the parent's memory (Linux ru_maxrss would include it) and grows
  with what the child allocates."""
  ballast = np.ones(80_000_000)  # 610 MiB in this process, touched.
  code = ("import numpy as np; from claus_jax.bench import peak_rss_mb; a = peak_rss_mb(); "
          "x = np.ones(25_000_000); b = peak_rss_mb(); print(a, b)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=True)
  before, after = map(float, proc.stdout.split())
  del ballast
  assert before < 400  # jax + numpy imports (~170 MiB), not the parent's 610 MiB ballast
  np.testing.assert_allclose(after - before, 25_000_000 * 8 / 2**20, rtol=0.1)


def test_layer_profile_covers_the_forward():
  """The profile has one row per layer group; chained, the groups compute the whole eval forward
  (same outputs, and their XLA FLOPs sum to the forward's within 1%: XLA may recompute a cheap
  elementwise producer inside each consumer's fusion of the one program); times are positive.
  (The backward columns, which compile a program per group, are checked in the slow bench test.)"""
  import jax

  from claus_jax import configlib, models, roofline
  from tests.config_files import load_config

  config = configlib.validate(load_config("synthetic", "smoke"))  # 32 px, width 0.125
  model = models.build_model(config)
  variables = models.init_variables(model, jax.random.key(0),
                                     clip_length=config.model.clip_length,
                                     frame_size=config.data.frame_size)
  video = jax.random.uniform(jax.random.key(1), (1, 8, 32, 32, 3), minval=-1.0, maxval=1.0)
  profile = roofline.layer_profile(model, variables, video, repeats=1, backward=False)

  assert [r["group"] for r in profile["rows"]] == list(roofline.PROFILE_GROUPS)
  assert profile["output_max_abs_diff"] < 1e-4
  np.testing.assert_allclose(profile["groups_gflop"], profile["forward_gflop"], rtol=0.01)
  assert abs(profile["flops_rel_diff"]) < 0.01
  for row in profile["rows"]:
    assert row["ms"] > 0 and row["gflop"] > 0 and row["flops_source"] == "xla", row
    if row["group"] == "MaxPool3d_4a_3x3":  # No conv or dot: no reference.
      assert row["ops"] == 0 and row["roofline_ms"] is None
    else:
      assert row["ops"] > 0 and row["conv_dot_gflop"] > 0, row
      assert row["conv2d_gflop_per_s"] > 0 and row["matmul_gflop_per_s"] > 0, row
      assert row["roofline_ms"] > 0, row
    assert "bwd_ms" not in row
  assert profile["forward_ms"] > 0 and profile["references"] > 0
  lines = roofline.format_profile(profile)
  assert len(lines) == 2 + len(roofline.PROFILE_GROUPS) + 3
  assert all(any(line.split()[:1] == [g] for line in lines) for g in roofline.PROFILE_GROUPS)


def test_vjp_program_is_the_forward_and_both_gradients():
  """The profile's backward program of y = x @ w returns y, dL/dx = g w^T and dL/dw = x^T g for an
  all-ones g, and XLA counts it at three times the forward's FLOPs (the forward's 2mkn, then two
  products of the same size; the forward is kept although a linear layer's gradients do not need
  it): the profile's 'bwd GFLOP' of a matmul is twice its forward's."""
  import jax

  from claus_jax import roofline

  x = jax.random.normal(jax.random.key(0), (64, 48))
  w = jax.random.normal(jax.random.key(1), (48, 32))
  program = roofline.vjp_program(lambda a, b: a @ b, x, w)
  y, (dx, dw) = program(x, w)
  np.testing.assert_allclose(np.asarray(y), np.asarray(x) @ np.asarray(w), rtol=1e-5, atol=1e-4)
  g = np.ones((64, 32), np.float32)
  np.testing.assert_allclose(np.asarray(dx), g @ np.asarray(w).T, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dw), np.asarray(x).T @ g, rtol=1e-5, atol=1e-4)
  forward = jax.jit(lambda a, b: a @ b).lower(x, w).compile()
  assert roofline.xla_flops(forward) == 2 * 64 * 48 * 32
  assert roofline.xla_flops(program) == 3 * 2 * 64 * 48 * 32


def test_matmul_ops_count_a_3d_conv_as_its_2d_and_matmul_forms():
  """A native 3-D conv's FLOPs and references: time folded into the batch, temporal taps into
  the input channels (2-D conv), M = output positions, K = taps x C_in, N = C_out (matmul)."""
  import jax
  import jax.numpy as jnp

  from claus_jax import roofline

  x, k = jnp.ones((2, 4, 10, 12, 5)), jnp.ones((3, 3, 3, 5, 7))
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1, 1), [(0, 0), (1, 1), (1, 1)], dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  (op,) = roofline.matmul_ops(conv, x, k)
  positions = 2 * 2 * 10 * 12  # T' = 4 - 3 + 1
  assert op.flops == 2 * positions * 27 * 5 * 7
  assert op.conv_ref == ("conv", 2 * 2, 10, 12, 3 * 5, 3, 3, 7, "float32")
  assert op.dot_ref == ("dot", 1, positions, 27 * 5, 7, "float32")
  a, b = jnp.ones((6, 3, 4)), jnp.ones((6, 4, 5))
  (dot,) = roofline.matmul_ops(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b), a, b)
  assert dot.flops == 2 * 6 * 3 * 4 * 5 and dot.dot_ref == ("dot", 6, 3, 4, 5, "float32")
  assert dot.conv_ref == dot.dot_ref  # Batched: no 2-D conv form.
