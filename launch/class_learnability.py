"""Are the benchmark's classes learnable from its videos, and from what? A class diagnostic.

Draws ``--groups`` train-split groups of the synthetic generator (one video each, the config's other
settings; never the test split), cuts every action clip (8 frames at skip 2, centres 2 frames apart)
and holds out every fourth group for validation. Then either:

  * ``--mode=oracle``: perfect tracking. Per clip frame, the ground-truth mask's centroid, log area
    and orientation (second moments) relative to the clip's first frame, fed to a logistic
    regression and to gradient-boosted trees. How well the class can be read from the actor's
    trajectory alone.
  * ``--mode=cnn``: a small 3-D CNN (four 3x3x3 convs, 16-64 channels, GroupNorm) trained end to end
    on the clips with softmax cross-entropy, read out by the spatio-temporal mean and max
    (``--head=pool``) or by a dense layer on the flattened map (``--head=flat``). Whether plentiful
    labelled videos alone teach a network the motion.

  python launch/class_learnability.py --mode=oracle --groups=400
  python launch/class_learnability.py --mode=cnn --head=flat --groups=400 --steps=500
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
_MODE = flags.DEFINE_enum("mode", "oracle", ["oracle", "cnn"], "What reads the class.")
_HEAD = flags.DEFINE_enum("head", "pool", ["pool", "flat"], "CNN read-out.")
_GROUPS = flags.DEFINE_integer("groups", 400, "Train-split groups to draw (one video each).")
_STEPS = flags.DEFINE_integer("steps", 500, "CNN training steps (batch 16).")
_OUT = flags.DEFINE_string("out", "", "Append the result as one JSON line to this file.")

_BATCH = 16


def trajectory_features(masks):
  """``(L, H, W)`` masks -> ``(5 L,)``: centroid x, y and log area relative to the first frame, and
  the orientation's doubled angle as cos/sin, per frame."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  m = masks.astype(np.float64)
  yy, xx = np.mgrid[0:m.shape[1], 0:m.shape[2]]
  area = m.sum(axis=(1, 2)) + 1e-6
  cx, cy = (m * xx).sum(axis=(1, 2)) / area, (m * yy).sum(axis=(1, 2)) / area
  dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
  mxx, myy = (m * dx * dx).sum(axis=(1, 2)), (m * dy * dy).sum(axis=(1, 2))
  angle = np.arctan2(2.0 * (m * dx * dy).sum(axis=(1, 2)), mxx - myy)
  rel = np.stack([cx - cx[0], cy - cy[0], np.log(area) - np.log(area[0]), np.cos(angle),
                  np.sin(angle)], axis=1)
  return rel.ravel()


def main(argv):
  del argv
  import numpy as np

  from claus_jax import reporting
  from claus_jax.data import clips as clips_lib
  from claus_jax.data import synthetic

  config = _CONFIG.value
  config.data.synthetic.train_groups = _GROUPS.value
  config.data.synthetic.videos_per_group = 1
  params = synthetic.GeneratorParams.from_config(config)
  t0 = time.time()
  video, masks, label, group = [], [], [], []
  for g, record in enumerate(synthetic.generate_split(params, "train")):
    start, end = record.span
    for centre in range(start + 7, end - 7, 2):
      frames = clips_lib.clip_frames(centre, record.num_frames)
      if record.has_gt[frames].all():
        video.append(record.frames[frames])
        masks.append(record.masks[frames])
        label.append(record.label)
        group.append(g)
  label, group = np.asarray(label), np.asarray(group)
  val = group % 4 == 0
  row = {"mode": _MODE.value, "groups": _GROUPS.value, "train_clips": int((~val).sum()),
         "val_clips": int(val.sum()), "chance": 1.0 / params.num_classes}

  if _MODE.value == "oracle":
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.stack([trajectory_features(m) for m in masks])
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    trees = HistGradientBoostingClassifier(max_iter=300, random_state=0)
    for name, clf in (("logistic", logistic), ("trees", trees)):
      clf.fit(x[~val], label[~val])
      row[f"{name}_train_acc"] = round(float(clf.score(x[~val], label[~val])), 3)
      row[f"{name}_val_acc"] = round(float(clf.score(x[val], label[val])), 3)
  else:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from claus_jax import models
    from claus_jax.models import i3d

    video = np.stack(video)
    head = _HEAD.value

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x):
        for features, stride in ((16, (1, 2, 2)), (32, (1, 2, 2)), (64, (2, 2, 2)),
                                 (64, (1, 1, 1))):
          x = nn.relu(nn.GroupNorm(8)(i3d.Conv3d(features, (3, 3, 3), stride)(x)))
        if head == "pool":
          x = jnp.concatenate([x.mean(axis=(1, 2, 3)), x.max(axis=(1, 2, 3))], axis=-1)
        else:
          x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return nn.Dense(params.num_classes)(x)

    net = Net()
    tx = optax.adam(1e-3)
    variables = net.init(jax.random.PRNGKey(0), models.preprocess(video[:1]))
    opt = tx.init(variables)

    @jax.jit
    def step(variables, opt, x, y):
      def loss_fn(v):
        return optax.softmax_cross_entropy_with_integer_labels(
            net.apply(v, models.preprocess(x)), y).mean()
      loss, grads = jax.value_and_grad(loss_fn)(variables)
      change, opt = tx.update(grads, opt, variables)
      return optax.apply_updates(variables, change), opt, loss

    predict = jax.jit(lambda v, x: net.apply(v, models.preprocess(x)).argmax(-1))

    def accuracy(idx):
      pred = np.concatenate([np.asarray(predict(variables, video[idx[i:i + 64]]))
                             for i in range(0, len(idx), 64)])
      return round(float(np.mean(pred == label[idx])), 3)

    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(_STEPS.value):
      b = rng.choice(train_idx, _BATCH)
      variables, opt, loss = step(variables, opt, video[b], label[b])
      losses.append(float(loss))
    row.update(head=head, steps=_STEPS.value,
               last_train_loss=round(float(np.mean(losses[-50:])), 4),
               train_acc=accuracy(train_idx), val_acc=accuracy(val_idx))
  row["seconds"] = round(time.time() - t0, 1)
  reporting.emit_row(row, _OUT.value)


if __name__ == "__main__":
  app.run(main)
