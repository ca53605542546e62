"""The score CLI: restores a run's checkpoint, scores a split, writes every R and threshold."""

import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from claus_jax import configlib
from claus_jax import data as data_lib
from claus_jax import experiment
from claus_jax import models
from claus_jax import score
from claus_jax import train as train_lib
from claus_jax import uncertainty
from tests.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py")
# Overrides of the CLI run; smoke_config() applies the same ones in process.
OVERRIDES = ["--config.uncertainty.passes=4", "--config.uncertainty.sweep_passes=(2,)",
             "--config.uncertainty.sweep_thresholds=(0.2,0.6)", "--config.uncertainty.clip_chunk=3",
             "--config.seed=5"]


def smoke_config():
  c = load_config("synthetic", "smoke")
  c.uncertainty.passes = 4
  c.uncertainty.sweep_passes = (2,)
  c.uncertainty.sweep_thresholds = (0.2, 0.6)
  c.uncertainty.clip_chunk = 3
  c.seed = 5
  c.quiet = True
  return configlib.validate(c)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A fake run: tfds dir with the smoke dataset and round_001/checkpoints with a perturbed state."""
  root = tmp_path_factory.mktemp("score_cli")
  os.environ["CLAUS_TFDS_DIR"] = str(root / "tfds")
  config = smoke_config()
  dataset = data_lib.get_dataset(config)
  model = models.build_model(config)
  state = train_lib.create_state(train_lib.TrainParams.from_config(config), model,
                                 jax.random.PRNGKey(0), len(dataset.train_index))
  # Move the parameters away from the fresh initialisation, so scoring a fresh init would differ.
  state = state.replace(params=jax.tree.map(lambda x: x * 1.25 + 0.01, state.params), step=7)
  ckpt = root / "run" / "round_001" / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  with ocp.CheckpointManager(str(ckpt), options=options) as mngr:
    mngr.save(7, args=ocp.args.StandardSave(state))
    mngr.wait_until_finished()
  return {"root": root, "ckpt": str(ckpt), "config": config, "dataset": dataset, "model": model,
          "state": state}


def test_cli_writes_every_stored_r_and_threshold_equal_to_a_direct_scorer_run(run_dir):
  out = run_dir["root"] / "scores.npz"
  env = dict(os.environ, CLAUS_TFDS_DIR=str(run_dir["root"] / "tfds"))
  # --checkpoint names the round folder: its checkpoints/ subfolder is used, round 1 read from it.
  cmd = [sys.executable, "-m", "claus_jax.score", f"--config={SMOKE}:smoke", *OVERRIDES,
         f"--checkpoint={os.path.dirname(run_dir['ckpt'])}", "--split=test", f"--out={out}",
         "--quiet"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "scored" in proc.stderr  # The status line, through absl logging.

  got = score.load_scores(str(out))
  config, dataset = run_dir["config"], run_dir["dataset"]
  index = dataset.test_index
  assert list(got["video_ids"]) == list(index.video_ids)
  np.testing.assert_array_equal(got["num_frames"], index.num_frames)
  np.testing.assert_array_equal(got["passes"], [2, 4])  # sweep_passes plus R itself
  np.testing.assert_allclose(got["thresholds"], [0.4, 0.2, 0.6])  # bg_threshold first
  assert int(got["round"]) == 1 and int(got["checkpoint_step"]) == 7
  assert str(got["split"]) == "test" and str(got["form"]) == "paper"

  # Direct scorer run with the saved (perturbed) variables and the run's round-1 key.
  state = run_dir["state"]
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(5), 2), 1)  # Seed 5, round 1.
  scorer = uncertainty.Scorer(run_dir["model"], variables,
                              uncertainty.ScoreParams.from_config(config))
  direct = scorer.score_videos((dataset.test[i] for i in range(len(index))), range(len(index)), key)
  assert len(direct) == len(index) == len(got["videos"])
  for res in direct:
    mine = got["videos"][res.video_id]
    t = len(res.entropy)
    assert mine["frame_scores"].shape == (2, 3, t)
    np.testing.assert_allclose(mine["frame_scores"], res.frame_scores[[1, 3]], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(mine["entropy"], res.entropy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mine["latent"], res.latent, rtol=1e-5, atol=1e-6)
    assert mine["class_probs"].shape == (config.model.num_classes,)
  # Thresholds really differ: a lower background threshold keeps more pixels (paper form).
  fs = np.concatenate([got["videos"][v]["frame_scores"] for v in got["video_ids"]], axis=-1)
  assert np.all(fs[:, 1] >= fs[:, 0] - 1e-6) and np.all(fs[:, 0] >= fs[:, 2] - 1e-6)


def test_stored_passes_default_is_all_prefixes():
  c = configlib.base_config()
  c.uncertainty.passes = 5
  assert score.stored_passes(c) == (1, 2, 3, 4, 5)
  c.uncertainty.sweep_passes = (3, 1, 3)
  assert score.stored_passes(c) == (1, 3, 5)
  assert score.round_from_path("/a/round_003/checkpoints") == 3
  assert score.round_from_path("/a/b") == 0
  # The main job and the CLI share one key function: stream 2 of the seed, folded with the round.
  np.testing.assert_array_equal(uncertainty.score_key(5, 1), jax.random.fold_in(
      jax.random.fold_in(jax.random.PRNGKey(5), 2), 1))


def test_restored_variables_are_the_saved_ones(run_dir):
  variables, step = score.load_variables(run_dir["config"], run_dir["model"], run_dir["ckpt"],
                                         len(run_dir["dataset"].train_index))
  assert step == 7
  for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(run_dir["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_empty_and_incompatible_checkpoints_give_clear_errors(run_dir, tmp_path):
  config, model = run_dir["config"], run_dir["model"]
  n = len(run_dir["dataset"].train_index)
  missing = tmp_path / "nope"
  with pytest.raises(score.CheckpointError, match="does not exist"):
    score.load_variables(config, model, str(missing), n)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(score.CheckpointError, match="holds no checkpoint"):
    score.load_variables(config, model, str(empty), n)
  wider = config.copy_and_resolve_references()
  wider.model.width = 0.25
  with pytest.raises(score.CheckpointError, match="was made by another config") as info:
    score.load_variables(wider, models.build_model(wider), run_dir["ckpt"], n)
  message = str(info.value)
  # A good checkpoint of another config: the differing shapes, kept, and no advice to delete it.
  assert run_dir["ckpt"] in message and "it is kept" in message and "delete" not in message.lower()
  assert "batch_stats/encoder/Conv3d_1a_7x7/bn/mean: checkpoint (8,), this config (16,)" in message


def test_a_damaged_checkpoint_is_named_and_the_advice_fits_the_score_command(run_dir, tmp_path):
  import shutil
  config, model = run_dir["config"], run_dir["model"]
  n = len(run_dir["dataset"].train_index)
  damaged = tmp_path / "checkpoints"
  shutil.copytree(run_dir["ckpt"], damaged)
  truncated = 0
  for dirpath, _, files in os.walk(damaged):
    for f in files:
      path = os.path.join(dirpath, f)
      if "ocdbt.process" in path and os.path.getsize(path) > 64 and "/d/" in path:
        with open(path, "r+b") as fh:  # The array data files, cut short as a crash would leave them.
          fh.truncate(16)
        truncated += 1
  assert truncated
  with pytest.raises(score.CheckpointError) as info:
    score.load_variables(config, model, str(damaged), n)
  message = str(info.value)
  assert str(damaged / "7") in message and "damaged or incomplete" in message
  assert "does not train" in message and "training resumes" not in message
  # The good checkpoint it was copied from is untouched.
  assert score.load_variables(config, model, run_dir["ckpt"], n)[1] == 7
