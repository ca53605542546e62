"""The active-learning driver end to end on the smoke config: outputs, budgets, resume, oracles."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from claus_jax import experiment
from claus_jax import oracle as oracle_lib
from claus_jax import provenance
from claus_jax import rounds
from claus_jax import score_files
from tests.config_files import load_config, load_launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(**overrides):
  c = load_config("synthetic", "smoke")
  c.quiet = True
  for key, value in overrides.items():
    section, field = key.split(".")
    setattr(getattr(c, section), field, value)
  return c


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  old = os.environ.get("CLAUS_TFDS_DIR")
  os.environ["CLAUS_TFDS_DIR"] = path
  yield path
  if old is None:
    os.environ.pop("CLAUS_TFDS_DIR")
  else:
    os.environ["CLAUS_TFDS_DIR"] = old


@pytest.fixture(scope="module")
def reference_run(tfds_dir, tmp_path_factory):
  """One uninterrupted smoke run; other tests compare against it."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  experiment.run(smoke_config(), workdir)
  return workdir


def _read(path):
  with open(path) as f:
    return f.read()


def _outcome(workdir):
  """What must be identical between runs: every pool state, selection and metric."""
  out = {"metrics": _read(os.path.join(workdir, "metrics.jsonl"))}
  for name in sorted(os.listdir(workdir)):
    if name.startswith("round_"):
      for f in ("pool.json", "selection.json", "eval.json"):
        p = os.path.join(workdir, name, f)
        if os.path.exists(p):
          out[f"{name}/{f}"] = _read(p)
  return out


def test_smoke_run_outputs_budgets_and_costs(reference_run):
  w = reference_run
  for f in ("config.json", "dataset.json", "metrics.jsonl", "summary.md", "cost_vs_map.png",
            "selection_pca.png", "per_class.png"):
    assert os.path.exists(os.path.join(w, f)), f
  for f in ("pool.json", "train.json", "eval.json", "eval.md", "selection.json"):
    assert os.path.exists(os.path.join(w, "round_000", f)), f
  for f in ("pool.json", "train.json", "eval.json"):
    assert os.path.exists(os.path.join(w, "round_001", f)), f
  assert not os.path.exists(os.path.join(w, "round_001", "selection.json"))  # last round
  rows = [json.loads(line) for line in _read(os.path.join(w, "metrics.jsonl")).splitlines()]
  assert [r["round"] for r in rows] == [0, 1]
  with open(os.path.join(w, "round_000", "selection.json")) as f:
    sel = json.load(f)
  with open(os.path.join(w, "round_000", "pool.json")) as f:
    pool0 = json.load(f)
  with open(os.path.join(w, "round_001", "pool.json")) as f:
    pool1 = json.load(f)
  # Costs add up: the new pool's cost is the old cost plus the selection's cost.
  assert pool1["summary"]["cost"] == pytest.approx(pool0["summary"]["cost"] + sel["cost"])
  assert rows[1]["cost"] == pytest.approx(pool1["summary"]["cost"])
  # The selection fits the round's budget and buys exactly what it reports.
  budget = sel["budget"]
  assert sel["num_new_videos"] * 1.0 <= budget["budget_video"] + 1e-9
  assert sel["num_new_frames"] * 1.0 <= budget["budget_frame"] + 1e-9
  assert sel["num_new_frames"] == sum(len(p["frames"]) for p in sel["picks"])
  assert (pool1["summary"]["labelled_frames"] - pool0["summary"]["labelled_frames"]
          == sel["num_new_frames"])
  assert (pool1["summary"]["labelled_videos"] - pool0["summary"]["labelled_videos"]
          == sel["num_new_videos"])
  # No labelled frame is bought twice.
  for p in sel["picks"]:
    assert not set(p["frames"]) & set(map(int, pool0["frames"].get(p["video_id"], {})))
  summary = _read(os.path.join(w, "summary.md"))
  assert "| 1 | 40.0 |" in summary  # round 1 reaches the schedule's 40% of videos


def test_a_run_records_where_it_computes(reference_run, tmp_path):
  import jax

  from claus_jax import parallel

  with open(os.path.join(reference_run, experiment.RUN_FILE)) as f:
    env = json.load(f)
  n = jax.device_count()
  config = smoke_config()
  assert env == {"jax": jax.__version__, "backend": "cpu", "device_kind": jax.devices()[0].device_kind,
                 "devices": n, "local_devices": n, "processes": 1, "mesh": {"data": n},
                 "compute_dtype": "float32",
                 "data_parallel_training": bool(config.train.data_parallel), "earlier": []}
  # Resumed elsewhere: the earlier machine stays listed; resumed again here, the file is unchanged.
  workdir = str(tmp_path)
  gpu = {**{k: v for k, v in env.items() if k != "earlier"}, "backend": "gpu", "devices": 8,
         "mesh": {"data": 8}}
  with open(os.path.join(workdir, experiment.RUN_FILE), "w") as f:
    json.dump({**gpu, "earlier": []}, f)
  mesh = parallel.make_mesh()
  assert experiment.record_environment(config, workdir, mesh) == {
      k: v for k, v in env.items() if k != "earlier"}
  with open(os.path.join(workdir, experiment.RUN_FILE)) as f:
    text = f.read()
  assert json.loads(text) == {**env, "earlier": [gpu]}
  experiment.record_environment(config, workdir, mesh)
  assert _read(os.path.join(workdir, experiment.RUN_FILE)) == text


def test_a_run_writes_its_losses_and_round_metrics_for_tensorboard(reference_run):
  from claus_jax import events
  from claus_jax import reporting
  from tests.test_events import tensorboard_scalars

  board = os.path.join(reference_run, events.DIR)
  rows = reporting.collect(reference_run)
  got = tensorboard_scalars(os.path.join(board, "rounds"))
  for row in rows:
    for key in ("accuracy", "capsule/f-mAP@0.5", "capsule/v-mAP@0.5"):
      assert (row["round"], pytest.approx(row[key], rel=1e-6)) in got[events.tag(f"test/{key}")]
  assert [s for s, _ in got["pool/cost"]] == [r["round"] for r in rows]
  for r in range(len(rows)):
    with open(os.path.join(reference_run, f"round_{r:03d}", "train.json")) as f:
      history = json.load(f)["history"]
    curve = tensorboard_scalars(os.path.join(board, f"round_{r:03d}"))["train/total"]
    assert curve == [(h["step"], pytest.approx(h["total"], rel=1e-6)) for h in history]


# ------------------------------------------------------------------------- the stage helper


def _counting_stage(path, calls, load=None):
  """rounds.stage over a JSON file; the result is the record tagged 'computed' or 'loaded'."""
  from claus_jax import pool as pool_lib

  def compute():
    calls.append("compute")
    return ("computed", {"value": 7}), {"value": 7}

  load = load or (lambda p: ("loaded", pool_lib.read_json(p)))
  return rounds.stage("result", path, compute, load, pool_lib.atomic_write_json)


@pytest.mark.parametrize("field,labelled,unlabelled", [
    ("train.batch_size", 3, 4), ("loss.ssl.unlabelled_batch_size", 4, 3)])
def test_data_parallel_batches_that_do_not_split_over_the_devices_are_refused_before_training(
    field, labelled, unlabelled):
  import types
  config = smoke_config(**{"train.data_parallel": True, "train.batch_size": labelled})
  config.loss.ssl.enabled = True
  config.loss.ssl.unlabelled_batch_size = unlabelled
  mesh = types.SimpleNamespace(devices=np.empty(4, object))  # A 4-device mesh, as the check sees it.
  with pytest.raises(experiment.errors.ConfigError,
                     match=rf"config.{field}: 3 clips do not split over the 4 devices"):
    experiment.check_devices(config, mesh)
  config.loss.ssl.unlabelled_batch_size = config.train.batch_size = 8
  experiment.check_devices(config, mesh)  # Batches of 8 split into 4 x 2.


def test_stage_computes_once_then_loads_the_file(tmp_path):
  path = str(tmp_path / "result.json")
  calls = []
  assert _counting_stage(path, calls) == ("computed", {"value": 7})
  assert _read(path) == '{\n "value": 7\n}\n'  # Exactly what pool.atomic_write_json writes.
  assert _counting_stage(path, calls) == ("loaded", {"value": 7})
  assert calls == ["compute"]
  # A load that finds the file but not the result (training without its final checkpoint) makes
  # the stage compute and write again.
  assert _counting_stage(path, calls, load=lambda p: rounds.INCOMPLETE)[0] == "computed"
  assert calls == ["compute", "compute"]


def test_stage_writes_its_file_atomically(tmp_path, monkeypatch):
  from claus_jax import pool as pool_lib

  path = str(tmp_path / "result.json")
  calls = []

  def killed(fd):
    raise _Crash("killed after the bytes were written, before the rename")

  with monkeypatch.context() as m:
    m.setattr(pool_lib.os, "fsync", killed)
    with pytest.raises(_Crash):
      _counting_stage(path, calls)
  assert os.listdir(tmp_path) == []  # No result file, torn or whole, and no temporary file left.
  assert _counting_stage(path, calls) == ("computed", {"value": 7})  # So it runs again.
  assert calls == ["compute", "compute"] and os.listdir(tmp_path) == ["result.json"]


def test_stage_is_written_by_process_0_alone(tmp_path, monkeypatch):
  from claus_jax import parallel

  path = str(tmp_path / "result.json")
  calls, barriers = [], []
  monkeypatch.setattr(parallel, "is_primary", lambda: False)
  monkeypatch.setattr(parallel, "sync", barriers.append)
  assert _counting_stage(path, calls) == ("computed", {"value": 7})  # Every process computes,
  assert not os.path.exists(path) and barriers == ["result"]  # waits, and does not write.


class _Crash(RuntimeError):
  pass


def _crash_once(monkeypatch, target, name, when=lambda *a, **k: True):
  original = getattr(target, name)
  state = {"done": False}

  def wrapper(*args, **kwargs):
    if not state["done"] and when(*args, **kwargs):
      state["done"] = True
      raise _Crash(f"simulated crash in {name}")
    return original(*args, **kwargs)

  monkeypatch.setattr(target, name, wrapper)


# ~150 s each beside the smoke run they share (2 CPU cores); CI runs them in its -m slow step, which
# kept the quick suite under 10 minutes.
@pytest.mark.parametrize("point", [pytest.param("after_training", marks=pytest.mark.slow),
                                   pytest.param("mid_scoring", marks=pytest.mark.slow),
                                   pytest.param("mid_selection", marks=pytest.mark.slow)])
def test_resume_after_a_crash_equals_an_uninterrupted_run(point, reference_run, tmp_path,
                                                          monkeypatch):
  workdir = str(tmp_path / point)
  with monkeypatch.context() as m:
    if point == "after_training":
      _crash_once(m, rounds, "evaluate")
    elif point == "mid_scoring":
      calls = {"n": 0}

      def second_shard(*args, **kwargs):
        calls["n"] += 1
        return calls["n"] == 2

      _crash_once(m, score_files, "save_shard", second_shard)
    else:
      _crash_once(m, oracle_lib, "apply_selection")
    with pytest.raises(_Crash):
      experiment.run(smoke_config(), workdir)
  if point == "mid_scoring":
    shards = os.listdir(os.path.join(workdir, "round_000", "scores"))
    assert shards == ["shard_0000.npz"]  # the first shard survived, the second was never written
  experiment.run(smoke_config(), workdir)
  assert _outcome(workdir) == _outcome(reference_run)


@pytest.fixture(scope="module")
def warm_run(tfds_dir, tmp_path_factory):
  """An uninterrupted smoke run with train.warm_start, and the weights each round's fit got and
  returned."""
  import jax

  workdir = str(tmp_path_factory.mktemp("warm"))
  starts, ends = {}, {}
  original = rounds.fit

  def fit(ctx, settings, r, state, *args, **kwargs):
    starts[r] = jax.device_get(state.params)
    result = original(ctx, settings, r, state, *args, **kwargs)
    ends[r] = jax.device_get(result.state.params)
    return result

  with pytest.MonkeyPatch.context() as m:
    m.setattr(rounds, "fit", fit)
    experiment.run(smoke_config(**{"train.warm_start": True}), workdir)
  return workdir, starts, ends


@pytest.mark.slow  # ~140 s: its smoke run is the slow resume check's.
def test_warm_start_trains_round_1_from_round_0s_trained_weights(warm_run, reference_run):
  import jax

  _, starts, ends = warm_run
  assert sorted(starts) == [0, 1]
  same = lambda a, b: all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, a, b)))
  assert same(starts[1], ends[0])
  assert not same(starts[1], starts[0])  # Round 0 trained: its end is not the initial weights.
  # Round 0 is the same with or without warm start; round 1 then trains from other weights.
  with open(os.path.join(reference_run, "metrics.jsonl")) as f:
    cold = [json.loads(line) for line in f]
  with open(os.path.join(warm_run[0], "metrics.jsonl")) as f:
    warm = [json.loads(line) for line in f]
  assert warm[0] == cold[0]


@pytest.mark.slow  # ~150 s (2 CPU cores): CI runs it in its -m slow step.
def test_a_strategy_started_from_a_shared_round_0_equals_its_own_run(reference_run, tfds_dir,
                                                                      tmp_path, monkeypatch):
  """launch/compare_strategies.py --share_round0: a random run from the claus run's round 0 trains
  round 1 only, and ends where a random run of its own ends: pools, selections and metrics."""
  compare = load_launch("compare_strategies")
  assert json.loads(_read(os.path.join(reference_run, "config.json")))["selection"]["strategy"] == (
      "claus")
  shared = str(tmp_path / "shared")
  assert compare.share_round0(reference_run, shared, "random")
  fitted = []
  original = rounds.fit

  def fit(ctx, settings, r, *args, **kwargs):
    fitted.append(r)
    return original(ctx, settings, r, *args, **kwargs)

  monkeypatch.setattr(rounds, "fit", fit)
  random_config = smoke_config(**{"selection.strategy": "random"})
  experiment.run(random_config, shared)
  assert fitted == [1]
  own = str(tmp_path / "own")
  experiment.run(random_config, own)
  assert fitted == [1, 0, 1]
  assert _outcome(shared) == _outcome(own)
  assert json.loads(_read(os.path.join(shared, "round_000", "selection.json")))["strategy"] == "random"
  # Random reads no score: its own run scored nothing and saved no latents.
  own_selection = json.loads(_read(os.path.join(own, "round_000", "selection.json")))
  assert own_selection["picks"] and all(p["video_score"] is None for p in own_selection["picks"])
  assert set(own_selection["clusters"].values()) == {-1}
  assert not os.path.exists(os.path.join(own, "round_000", "scores"))
  assert not os.path.exists(os.path.join(own, "round_000", "latents.npy"))
  # The copied config differs from the donor's in the strategy alone; anything else is refused.
  with pytest.raises(experiment.WorkdirMismatchError, match="train.steps"):
    experiment.run(smoke_config(**{"selection.strategy": "random", "train.steps": 21}), shared)


@pytest.mark.slow  # ~150 s (2 CPU cores): a smoke run of its own.
def test_ssal_round_labels_whole_videos_in_the_order_of_their_noiseaug_scores(tfds_dir, tmp_path):
  """uncertainty.source=noise with selection.strategy=ssal, end to end: the round's scores are
  NoiseAug variances (or -inf for frames that do not count), and round 0 buys whole videos, the
  highest SSAL video score (recomputed here from the stored scores) first, within the budget."""
  workdir = str(tmp_path / "ssal")
  # The smoke schedule's 3% frame step fits no whole 16-24-frame video; 30% fits several.
  config = smoke_config(**{"uncertainty.source": "noise", "selection.strategy": "ssal",
                           "budget.schedule": ((30.0, 50.0),)})
  experiment.run(config, workdir)
  rd = os.path.join(workdir, "round_000")
  scores = {}
  for name in sorted(os.listdir(os.path.join(rd, "scores"))):
    scores.update(score_files.load_shard(os.path.join(rd, "scores", name)))
  frame_scores = np.concatenate([v["frame_scores"][-1, 0] for v in scores.values()])
  assert np.isfinite(frame_scores).any()
  finite = frame_scores[np.isfinite(frame_scores)]
  assert np.all(frame_scores[~np.isfinite(frame_scores)] == -np.inf)
  # Means of Bernoulli variances; 0 for a counted frame without a pixel above noise_threshold.
  assert finite.min() >= 0 and finite.max() <= 0.25 and finite.max() > 0
  selection = json.loads(_read(os.path.join(rd, "selection.json")))
  pool = json.loads(_read(os.path.join(rd, "pool.json")))
  labelled = set(pool["videos"])
  assert selection["strategy"] == "ssal" and selection["picks"]

  def ssal_score(v):
    s = scores[v]["frame_scores"][-1, 0]
    return float(s[np.isfinite(s)].mean()) if np.isfinite(s).any() else 0.0

  picked = {p["video_id"] for p in selection["picks"]}
  for p in selection["picks"]:
    assert p["frames"] == list(range(len(scores[p["video_id"]]["entropy"])))  # whole videos
    assert p["video_score"] == pytest.approx(ssal_score(p["video_id"]), rel=1e-5)
  # First fit in score order (ties by id), as many videos and frames as the round buys.
  budget = selection["budget"]
  videos_left = int(budget["budget_video"] / pool["cost_video"] + 1e-9)
  frames_left = int(budget["budget_frame"] / pool["cost_frame"] + 1e-9)
  expected = []
  for v in sorted((v for v in scores if v not in labelled), key=lambda v: (-ssal_score(v), v)):
    length = len(scores[v]["entropy"])
    if len(expected) < videos_left and length <= frames_left:
      expected.append(v)
      frames_left -= length
  assert picked == set(expected)


@pytest.mark.slow  # ~4 min (2 CPU cores): a smoke run with a mean-teacher step of its own.
def test_mean_teacher_smoke_run_trains_on_consistency_and_a_rerun_recomputes_nothing(tfds_dir,
                                                                                   tmp_path):
  config = load_config("synthetic", "smoke,ssl")
  config.quiet = True
  workdir = str(tmp_path / "ssl")
  summary = experiment.run(config, workdir)
  for r in (0, 1):
    rd = os.path.join(workdir, f"round_{r:03d}")
    history = json.loads(_read(os.path.join(rd, "train_history.json")))
    assert [h["step"] for h in history] == [10, 20]
    # The consistency part is in every row, positive, with the ramp at 1 from half the round on.
    assert all(h["ssl_total"] > 0 and h["ssl_mse"] > 0 for h in history)
    assert history[-1]["ssl_ramp"] == 1.0
    assert "per_class" in json.loads(_read(os.path.join(rd, "eval.json")))
  before = {name: _read(os.path.join(workdir, "round_001", name))
            for name in ("train.json", "eval.json")}
  assert experiment.run(config, workdir) == summary
  assert before == {name: _read(os.path.join(workdir, "round_001", name)) for name in before}


@pytest.mark.slow
def test_warm_start_resumes_from_the_previous_rounds_checkpoint(warm_run, tmp_path, monkeypatch):
  # The crash comes as round 1's training starts: the re-run rebuilds round 1's starting weights
  # from round 0's final checkpoint on disk, not from memory.
  workdir = str(tmp_path / "warm")
  config = smoke_config(**{"train.warm_start": True})
  with monkeypatch.context() as m:
    _crash_once(m, rounds, "fit", lambda ctx, settings, r, *a, **k: r == 1)
    with pytest.raises(_Crash):
      experiment.run(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "round_001", "train.json"))
  experiment.run(config, workdir)
  assert _outcome(workdir) == _outcome(warm_run[0])


@pytest.mark.slow
def test_sigkill_during_training_then_rerun_finishes_identically(reference_run, tfds_dir,
                                                                 tmp_path):
  workdir = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "claus_jax.main", "--config=configs/synthetic.py:smoke",
         f"--workdir={workdir}", "--quiet"]
  env = dict(os.environ, CLAUS_TFDS_DIR=tfds_dir)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = os.path.join(workdir, "round_001", "checkpoints", "10")
  deadline = time.time() + 300
  while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before the kill point"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "round_001", "train.json"))
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "| 1 | 40.0 |" in done.stdout  # the summary table is printed at the end
  assert _outcome(workdir) == _outcome(reference_run)


def test_a_different_config_is_refused(reference_run):
  c = smoke_config(**{"train.steps": 21, "selection.strategy": "random"})
  with pytest.raises(experiment.WorkdirMismatchError) as e:
    experiment.check_or_write_config(c, reference_run)
  assert "selection.strategy: workdir has 'claus', this run has 'random'" in str(e.value)
  assert "train.steps: workdir has 20, this run has 21" in str(e.value)
  # A result-neutral field (progress bars) may differ.
  c = smoke_config()
  c.quiet = False
  experiment.check_or_write_config(c, reference_run)


def _answer_from_ground_truth(round_dir, dataset):
  """Plays the annotator: answers every request with the ground truth, as mask PNGs."""
  with open(os.path.join(round_dir, "requests.json")) as f:
    requests = json.load(f)
  pos = {v: i for i, v in enumerate(dataset.train_index.video_ids)}
  os.makedirs(os.path.join(round_dir, "masks"), exist_ok=True)
  videos = {}
  for req in requests["videos"]:
    record = dataset.train[pos[req["video_id"]]]
    frames = {}
    for f in req["frames"]:
      if record.has_gt[f]:
        name = f"masks/{req['video_id'].replace('/', '_')}_{f}.png"
        Image.fromarray(record.masks[f] * 255).save(os.path.join(round_dir, name))
        frames[str(f)] = {"mask": name}
      else:
        frames[str(f)] = {"empty": True}
    entry = {"frames": frames}
    if req["needs_label"]:
      entry["label"] = dataset.class_names[record.label]
    videos[req["video_id"]] = entry
  with open(os.path.join(round_dir, "answers.json"), "w") as f:
    json.dump({"videos": videos}, f)


@pytest.mark.slow  # ~110 s (2 CPU cores): CI runs it in its -m slow step.
def test_files_oracle_round_trip_matches_the_simulated_oracle(reference_run, tmp_path, caplog):
  from claus_jax import data as data_lib

  config = smoke_config(**{"oracle.kind": "files"})
  workdir = str(tmp_path / "files")
  dataset = data_lib.get_dataset(config)
  assert experiment.run(config, workdir) == {"awaiting_answers": True}
  assert "round_000/requests.json" in caplog.text  # The status line (absl logging) says where.
  assert os.path.exists(os.path.join(workdir, "round_000", "requests.csv"))
  _answer_from_ground_truth(os.path.join(workdir, "round_000"), dataset)
  assert experiment.run(config, workdir) == {"awaiting_answers": True}  # round 1's requests
  assert not os.path.exists(os.path.join(workdir, "round_000", "predictions.json"))  # No model yet.
  # Round 0's model answers round 1's requests too, for annotators to correct.
  with open(os.path.join(workdir, "round_001", "requests.json")) as f:
    requests = json.load(f)
  with open(os.path.join(workdir, "round_001", "predictions.json")) as f:
    predictions = json.load(f)
  assert predictions["round"] == 0
  size = config.data.frame_size
  for req in requests["videos"]:
    pred = predictions["videos"][req["video_id"]]
    assert pred["label"] in dataset.class_names
    assert sorted(map(int, pred["frames"])) == sorted(req["frames"])
    for entry in pred["frames"].values():
      if "box" in entry:
        x1, y1, x2, y2 = entry["box"]
        assert 0 <= x1 <= x2 < size and 0 <= y1 <= y2 < size and 0.5 <= entry["foreground"] <= 1
  _answer_from_ground_truth(os.path.join(workdir, "round_001"), dataset)
  experiment.run(config, workdir)
  # Exact ground-truth answers must give exactly the simulated run's labels and metrics.
  ours, ref = _outcome(workdir), _outcome(reference_run)
  assert ours == ref
  # An answer file edited after its round trained: the resumed run refuses, naming it (round 1's
  # training read round 0's answers too), rather than training round 1 on the edit.
  path = os.path.join(workdir, "round_000", "answers.json")
  with open(path) as f:
    answers = json.load(f)
  first = sorted(answers["videos"])[0]
  answers["videos"][first]["label"] = dataset.class_names[
      (dataset.class_names.index(answers["videos"][first]["label"]) + 1) % dataset.num_classes]
  with open(path, "w") as f:
    json.dump(answers, f)
  with pytest.raises(provenance.InputsChangedError,
                     match=r"round 0 was computed from other inputs \(round_000/answers.json "
                           r"changed\).*--recompute_from=round_000"):
    experiment.run(config, workdir)
  assert _outcome(workdir) == ref  # Nothing was changed by the refusal.


def test_a_config_edited_in_the_workdir_then_matched_by_an_override_is_refused(reference_run,
                                                                               tmp_path):
  import shutil
  workdir = tmp_path / "copy"
  shutil.copytree(reference_run, workdir)
  with open(workdir / "config.json") as f:
    config = json.load(f)
  config["train"]["steps"] = 21  # The refusal of a different config advised exactly this.
  with open(workdir / "config.json", "w") as f:
    json.dump(config, f)
  before = _outcome(str(workdir))
  done = subprocess.run([sys.executable, "-m", "claus_jax.main",
                         "--config=configs/synthetic.py:smoke", "--config.train.steps=21",
                         f"--workdir={workdir}", "--quiet"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 2, done.stderr[-2000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: round 0 was computed from other inputs (config train.steps: 20 then, 21 "
                    "now); its results would not match them. Use a new --workdir, or re-run with "
                    "--recompute_from=round_000 to compute round 0 and the later rounds again "
                    "(their answers are kept aside)."]
  assert _outcome(str(workdir)) == before  # train.json, eval.json ... all of the 20-step run.


def test_recompute_from_removes_the_rounds_results_and_keeps_every_answer(tmp_path):
  for r in range(3):
    rd = tmp_path / f"round_{r:03d}"
    (rd / "checkpoints" / "20").mkdir(parents=True)
    (rd / "scores").mkdir()
    for name in ("pool.json", "answers.json", "train.json", "eval.json", "selection.json",
                 provenance.INPUTS_FILE):
      (rd / name).write_text("{}")
  (tmp_path / "config.json").write_text("{}")
  provenance.recompute_from(str(tmp_path), 1, rounds.round_dir, log=lambda _: None)
  assert sorted(os.listdir(tmp_path / "round_001")) == ["answers.json", "pool.json"]
  assert len(os.listdir(tmp_path / "round_000")) == 8  # Earlier rounds untouched.
  aside = [d for d in os.listdir(tmp_path) if d.startswith("superseded-")]
  assert len(aside) == 1 and os.listdir(tmp_path / aside[0]) == ["round_002"]
  assert (tmp_path / aside[0] / "round_002" / "answers.json").exists()
  assert sorted(os.listdir(tmp_path)) == sorted(["config.json", "round_000", "round_001", aside[0]])
  with pytest.raises(provenance.InputsChangedError, match="round_005: .* holds no pool.json"):
    provenance.recompute_from(str(tmp_path), 5, rounds.round_dir)


def _write_requests(round_dir, class_names=("a", "b")):
  os.makedirs(round_dir, exist_ok=True)
  requests = {"round": 1, "class_names": list(class_names), "videos": [
      {"video_id": "v1", "frames": [2, 5], "needs_label": True, "num_frames": 8, "score": 0.5,
       "cluster": 0},
      {"video_id": "v2", "frames": [0], "needs_label": False, "num_frames": 4, "score": None,
       "cluster": 1}]}
  with open(os.path.join(round_dir, "requests.json"), "w") as f:
    json.dump(requests, f)


def _answers(round_dir, videos):
  with open(os.path.join(round_dir, "answers.json"), "w") as f:
    json.dump({"videos": videos}, f)


def test_answers_are_validated_against_the_requests(tmp_path):
  rd = str(tmp_path)
  _write_requests(rd)
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(os.path.join(rd, "small.png"))
  good = {"v1": {"label": "b", "frames": {"2": {"box": [0, 0, 3, 3]}, "5": {"empty": True}}},
          "v2": {"frames": {"0": {"box": [1, 2, 5, 6]}}}}
  _answers(rd, good)
  out = oracle_lib.load_answers(rd, (16, 16), ("a", "b"))
  assert out["v1"]["label"] == 1 and out["v2"]["label"] is None
  assert out["v1"]["frames"][2][0].sum() == 16 and out["v1"]["frames"][5][0].sum() == 0
  assert out["v2"]["frames"][0][0][2:7, 1:6].all() and out["v2"]["frames"][0][0].sum() == 25

  bad = {"v1": {"label": "zebra", "frames": {"2": {"mask": "small.png"}, "9": {"empty": True},
                                             "3": {"empty": True}}},
         "v3": {"frames": {}}}
  _answers(rd, bad)
  with pytest.raises(oracle_lib.AnswersError) as e:
    oracle_lib.load_answers(rd, (16, 16), ("a", "b"))
  msg = str(e.value)
  for expected in ("videos['v3']: extra video", "videos['v2']: missing",
                   "videos['v1'].label: 'zebra' is not a class name",
                   "videos['v1'].frames['9']: out of range [0, 8)",
                   "videos['v1'].frames['3']: extra frame, not requested",
                   "videos['v1'].frames['5']: missing",
                   "small.png has shape (4, 4), expected (16, 16)"):
    assert expected in msg, (expected, msg)
  _answers(rd, {"v1": {"frames": {"2": {"empty": True}, "5": {"box": [3, 0, 1, 2]}}},
                "v2": {"frames": {"0": {"box": [0, 0, 1, 1], "empty": True}}}})
  with pytest.raises(oracle_lib.AnswersError) as e:
    oracle_lib.load_answers(rd, (16, 16), ("a", "b"))
  msg = str(e.value)
  assert "videos['v1'].label: missing" in msg
  assert "must be [x1, y1, x2, y2] with x1 <= x2" in msg
  assert "videos['v2'].frames['0']: give exactly one of" in msg


# ------------------------------------------------------------- bad inputs: named, never silent


def _copy_run(reference_run, tmp_path, name="copy"):
  import shutil

  workdir = str(tmp_path / name)
  shutil.copytree(reference_run, workdir)
  return workdir


def test_a_config_refused_by_any_check_writes_no_config_json(tfds_dir, tmp_path):
  from claus_jax import configlib

  workdir = str(tmp_path / "w")
  with pytest.raises(configlib.ConfigError, match="config.eval.tiling: 'skip3' is not allowed"):
    experiment.run(smoke_config(**{"eval.tiling": "skip3"}), workdir)
  assert not os.path.exists(workdir)  # Refused before anything ran.
  # K above the round-0 videos is only known once the data is: still no config.json.
  with pytest.raises(configlib.ConfigError, match="config.cluster.k: K=50 is larger"):
    experiment.run(smoke_config(**{"cluster.k": 50}), workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_awaiting_answers_exits_with_its_own_code(tfds_dir, tmp_path):
  workdir = tmp_path / "files"
  done = subprocess.run([sys.executable, "-m", "claus_jax.main", "--config=configs/synthetic.py:smoke",
                         "--config.oracle.kind=files", f"--workdir={workdir}", "--quiet"], cwd=ROOT,
                        env=dict(os.environ, CLAUS_TFDS_DIR=tfds_dir), capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == experiment.EXIT_AWAITING_ANSWERS == 3, done.stderr[-2000:]
  # Status lines go through absl logging, which absl.app writes to stderr.
  assert f"Write the annotations to {workdir}/round_000/answers.json" in done.stderr
  assert os.path.exists(workdir / "round_000" / "requests.json")


@pytest.mark.slow  # ~80 s (2 CPU cores): retrains round 0 of the smoke run.
def test_a_damaged_final_checkpoint_is_named_and_deleting_it_resumes_training(reference_run,
                                                                             tmp_path):
  import shutil

  from claus_jax import train as train_lib

  workdir = _copy_run(reference_run, tmp_path)
  final = os.path.join(workdir, "round_001", "checkpoints", "20")
  data = os.path.join(final, "default", "ocdbt.process_0", "d")
  for name in os.listdir(data):  # Truncated array files, as a crash of the storage would leave.
    with open(os.path.join(data, name), "r+b") as f:
      f.truncate(16)
  os.remove(os.path.join(workdir, "round_001", "eval.json"))  # Evaluated again from the model.
  with pytest.raises(train_lib.CheckpointError) as e:
    experiment.run(smoke_config(), workdir)
  message = str(e.value)
  assert message.startswith(f"checkpoint {final} cannot be restored (") and len(message) < 600
  assert "Delete that folder and re-run the same command" in message
  # Deleting it, as the message says: train.json is there, but step 10 is no result. Training
  # resumes to step 20, and every result equals the uninterrupted run's.
  shutil.rmtree(final)
  experiment.run(smoke_config(), workdir)
  assert os.path.isdir(final)
  assert _outcome(workdir) == _outcome(reference_run)


def test_a_missing_pool_of_a_finished_run_is_rebuilt(reference_run, tmp_path):
  workdir = _copy_run(reference_run, tmp_path)
  os.remove(os.path.join(workdir, "round_001", "pool.json"))
  experiment.run(smoke_config(), workdir)
  assert _outcome(workdir) == _outcome(reference_run)


def test_damaged_state_files_are_named_with_what_to_do(reference_run, tmp_path):
  from claus_jax import data as data_lib
  from claus_jax import pool as pool_lib
  from claus_jax import reporting

  workdir = _copy_run(reference_run, tmp_path)
  config = smoke_config()
  dataset = data_lib.get_dataset(config)
  ctx = experiment.run_context(config, workdir, dataset, mesh=None)
  settings = experiment.round_settings(config)
  r0 = os.path.join(workdir, "round_000")
  readers = {  # Each state file and the stage that reads it.
      "config.json": lambda: experiment.check_or_write_config(config, workdir),
      "round_001/pool.json": lambda: rounds.load_pool(ctx, 1),
      "round_000/eval.json": lambda: rounds.evaluate(ctx, settings, 0, None),
      "round_000/train.json": lambda: reporting.collect(workdir),
      "round_000/selection.json": lambda: rounds.select(ctx, settings, 0, None, None, None),
      "round_000/scores/shard_0000.npz": lambda: rounds.score(ctx, settings, 0, None),
      "round_000/latents.npy": lambda: reporting.plot_selection_pca(workdir, dataset,
                                                                   str(tmp_path / "pca.png")),
  }
  fixes = {"config.json": "restore it, or delete it and re-run the command that started the run",
           "pool.json": "delete it and re-run the same command to rebuild it",
           "eval.json": "delete it and re-run the same command to evaluate that round again",
           "train.json": "delete it and re-run the same command to write it again from the "
                         "round's final checkpoint (no retraining)",
           "selection.json": "delete it and re-run the same command to select that round again",
           "shard_0000.npz": "delete it and re-run the same command to score its videos again",
           "latents.npy": "delete it and the selection.json beside it"}
  for name, read in readers.items():
    path = os.path.join(workdir, name)
    original = open(path, "rb").read()
    for damage in (original[:len(original) // 2], b"{}"):  # Torn, then valid JSON but empty.
      if damage == b"{}" and not name.endswith(".json"):
        continue
      with open(path, "wb") as f:
        f.write(damage)
      with pytest.raises((pool_lib.StateFileError, pool_lib.PoolError)) as e:
        read()
      assert str(e.value).startswith(f"{path}"), (name, str(e.value))
      assert fixes[os.path.basename(name)] in str(e.value), (name, str(e.value))
    with open(path, "wb") as f:
      f.write(original)
  assert os.path.isdir(r0)


def test_answers_are_parsed_strictly(tmp_path):
  rd = str(tmp_path)
  _write_requests(rd)  # v1: frames 2 and 5 of 8, needs a label; v2: frame 0 of 4.
  # Repeated keys (also '5' and '05', and a video twice), a boolean label, a box off the frame,
  # "empty": false and a boolean coordinate: every one is listed, none is silently read.
  with open(os.path.join(rd, "answers.json"), "w") as f:
    f.write('{"videos": {'
            '"v1": {"label": true, "frames": {"2": {"box": [20, 20, 30, 30]},'
            ' "5": {"empty": false}, "05": {"empty": true}}},'
            '"v2": {"frames": {"0": {"box": [0, 0, 1, 1]}}},'
            '"v2": {"frames": {"0": {"box": [0, 0, true, 1]}}}}}')
  with pytest.raises(oracle_lib.AnswersError) as e:
    oracle_lib.load_answers(rd, (16, 16), ("a", "b"))
  lines = str(e.value).splitlines()[1:-1]
  assert [line.strip() for line in lines] == [
      "videos['v2']: given more than once (only one answer per key)",
      "videos['v1'].label: True is not a class name; use one of ['a', 'b'] (a string)",
      "videos['v1'].frames['05']: frame 5 is also given as '5' (only one answer per frame)",
      "videos['v1'].frames['2'].box: [20, 20, 30, 30] lies entirely outside the 16x16 frame "
      "(pixels x in [0, 15], y in [0, 15])",
      "videos['v1'].frames['5'].empty: False; write true for a frame without an actor, or give its "
      "'box' or 'mask'",
      "videos['v2'].frames['0'].box: [0, 0, True, 1] must be [x1, y1, x2, y2], four numbers"], lines
  with open(os.path.join(rd, "answers.json"), "w") as f:
    f.write('{"videos": {"v1": {"label": 1, "frames": {"2": {"empty": true}, "5": {"empty": true}}},'
            '"v2": {"frames": {"0": {"empty": true}, "0": {"box": [0, 0, 1, 1]}}}}}')
  with pytest.raises(oracle_lib.AnswersError) as e:
    oracle_lib.load_answers(rd, (16, 16), ("a", "b"))
  assert [line.strip() for line in str(e.value).splitlines()[1:-1]] == [
      "videos['v1'].label: 1 is not a class name; use one of ['a', 'b'] (a string)",
      "videos['v2'].frames['0']: given more than once (only one answer per key)"]
  # A box partly outside the frame (corners from an annotation tool) is clipped to it.
  _answers(rd, {"v1": {"label": "a", "frames": {"2": {"box": [-2, 14, 3, 20]},
                                                 "5": {"empty": True}}},
                "v2": {"frames": {"0": {"box": [15, 0, 15.4, 0]}}}})
  out = oracle_lib.load_answers(rd, (16, 16), ("a", "b"))
  mask, box = out["v1"]["frames"][2]
  assert mask.sum() == 8 and mask[14:16, 0:4].all()
  np.testing.assert_array_equal(box, [0, 14, 3, 15])
  assert out["v2"]["frames"][0][0].sum() == 1 and out["v2"]["frames"][0][0][0, 15] == 1
