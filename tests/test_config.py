"""Config files load, validate, and bad values give errors naming the field."""

import os

import pytest

from claus_jax import configlib
from claus_jax import experiment
from claus_jax import models
from tests.config_files import load_config as load


@pytest.mark.parametrize("name,arg", [("synthetic", None), ("synthetic", "smoke"),
                                      ("synthetic", "ssl"), ("synthetic", "smoke,ssl")])
def test_synthetic_configs_validate(name, arg):
  configlib.validate(load(name, arg))


def test_paper_configs(tmp_path, monkeypatch):
  monkeypatch.setenv("CLAUS_DATA_DIR", str(tmp_path))
  for name, classes, schedule in (("jhmdb", 21, configlib.JHMDB_SCHEDULE),
                                  ("ucf101_24", 24, configlib.UCF101_24_SCHEDULE)):
    c = load(name)
    assert c.data.root == str(tmp_path)
    configlib.validate(c)
    assert c.model.num_classes == classes and c.uncertainty.passes == 10 and c.cluster.k == 5
    assert c.data.frame_size == 224 and c.model.width == 1.0
    assert (c.budget.initial_frames_pct, c.budget.initial_videos_pct) == schedule[0]
    assert tuple(tuple(s) for s in c.budget.schedule) == schedule[1:]
    assert not c.loss.ssl.enabled
    # The mean-teacher switch, alone or on a variant: as many unlabelled clips as labelled ones.
    for arg, batch in (("ssl", 8), ("tiny,ssl", 2), ("authors,ssl", 6)):
      ssl = load(name, arg)
      configlib.validate(ssl)
      assert ssl.loss.ssl.enabled and ssl.loss.ssl.unlabelled_batch_size == batch
      assert ssl.train.batch_size == batch
    with pytest.raises(ValueError, match="variant 'tiny' takes no flag but 'ssl'"):
      load(name, "tiny,foo")


def test_every_field_has_a_comment():
  import inspect
  import re
  src = inspect.getsource(configlib.base_config)
  section = re.compile(r"^(c\.\w+ = _cd\(|\w+=_cd\()$")  # a section opener, not a field
  for line in src.splitlines():
    stripped = line.strip()
    if "=" not in stripped or section.match(stripped) or stripped.startswith(
        ("c = ", "return", "#", "def ", '"""')):
      continue
    assert "#" in stripped, f"config field without a comment: {stripped}"


def test_unknown_field_is_refused():
  c = load("synthetic")
  with pytest.raises(AttributeError, match="typo_field"):
    c.train.typo_field = 3


def _expect(c, field):
  with pytest.raises(configlib.ConfigError, match=f"config.{field}"):
    configlib.validate(c)


def test_validation_errors_name_the_field(tmp_path, monkeypatch):
  monkeypatch.delenv("CLAUS_DATA_DIR", raising=False)
  c = load("jhmdb")
  c.data.root = ""
  with pytest.raises(configlib.ConfigError, match="config.data.root: no data root.*CLAUS_DATA_DIR"):
    configlib.validate(c)
  c.data.root = str(tmp_path / "absent")
  _expect(c, "data.root")

  c = load("synthetic")
  c.data.frame_size = 72
  with pytest.raises(configlib.ConfigError, match="frame_size=72: must be a multiple of 16"):
    configlib.validate(c)
  c = load("synthetic")
  c.model.primary_kernel = 20
  _expect(c, "model.primary_kernel")
  c = load("synthetic")
  c.budget.schedule = ((2.0, 20.0), (3.0, 130.0))
  with pytest.raises(configlib.ConfigError, match=r"budget.schedule\[1\].*more than 100%"):
    configlib.validate(c)
  c = load("synthetic")
  c.budget.schedule = ((2.0, 20.0), (1.0, 30.0))
  _expect(c, r"budget.schedule\[1\]")
  c = load("synthetic")
  c.selection.strategy = "clause"
  _expect(c, "selection.strategy")
  c = load("synthetic")
  c.model.num_classes = 5
  _expect(c, "model.num_classes")
  c = load("synthetic")
  c.model.routing_cost_scale = -0.01
  _expect(c, "model.routing_cost_scale")
  c = load("synthetic")
  c.train.bn_recalibration_batches = -1
  _expect(c, "train.bn_recalibration_batches")
  c = load("synthetic")
  c.selection.strategy = "ssal"  # SSAL ranks by NoiseAug scores: MC dropout cannot act for it.
  with pytest.raises(configlib.ConfigError,
                     match="config.selection.strategy: 'ssal'.*uncertainty.source=noise"):
    configlib.validate(c)
  c.uncertainty.source = "noise"
  configlib.validate(c)


def test_validation_against_data():
  c = load("synthetic")  # 10% of 96 videos = 10 in round 0, K = 5
  configlib.validate_against_data(c, 96, 3456, 8)
  c.cluster.k = 11
  with pytest.raises(configlib.ConfigError, match="config.cluster.k: K=11 is larger than the 10"):
    configlib.validate_against_data(c, 96, 3456, 8)
  c = load("synthetic")
  with pytest.raises(configlib.ConfigError, match="config.model.num_classes"):
    configlib.validate_against_data(c, 96, 3456, 9)
  c.budget.initial_frames_pct = 0.1
  with pytest.raises(configlib.ConfigError, match="config.budget.initial_frames_pct"):
    configlib.validate_against_data(c, 96, 3456, 8)


def test_geometry_matches_paper_at_224():
  g = models.geometry(224)
  assert (g["feature"], g["primary_kernel"], g["grid"]) == (28, 9, 20)
  for size in (32, 64, 112):
    g = models.geometry(size)
    assert g["grid"] >= 1 and g["feature"] == size // 8


def test_default_workdir():
  assert experiment.default_workdir("configs/synthetic.py") == os.path.join("runs", "synthetic")
  assert experiment.default_workdir("configs/synthetic.py:smoke") == os.path.join("runs",
                                                                               "synthetic_smoke")


@pytest.mark.parametrize("field,value,message", [
    ("train.steps", 0, "config.train.steps: 0 must be >= 1."),
    ("train.steps", -3, "config.train.steps: -3 must be >= 1."),
    ("train.learning_rate", -0.003, "config.train.learning_rate: -0.003 must be > 0."),
    ("train.batch_size", 0, "config.train.batch_size: 0 must be >= 1."),
    ("train.log_every", 0, "config.train.log_every: 0 must be >= 1."),
    ("seed", -1, "config.seed: -1 must be in [0, 2147483647]."),
    ("train.b2", float("nan"), "config.train.b2: nan must be in [0, 1)."),
    ("eval.score_rule", "class_probs", "config.eval.score_rule: 'class_probs' is not allowed; use "
     "one of ('class_prob', 'class_prob_x_mask_mean')."),
    ("eval.tiling", "skip3", "config.eval.tiling: 'skip3' is not allowed"),
    ("eval.iou_thresholds", (0.5, 1.5), "config.eval.iou_thresholds: 1.5 must be in (0, 1]."),
    ("eval.video_top_k", 9, "config.eval.video_top_k: 9 must be in [1, model.num_classes=8]."),
    ("loss.p_low", 0.95, "config.loss.p_low: 0.95 is above loss.p_high=0.9."),
    ("uncertainty.noise_amplitude", 1.5, "config.uncertainty.noise_amplitude: 1.5 must be in "
     "[0, 1]. It is the noise's half-width on the [0, 1] image (SSAL: 0.05)."),
    ("loss.ssl.ema_max", 1.0, "config.loss.ssl.ema_max: 1.0 must be in [0, 1). It caps the "
     "teacher's EMA share (SSAL: 0.99)."),
    ("loss.ssl.unlabelled_batch_size", 0, "config.loss.ssl.unlabelled_batch_size: 0 must be >= 1."),
])
def test_out_of_range_values_are_refused_naming_the_field(field, value, message):
  c = load("synthetic")
  section, _, name = field.rpartition(".")
  setattr(configlib.field_value(c, section) if section else c, name, value)
  with pytest.raises(configlib.ConfigError) as e:
    configlib.validate(c)
  assert str(e.value).startswith(message), str(e.value)


def _numeric_fields(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _numeric_fields(value, f"{prefix}{key}.")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield f"{prefix}{key}", value


def test_every_numeric_field_has_a_range_check():
  # A value far outside any sensible range must be refused, naming the field, for every numeric
  # field of the schema (NaN for a float, -1e9 for an int).
  unchecked = []
  for field, value in _numeric_fields(configlib.to_dict(configlib.base_config())):
    c = load("synthetic")
    section, _, name = field.rpartition(".")
    setattr(configlib.field_value(c, section) if section else c, name,
            float("nan") if isinstance(value, float) else -10**9)
    try:
      configlib.validate(c)
      unchecked.append(field)
    except configlib.ConfigError as e:
      assert f"config.{field}" in str(e), (field, str(e))
  assert not unchecked, f"numeric fields without a range check: {unchecked}"


def test_choices_are_the_modules_own_names():
  from claus_jax import clustering, losses, models, oracle, tiling, train, uncertainty
  from claus_jax.data import clips, official, pseudo_labels, synthetic
  from claus_jax.evaluation import evaluator
  from claus_jax.models import detector, i3d
  from claus_jax.selection import frames, strategies

  owners = {
      "dataset": configlib.DATASETS, "data.on_bad_video": official.ON_BAD_VIDEO,
      "data.synthetic.mode": synthetic.MODES, "model.strides": models.DETECTOR_STRIDES,
      "model.conv_impl": i3d.CONV_IMPLS, "model.routing_sign": detector.ROUTING_SIGNS,
      "model.routing": detector.ROUTINGS, "model.init": detector.INITS,
      "train.sampling": clips.SAMPLINGS, "train.lr_schedule": train.LR_SCHEDULES,
      "loss.variant": losses.VARIANTS,
      "loss.stew_form": losses.FORMS, "loss.weight_mode": losses.WEIGHT_MODES,
      "loss.mask_interp": pseudo_labels.MASK_INTERPOLATIONS,
      "cluster.latents": clustering.LATENT_MODES, "uncertainty.form": uncertainty.FORMS,
      "uncertainty.source": uncertainty.SOURCES,
      "uncertainty.tiling": tiling.TILINGS, "selection.video_score": frames.VIDEO_SCORES,
      "selection.cluster_quota": strategies.CLUSTER_QUOTAS,
      "eval.score_rule": evaluator.SCORE_RULES, "eval.tiling": tiling.TILINGS,
      "oracle.kind": oracle.KINDS}
  table = configlib.choices()
  assert set(table) == set(owners) | {"model.dtype", "selection.strategy"}
  for field, constant in owners.items():
    assert table[field] is constant, field  # The module's own tuple, not a copy.
  assert table["model.dtype"] == tuple(models.DTYPES)
  assert table["selection.strategy"] == tuple(strategies.STRATEGIES) == configlib.STRATEGIES
  assert configlib.CHOICES == table


@pytest.fixture
def refuse_models_and_data(monkeypatch):
  """Building or initialising a detector, or reading a dataset, fails the test."""
  from claus_jax import data, models

  def refuse(*args, **kwargs):
    raise AssertionError("a model was built or data read before the config was validated")

  for owner, name in ((models, "build_model"), (models, "init_variables"),
                      (models.CLAUSDetector, "init"), (data, "get_dataset")):
    monkeypatch.setattr(owner, name, refuse)
  # The run's process-wide setup (compilation cache, library log levels) is not under test here.
  monkeypatch.setattr(experiment, "enable_compilation_cache", lambda: None)
  monkeypatch.setattr(experiment, "quiet_library_logs", lambda: None)


@pytest.mark.parametrize("field", sorted(configlib.choices()))
def test_every_enumerated_field_refuses_a_bad_value_before_any_model_is_built(
    field, refuse_models_and_data, tmp_path):
  c = load("synthetic")
  section, _, name = field.rpartition(".")
  setattr(configlib.field_value(c, section) if section else c, name, "no_such_value")
  want = (f"config.{field}: 'no_such_value' is not allowed; use one of "
          f"{configlib.choices()[field]}.")
  with pytest.raises(ValueError) as e:  # ConfigError, itself a ValueError.
    configlib.validate(c)
  assert isinstance(e.value, configlib.ConfigError) and str(e.value).startswith(want), str(e.value)
  # A run validates first: the same error, with no model built, no data read, no workdir made.
  workdir = tmp_path / "run"
  with pytest.raises(configlib.ConfigError) as e:
    experiment.run(c, str(workdir))
  assert str(e.value).startswith(want), str(e.value)
  assert not workdir.exists()


def test_pretraining_fields_are_checked_with_the_fix():
  c = load("synthetic")
  with c.unlocked():
    c.pretrain.min_speed, c.pretrain.max_speed = 2.0, 1.0
  with pytest.raises(configlib.ConfigError, match="config.pretrain.min_speed"):
    configlib.validate(c)
  c = load("synthetic")
  c.pretrain.frame_size = 40
  with pytest.raises(configlib.ConfigError, match="config.pretrain.frame_size: 40 must be 0"):
    configlib.validate(c)
  c = load("jhmdb", "tiny")
  c.pretrain.enabled = True
  with pytest.raises(configlib.ConfigError, match="config.pretrain.enabled.*model.encoder_init"):
    configlib.validate(c)
  c = load("synthetic")
  c.model.routing_sign = "hinton"
  with pytest.raises(configlib.ConfigError, match="config.model.routing_sign"):
    configlib.validate(c)


def test_authors_preset_and_its_guards(tmp_path, monkeypatch):
  """Issue 18: configs/*.py:authors reproduce the authors' code; ground-truth leaks stay off unless
  a named flag turns them on; paper configs refuse a silent random encoder (item 8)."""
  monkeypatch.setenv("CLAUS_DATA_DIR", str(tmp_path))
  for name in ("jhmdb", "ucf101_24"):
    c = load(name, "authors")
    configlib.validate(c)
    assert (c.model.routing, c.model.routing_sign, c.model.routing_lambda) == ("authors", "port", 1e-6)
    assert (c.model.init, tuple(c.model.input_range)) == ("authors", (0.0, 1.0))
    assert (c.loss.stew_form, c.loss.stew_sigma, c.loss.stew_radius) == ("implementation", 8 / 3, 8)
    assert (c.loss.weight_mode, c.loss.margin_step, c.cluster.start_step) == ("logit", 0.0, 0)
    assert (c.train.sampling, c.train.clips_per_video, c.train.epochs) == ("video", 2, 40.0)
    assert (c.selection.video_score, c.selection.cluster_quota) == ("penalised", "cap")
    assert c.cluster.latents == "eval"
    assert (c.train.learning_rate, c.train.b1, c.train.b2, c.train.eps, c.train.batch_size) == (
        5e-5, 0.5, 0.999, 1e-6, 6)
    assert not c.selection.restrict_to_gt_span  # Leaks labels: off ...
    assert load(name, "authors,gt_span").selection.restrict_to_gt_span  # ... unless asked for.
    with pytest.raises(ValueError, match="unknown flag"):
      load(name, "authors,tube_length")
    # Item 8: no weights and no explicit 'scratch' is refused before training, naming the fix.
    with pytest.raises(configlib.ConfigError, match="config.model.encoder_init.*import_i3d.*scratch"):
      configlib.check_encoder_init(c)
    c.model.encoder_init = "scratch"
    configlib.check_encoder_init(c)
  configlib.check_encoder_init(load("synthetic"))  # The synthetic benchmark pretrains its own.
  assert load("jhmdb", "tiny").model.encoder_init == "scratch"
  assert configlib.base_config().model.routing_sign == "em"
  c = load("synthetic")
  c.model.routing = "authors"
  with pytest.raises(configlib.ConfigError, match="config.model.routing.*routing_cost_scale=0"):
    configlib.validate(c)
  c = load("synthetic")
  c.model.input_range = (1.0, 0.0)
  with pytest.raises(configlib.ConfigError, match="config.model.input_range"):
    configlib.validate(c)
