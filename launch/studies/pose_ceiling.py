"""How well can the synthetic benchmark's class be read from a perfect 2-D pose tracker?

Issue 27's gate asks the detector for >= 0.85 accuracy on validation groups, and asks that "the pose
sequence resolves" what the scene leaves open. This study measures what the pose sequence can
resolve at all: it reads the class from the figure's true 2-D joints (the renderer's, in image
pixels: what a perfect pose tracker would see, occluders and viewpoint included), with no network.
Train-split groups only: the last ``--val_groups`` are held out for validation, the test split is
never read.

Per video, the features are each joint's position relative to the pelvis and the pelvis's own path
(both divided by the figure's standing height in pixels), summarised over the frames by the mean,
standard deviation, minimum, maximum and the mean absolute frame-to-frame change. A mirrored copy of
every training video is added (every v2 class is its own mirror image). It reports, on validation:
  * pose alone: standardised logistic regression (C = 1) and gradient-boosted trees;
  * the scene alone (the 4x4 colour grid of the middle frame without the actor, as in
    ``scene_cue.py``), and pose and scene together;
  * the per-class recall of the pose-alone trees, to name the classes that pose cannot separate.

  python launch/studies/pose_ceiling.py --config=configs/synthetic.py --val_groups=10
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Config file.")
_VAL_GROUPS = flags.DEFINE_integer("val_groups", 10, "Train-split groups held out for validation.")
_OUT = flags.DEFINE_string("out", "", "Append the result as one JSON line to this file.")

POSE_JOINTS = ("neck", "head", "r_shoulder", "r_elbow", "r_hand", "l_shoulder", "l_elbow",
               "l_hand", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle")


def pose_features(points: dict, height: float, mirror: bool = False):
  """``(14 * 2 * 5 + 2 * 5,)`` summary of a video's joints (see the module docstring)."""
  import numpy as np

  pelvis = points["pelvis"]
  rel = np.stack([points[j] - pelvis for j in POSE_JOINTS], axis=1) / height  # (T, J, 2)
  path = ((pelvis - pelvis[:1]) / height)[:, None]  # (T, 1, 2)
  x = np.concatenate([rel, path], axis=1)
  if mirror:
    x = x * np.array([-1.0, 1.0])
  x = x.reshape(x.shape[0], -1)
  step = np.abs(np.diff(x, axis=0)).mean(axis=0) if len(x) > 1 else np.zeros(x.shape[1])
  return np.concatenate([x.mean(0), x.std(0), x.min(0), x.max(0), step])


def main(argv):
  del argv
  import numpy as np
  from sklearn.ensemble import HistGradientBoostingClassifier
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  from claus_jax.data import synthetic
  from launch.studies.train_groups import colour_grid
  from launch.studies.train_groups import generator_and_groups

  held = _VAL_GROUPS.value
  params, groups = generator_and_groups(_CONFIG.value, held)
  rows = []  # (is_val, label, pose, mirrored pose, scene grid)
  for g in range(groups):
    rec = synthetic.recording(params, "train", g)
    for v in range(rec.num_videos):
      video, points = synthetic.render_video_and_joints(params, "train", g, v, rec)
      # Only the frames with ground truth (the action's span) are the action.
      span = slice(*video.span)
      points = {k: p[span] for k, p in points.items()}
      scene = synthetic._render_video(params, "train", g, v, rec, draw_actor=False)
      rows.append((g >= groups - held, rec.label, pose_features(points, rec.figure.height),
                   pose_features(points, rec.figure.height, mirror=True),
                   colour_grid(scene.frames[scene.num_frames // 2], 4)))
  val = np.array([r[0] for r in rows])
  y = np.array([r[1] for r in rows])
  pose = np.stack([r[2] for r in rows])
  pose_mirror = np.stack([r[3] for r in rows])
  scene = np.stack([r[4] for r in rows])
  both, both_mirror = np.concatenate([pose, scene], 1), np.concatenate([pose_mirror, scene], 1)

  def fit(model, x, x_mirror):
    x_train = np.concatenate([x[~val], x_mirror[~val]])
    y_train = np.concatenate([y[~val], y[~val]])
    model.fit(x_train, y_train)
    return model.predict(x[val])

  def logistic():
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))

  def trees():
    return HistGradientBoostingClassifier(random_state=0)

  result = {"study": "pose_ceiling", "version": synthetic.VERSION, "train_groups": groups - held,
            "val_groups": held, "train_videos": int((~val).sum()), "val_videos": int(val.sum())}
  predictions = {}
  for name, x, x_mirror in (("pose", pose, pose_mirror), ("scene", scene, scene),
                            ("pose_scene", both, both_mirror)):
    for kind, make in (("logistic", logistic), ("trees", trees)):
      predictions[f"{name}_{kind}"] = fit(make(), x, x_mirror)
      result[f"{name}_{kind}_acc"] = float(np.mean(predictions[f"{name}_{kind}"] == y[val]))
  names = params.class_names
  recall = {}
  for c, name in enumerate(names):
    sel = y[val] == c
    if sel.any():
      recall[name] = float(np.mean(predictions["pose_trees"][sel] == c))
  result["pose_trees_recall"] = recall
  print(f"pose ceiling of {synthetic.TFDS_NAME} {synthetic.VERSION}: {result['train_groups']} "
        f"training groups ({result['train_videos']} videos), {held} validation groups "
        f"({result['val_videos']} videos)")
  print("  | read from | logistic | trees |")
  for name in ("pose", "scene", "pose_scene"):
    logistic, trees = result[f"{name}_logistic_acc"], result[f"{name}_trees_acc"]
    print(f"  | {name} | {logistic:.3f} | {trees:.3f} |")
  print("  pose-alone trees, recall per class: "
        + ", ".join(f"{k} {v:.2f}" for k, v in recall.items()))
  line = json.dumps(result, sort_keys=True)
  print(line)
  if _OUT.value:
    with open(_OUT.value, "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
