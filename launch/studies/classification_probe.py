"""Does the detector learn to classify? Train-split fit, validation accuracy and a linear-probe control.

Trains the detector on every ground-truth frame of the training groups *minus* a held-out validation
set of groups (``--val_groups``, carved from the train split: the test split is never read), for
``--steps`` steps with the config's round training. Then, on one action-centred clip per video, it
reports:
  * the capsule head's accuracy on the training videos (does it fit?) and on the validation videos;
  * a control: a logistic-regression probe on Mixed_4f pooled over space (mean and max), fitted on
    the training clips and scored on the validation clips. When the probe reads the class and the
    head does not, the head's read-out is the bottleneck, not the features.

  python launch/studies/classification_probe.py --config=configs/synthetic.py --steps=400
  python launch/studies/classification_probe.py --config=configs/synthetic.py --steps=400 \
      --config.model.routing_cost_scale=0
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 400, "Training steps.")
_VAL_GROUPS = flags.DEFINE_integer("val_groups", 8, "Train-split groups held out for validation.")
_CLS_ONLY = flags.DEFINE_boolean("cls_only", False, "Train the classification loss alone.")
_OUT = flags.DEFINE_string("out", "", "Append the result as one JSON line to this file.")
_TAG = flags.DEFINE_string("tag", "", "A name for this run in the output.")


def centre_clips(sampler, positions):
  """One clip per item position, centred in the video's action span (no augmentation)."""
  import numpy as np

  videos, labels = [], []
  for pos in positions:
    record = sampler.source[sampler.items[pos][0]]
    start, end = record.span
    clip = sampler.clip(pos, (start + end - 1) // 2)
    videos.append(clip["video"])
    labels.append(int(clip["label"]))
  return np.stack(videos), np.array(labels)


def main(argv):
  del argv
  import jax
  import numpy as np
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler

  from claus_jax import configlib
  from claus_jax import data as data_lib
  from claus_jax import experiment
  from claus_jax import models
  from claus_jax import pretrain as pretrain_lib
  from claus_jax import reporting
  from claus_jax import train as train_lib
  from claus_jax.data import clips as clips_lib

  experiment.quiet_library_logs()
  experiment.enable_compilation_cache()
  config = _CONFIG.value
  with config.unlocked():
    config.train.steps = _STEPS.value
    config.train.checkpoint_every = max(_STEPS.value, 1)
    config.train.log_every = max(_STEPS.value // 8, 1)
    if _CLS_ONLY.value:
      config.loss.bce_weight = config.loss.dice_weight = 0.0
      config.loss.cls_weight = 1.0
  configlib.validate(config)
  dataset = data_lib.get_dataset(config)
  index = dataset.train_index
  train_pos, val_pos = index.held_out_groups(_VAL_GROUPS.value)
  items = [(i, np.flatnonzero(dataset.train[i].has_gt)) for i in train_pos + val_pos]
  n_train = len(train_pos)
  clip_params = clips_lib.ClipParams.from_config(config)
  sampler = clips_lib.ClipSampler(dataset.train, items[:n_train], clip_params, seed=config.seed,
                                  round_index=0)
  val_sampler = clips_lib.ClipSampler(dataset.train, items[n_train:], clip_params, seed=config.seed,
                                      round_index=0)
  encoder_init = (pretrain_lib.ensure_pretrained(pretrain_lib.PretrainSettings.from_config(config))
                  if config.pretrain.enabled else "")
  model = models.build_model(config)
  params = train_lib.TrainParams.from_config(config)
  state = train_lib.create_state(params, model, jax.random.PRNGKey(config.seed), len(index),
                                 encoder_init=encoder_init)
  t0 = time.time()
  with tempfile.TemporaryDirectory(prefix="claus_probe_") as tmp:
    result = train_lib.fit(params, state, sampler, tmp, sampler.steps_per_epoch)
  train_s = time.time() - t0
  variables = {"params": result.state.params, "batch_stats": result.state.batch_stats}

  @jax.jit
  def forward(video):
    feats = model.apply(variables, models.preprocess(video), method="encode")
    out = model.apply(variables, feats, method="head")
    mixed = feats["Mixed_4f"][:, 0].astype(np.float32)
    pooled = jax.numpy.concatenate([mixed.mean(axis=(1, 2)), mixed.max(axis=(1, 2))], axis=-1)
    return out["class_probs"], pooled

  def run(smp, n):
    video, labels = centre_clips(smp, range(n))
    probs, pooled = [], []
    for s in range(0, len(video), 8):
      p, f = forward(video[s:s + 8])
      probs.append(np.asarray(p))
      pooled.append(np.asarray(f))
    return np.concatenate(probs), np.concatenate(pooled), labels

  tr_probs, tr_feat, tr_y = run(sampler, len(sampler.items))
  va_probs, va_feat, va_y = run(val_sampler, len(val_sampler.items))
  scaler = StandardScaler().fit(tr_feat)
  probe = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(tr_feat), tr_y)
  row = {
      "tag": _TAG.value, "steps": _STEPS.value, "train_s": round(train_s, 1),
      "train_videos": len(tr_y), "val_videos": len(va_y),
      "head_train_acc": float(np.mean(tr_probs.argmax(-1) == tr_y)),
      "head_val_acc": float(np.mean(va_probs.argmax(-1) == va_y)),
      "probe_train_acc": float(probe.score(scaler.transform(tr_feat), tr_y)),
      "probe_val_acc": float(probe.score(scaler.transform(va_feat), va_y)),
      "act_spread": float(np.mean(tr_probs.max(-1) - np.median(tr_probs, -1))),
      "last_losses": {k: round(v, 4) for k, v in result.history[-1].items()},
  }
  reporting.emit_row(row, _OUT.value)


if __name__ == "__main__":
  app.run(main)
