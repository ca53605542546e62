"""Can the class capsules read the class from fixed encoder features? Read-out variants side by side.

Encodes training clips once with a fixed encoder (the pretrained one, ``pretrain.enabled``, or random
init), then trains only a class read-out on those Mixed_4f features with the spread loss, and reports
train and validation accuracy (validation = held-out training groups; the test split is never read):

  * ``linear``: a linear layer on the spatial mean and max (softmax cross-entropy): the control;
  * ``caps:<sign>:<cost_scale>``: the detector's primary + class capsules (EM routing), class
    probabilities = activations averaged over the grid, spread loss at the config's margin.

  python launch/capsule_readout.py --config=configs/synthetic.py \
      --variants=linear,caps:port:0.01,caps:port:0,caps:em:0,caps:em:0.01

Both read-outs train the same way (Adam, ``--batch`` clips a step, ``--dropout`` on the feature
channels as the detector's first dropout site), so their fit per step compares their learning speed
at the detector's own budget (a round: 300 steps of 4 clips). Every 100 steps the row records the
accuracy on one centred clip per training video (``video_acc_by_step``). ``--cache`` keeps the encoded
clips in an .npz, so that several read-outs can run side by side in separate processes:

  python launch/capsule_readout.py --val_groups=12 --batch=4 --steps=1000 \
      --cache=/tmp/features.npz --variants=linear
  python launch/capsule_readout.py --val_groups=12 --batch=4 --steps=1000 \
      --cache=/tmp/features.npz --variants=caps:port:0.01 --dropout=0.2
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Config file.")
_VARIANTS = flags.DEFINE_list("variants", ["linear", "caps:port:0.01", "caps:port:0",
                                           "caps:em:0", "caps:em:0.01"], "Read-outs to train.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Read-out training steps.")
_CLIPS = flags.DEFINE_integer("clips_per_video", 6, "Augmented training clips per video.")
_VAL_GROUPS = flags.DEFINE_integer("val_groups", 8, "Train-split groups held out for validation.")
_LR = flags.DEFINE_float("lr", 1e-3, "Adam learning rate of the read-out.")
_OUT = flags.DEFINE_string("out", "", "Append one JSON line per variant to this file.")
_BATCH = flags.DEFINE_integer("batch", 0, "Read-out batch size (0: twice config.train.batch_size).")
_DROPOUT = flags.DEFINE_float("dropout", 0.0, "Channel dropout on the features while training.")
_CACHE = flags.DEFINE_string("cache", "", "An .npz of the encoded clips: written when missing, "
                             "read otherwise (it records the config and flags it was encoded with).")


def main(argv):
  del argv
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from claus_jax import configlib
  from claus_jax import data as data_lib
  from claus_jax import experiment
  from claus_jax import losses
  from claus_jax import models
  from claus_jax import pretrain as pretrain_lib
  from claus_jax import reporting
  from claus_jax import train as train_lib
  from claus_jax.data import clips as clips_lib
  from claus_jax.models import capsules

  experiment.quiet_library_logs()
  experiment.enable_compilation_cache()
  config = _CONFIG.value
  configlib.validate(config)
  dataset = data_lib.get_dataset(config)
  index = dataset.train_index
  train_pos, val_pos = index.held_out_groups(_VAL_GROUPS.value)
  encoder_init = pretrain_lib.ensure_pretrained(config) if config.pretrain.enabled else ""
  model = models.build_model(config)
  state = train_lib.create_state(config, model, jax.random.PRNGKey(config.seed), len(index),
                                 encoder_init=encoder_init)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  encode = jax.jit(lambda v: model.apply(variables, models.preprocess(v), method="encode")[
      "Mixed_4f"][:, 0].astype(jnp.float32))

  def features(positions, per_video, augment):
    items = [(i, np.flatnonzero(dataset.train[i].has_gt)) for i in positions]
    sampler = clips_lib.ClipSampler(dataset.train, items, config, seed=config.seed, round_index=0)
    rng = np.random.default_rng(config.seed)
    feats, labels = [], []
    for pos, (_, frames) in enumerate(sampler.items):
      centres = rng.choice(frames, per_video) if augment else [frames[len(frames) // 2]]
      for c in centres:
        clip = sampler.clip(pos, int(c), rng if augment else None)
        feats.append(np.asarray(encode(clip["video"][None]))[0])
        labels.append(int(clip["label"]))
    return np.stack(feats), np.array(labels, np.int32)

  t0 = time.time()
  # What the encoded clips depend on: the whole config (data, model, pretraining) and two flags.
  key = f"{config.to_json(sort_keys=True)}|val_groups={_VAL_GROUPS.value}|clips={_CLIPS.value}"
  if _CACHE.value and os.path.exists(_CACHE.value):
    with np.load(_CACHE.value) as z:
      if str(z["key"]) != key:
        raise SystemExit(f"{_CACHE.value} holds clips encoded with another config, --val_groups or "
                         "--clips_per_video; delete it or pass another --cache.")
      x_tr, y_tr, x_fit, y_fit, x_va, y_va = (z[k] for k in ("x_tr", "y_tr", "x_fit", "y_fit",
                                                                "x_va", "y_va"))
  else:
    x_tr, y_tr = features(train_pos, _CLIPS.value, True)
    x_fit, y_fit = features(train_pos, 1, False)  # One centred clip per training video.
    x_va, y_va = features(val_pos, 1, False)
    if _CACHE.value:
      np.savez(_CACHE.value, key=key, x_tr=x_tr, y_tr=y_tr, x_fit=x_fit, y_fit=y_fit, x_va=x_va,
               y_va=y_va)
  print(f"features: {x_tr.shape} train clips, {len(y_va)} val videos in {time.time() - t0:.0f} s",
        flush=True)
  num_classes = int(config.model.num_classes)
  geo_kernel = models.primary_kernel(config)
  margin = float(config.loss.margin_start)

  class Readout(nn.Module):
    kind: str
    sign: str = "port"
    cost_scale: float = 0.0

    @nn.compact
    def __call__(self, x):
      if self.kind == "linear":
        return nn.Dense(num_classes)(jnp.concatenate([x.mean((1, 2)), x.max((1, 2))], -1))
      poses, acts = capsules.PrimaryCapsules(int(config.model.primary_caps), geo_kernel)(x)
      _, class_acts = capsules.ConvCapsules(num_classes, 1, int(config.model.routing_iters),
                                            False, float(config.model.routing_lambda),
                                            self.cost_scale, self.sign == "em")(poses, acts)
      return class_acts.mean(axis=(1, 2))

  rows = []
  for variant in _VARIANTS.value:
    parts = variant.split(":")
    net = (Readout("linear") if parts[0] == "linear"
           else Readout("caps", parts[1], float(parts[2])))
    params = net.init(jax.random.PRNGKey(0), x_tr[:2])
    tx = optax.adam(_LR.value)
    opt = tx.init(params)

    def loss_fn(p, x, y, key):
      if _DROPOUT.value > 0:  # Channel dropout as the detector's (one draw per clip and channel).
        keep = jax.random.bernoulli(key, 1.0 - _DROPOUT.value, (x.shape[0], 1, 1, x.shape[-1]))
        x = jnp.where(keep, x / (1.0 - _DROPOUT.value), 0.0)
      out = net.apply(p, x)
      if parts[0] == "linear":
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
      return losses.spread_loss(out, y, margin)

    @jax.jit
    def step(p, opt, x, y, key):
      loss, grads = jax.value_and_grad(loss_fn)(p, x, y, key)
      updates, opt = tx.update(grads, opt, p)
      return optax.apply_updates(p, updates), opt, loss

    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(1)
    apply = jax.jit(net.apply)
    acc = lambda x, y: float(np.mean(np.asarray(apply(params, x)).argmax(-1) == y))
    t0 = time.time()
    batch = _BATCH.value or int(config.train.batch_size) * 2
    curve = {}
    for it in range(1, _STEPS.value + 1):
      idx = rng.choice(len(y_tr), batch, replace=False)
      key, sub = jax.random.split(key)
      params, opt, loss = step(params, opt, x_tr[idx], y_tr[idx], sub)
      if it % 100 == 0:
        curve[it] = round(acc(x_fit, y_fit), 3)
    spread = np.asarray(apply(params, x_fit))
    syn = config.data.synthetic if config.dataset == "synthetic" else None
    row = {"variant": variant, "dataset": config.dataset, "seed": int(config.seed),
           "cues": ({k: float(syn[k]) for k in ("class_scene", "class_color", "class_shape")}
                    if syn is not None else {}),
           "val_groups": _VAL_GROUPS.value, "steps": _STEPS.value, "batch": batch, "lr": _LR.value,
           "dropout": _DROPOUT.value, "loss": float(loss),
           "train_clip_acc": acc(x_tr, y_tr), "train_video_acc": acc(x_fit, y_fit),
           "val_acc": acc(x_va, y_va), "video_acc_by_step": curve,
           "act_spread": float(np.mean(spread.max(-1) - spread.min(-1))),
           "seconds": round(time.time() - t0, 1)}
    rows.append(row)
    reporting.emit_row(row, _OUT.value)


if __name__ == "__main__":
  app.run(main)
