"""Can an encoder learn which way the actor moved, at the CPU budget? A motion-learnability check.

Trains a network from scratch on the pretraining corpus (never the benchmark) to regress the actor's
kinematics (``pretrain_corpus.kinematics``: per clip frame, the displacement since the first frame,
log scale and rotation) from its features pooled over space and time (mean and max), with a linear
head and the Huber loss, then reports R^2 of the x/y displacements on held-out corpus clips
(1 = exact, 0 = no better than predicting no motion):

  * ``--model=i3d``: the detector's encoder (InceptionI3d to Mixed_4f at the config's width);
  * ``--model=tiny``: four plain 3-D convs (16-64 channels), the easiest case;
  * ``--model=frozen``: no training; ridge regression on the frozen pretrained encoder's features
    (the one the synthetic default ships), i.e. how much of the motion those features say.

  python launch/motion_probe.py --config=configs/synthetic.py --model=i3d --steps=400
  python launch/motion_probe.py --config=configs/synthetic.py --model=tiny --jitter=0 --max_pan=0
  python launch/motion_probe.py --config=configs/synthetic.py --model=frozen
"""

from __future__ import annotations

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Config file.")
_MODEL = flags.DEFINE_enum("model", "i3d", ["i3d", "tiny", "frozen"], "What to probe.")
_STEPS = flags.DEFINE_integer("steps", 400, "Training steps (batch 8 fresh corpus clips each).")
_LR = flags.DEFINE_float("lr", 1e-3, "Adam learning rate.")
_JITTER = flags.DEFINE_float("jitter", None, "Camera jitter (default: config.pretrain.jitter).")
_PAN = flags.DEFINE_float("max_pan", None, "Camera pan (default: config.pretrain.max_pan).")
_VAL = flags.DEFINE_integer("val_clips", 256, "Held-out corpus clips for R^2.")
_OUT = flags.DEFINE_string("out", "", "Append the result as one JSON line to this file.")

_BATCH = 8


def main(argv):
  del argv
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from sklearn.linear_model import RidgeCV

  from claus_jax import experiment
  from claus_jax import models
  from claus_jax import pretrain as pretrain_lib
  from claus_jax import reporting
  from claus_jax.data import pretrain_corpus
  from claus_jax.models import i3d

  experiment.quiet_library_logs()
  config = _CONFIG.value
  params = pretrain_corpus.PretrainParams.from_config(config)
  overrides = {k: v for k, v in (("jitter", _JITTER.value), ("max_pan", _PAN.value)) if v is not None}
  params = pretrain_corpus.PretrainParams(**{**params.__dict__, **overrides})
  size, length = params.frame_size, params.clip_length
  val = pretrain_corpus.batch(params, range(2 ** 40, 2 ** 40 + _VAL.value))  # Never trained on.

  def r2(pred, target):  # x/y displacements, against predicting no motion.
    return 1.0 - float(np.sum((pred[..., :2] - target[..., :2]) ** 2)
                       / np.sum(target[..., :2] ** 2))

  class Probe(nn.Module):
    kind: str

    @nn.compact
    def __call__(self, video, train):
      if self.kind == "i3d":
        x = i3d.InceptionI3d("Mixed_4f", "claus", float(config.model.width))(video, train)[
            "Mixed_4f"]
      else:
        x = video
        for features, kernel, stride in ((16, (3, 5, 5), (1, 2, 2)), (32, (3, 3, 3), (2, 2, 2)),
                                         (64, (3, 3, 3), (2, 1, 1)), (64, (2, 3, 3), (2, 2, 2))):
          x = nn.Conv(features, kernel, stride, padding="SAME")(x)
          x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
      pooled = jnp.concatenate([x.mean(axis=(1, 2, 3)), x.max(axis=(1, 2, 3))], axis=-1)
      return nn.Dense(4 * length)(pooled.astype(jnp.float32)).reshape(-1, length, 4)

  t0 = time.time()
  row = {"model": _MODEL.value, "frame_size": size, "jitter": params.jitter,
         "max_pan": params.max_pan}
  if _MODEL.value == "frozen":
    directory = pretrain_lib.ensure_pretrained(config)
    model = models.build_model(config)
    variables = models.load_encoder_init(jax.jit(functools.partial(model.init, train=False))(
        jax.random.PRNGKey(0), jnp.zeros((1, length, size, size, 3))), directory)
    encode = jax.jit(lambda v: model.apply(variables, models.preprocess(v), method="encode")[
        "Mixed_4f"])

    def pooled(batch):
      x = np.concatenate([np.asarray(encode(batch["video"][i:i + _BATCH]), np.float32)
                          for i in range(0, len(batch["video"]), _BATCH)])
      return np.concatenate([x.mean(axis=(1, 2, 3)), x.max(axis=(1, 2, 3))], axis=-1)

    fit = pretrain_corpus.batch(params, range(_STEPS.value * _BATCH))
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 7)).fit(pooled(fit),
                                                      fit["kinematics"].reshape(len(fit["video"]), -1))
    row.update(fit_clips=len(fit["video"]), encoder=directory,
               val_r2_xy=r2(ridge.predict(pooled(val)).reshape(val["kinematics"].shape),
                            val["kinematics"]))
  else:
    net = Probe(_MODEL.value)
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, length, size, size, 3)), False)
    tx = optax.adam(_LR.value)
    opt = tx.init(variables["params"])

    @jax.jit
    def step(variables, opt, video, target):
      def loss_fn(p):
        out, updates = net.apply({**variables, "params": p}, models.preprocess(video), True,
                                 mutable=["batch_stats"])
        return optax.huber_loss(out, target).mean(), updates
      (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
      change, opt = tx.update(grads, opt, variables["params"])
      return {**updates, "params": optax.apply_updates(variables["params"], change)}, opt, loss

    losses = []
    for s in range(_STEPS.value):
      b = pretrain_corpus.batch(params, range(s * _BATCH, (s + 1) * _BATCH))
      variables, opt, loss = step(variables, opt, b["video"], b["kinematics"])
      losses.append(float(loss))
    predict = jax.jit(lambda v: net.apply(variables, models.preprocess(v), False))
    pred = np.concatenate([np.asarray(predict(val["video"][i:i + _BATCH]))
                           for i in range(0, len(val["video"]), _BATCH)])
    zero_loss = float(optax.huber_loss(jnp.asarray(val["kinematics"]), 0.0).mean())
    row.update(steps=_STEPS.value, lr=_LR.value, last_train_loss=float(np.mean(losses[-50:])),
               val_loss_no_motion=zero_loss, val_r2_xy=r2(pred, val["kinematics"]))
  row["seconds"] = round(time.time() - t0, 1)
  reporting.emit_row(row, _OUT.value)


if __name__ == "__main__":
  app.run(main)
