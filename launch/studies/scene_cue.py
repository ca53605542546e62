"""How strong is the synthetic benchmark's scene cue, and what limits it?

Issue 27 wants the scene to be "a strong but imperfect cue" of the class, as in UCF-101-24. This
study reads the cue without any network. It takes the train split's groups, holds the last
``--val_groups`` out for validation (the test split is never read), and renders the middle frame of
every video twice: as the benchmark has it, and without the actor (the scene alone). It reports:
  * coverage: the validation groups filmed in a typical scene (class, index) that no training
    group shows, so that no reader can have learnt that scene;
  * the ceiling of a perfect scene reader: the share of validation videos filmed in one of their own
    class's scenes (the others borrow another class's scene);
  * logistic-regression probes, fitted on the training videos and scored on the validation videos,
    of mean-colour grids (4x4 and 8x8 cells) of the scene alone and of the whole frame, for the
    class and for the scene's class.

  python launch/studies/scene_cue.py --config=configs/synthetic.py --val_groups=10
  python launch/studies/scene_cue.py --config=configs/synthetic.py --val_groups=20 \
      --config.data.synthetic.train_groups=100
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


def probe(x_train, y_train, x_val, y_val) -> float:
  """Validation accuracy of a standardised logistic regression (C = 1)."""
  import numpy as np
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  if len(set(y_train.tolist())) < 2:
    return float("nan")
  model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
  model.fit(x_train, y_train)
  return float(np.mean(model.predict(x_val) == y_val))


def main(argv):
  del argv
  import numpy as np

  from claus_jax.data import synthetic
  from launch.studies.train_groups import colour_grid
  from launch.studies.train_groups import generator_and_groups

  held = _VAL_GROUPS.value
  params, groups = generator_and_groups(_CONFIG.value, held)
  rows = []  # (is_val, label, scene_class, scene, frame grid 4, 8, scene grid 4, 8)
  group_scene = {}
  for g in range(groups):
    rec = synthetic.recording(params, "train", g)
    group_scene[g] = (rec.scene_class, rec.scene_index)
    for v in range(rec.num_videos):
      videos = [synthetic._render_video(params, "train", g, v, rec, draw_actor=draw)
                for draw in (True, False)]
      t = videos[0].num_frames // 2
      frame, scene = videos[0].frames[t], videos[1].frames[t]
      rows.append((g >= groups - held, rec.label, rec.scene_class,
                   (rec.scene_class, rec.scene_index), colour_grid(frame, 4), colour_grid(frame, 8),
                   colour_grid(scene, 4), colour_grid(scene, 8)))
  val = np.array([r[0] for r in rows])
  labels = np.array([r[1] for r in rows])
  scene_classes = np.array([r[2] for r in rows])
  seen_scenes = {r[3] for r in rows if not r[0]}
  val_groups_unseen = sum(group_scene[g] not in seen_scenes for g in range(groups - held, groups))
  val_videos_unseen = int(sum(1 for r in rows if r[0] and r[3] not in seen_scenes))
  result = {
      "study": "scene_cue", "version": synthetic.VERSION, "train_groups": groups - held,
      "val_groups": held, "train_videos": int((~val).sum()), "val_videos": int(val.sum()),
      "scenes": params.num_classes * params.scenes_per_class, "scene_borrow": params.scene_borrow,
      "scenes_seen_in_training": len(seen_scenes), "val_groups_in_unseen_scenes": val_groups_unseen,
      "val_videos_in_unseen_scenes": val_videos_unseen,
      "perfect_scene_reader_accuracy": float(np.mean(scene_classes[val] == labels[val])),
  }
  for name, col in (("frame_4x4", 4), ("frame_8x8", 5), ("scene_4x4", 6), ("scene_8x8", 7)):
    x = np.stack([r[col] for r in rows])
    result[f"{name}_class_acc"] = probe(x[~val], labels[~val], x[val], labels[val])
    result[f"{name}_scene_class_acc"] = probe(x[~val], scene_classes[~val], x[val],
                                              scene_classes[val])
  print(f"scene cue of {synthetic.TFDS_NAME} {synthetic.VERSION}: {result['train_groups']} training "
        f"groups ({result['train_videos']} videos), {held} validation groups "
        f"({result['val_videos']} videos); {result['scenes']} typical scenes, "
        f"{result['scenes_seen_in_training']} of them in training")
  print(f"  validation groups in a scene no training group shows: {val_groups_unseen} "
        f"({val_videos_unseen} videos)")
  print(f"  perfect scene reader (the class whose scene it is): "
        f"{result['perfect_scene_reader_accuracy']:.3f}")
  print("  | probe on | class | scene's class |")
  for name in ("frame_4x4", "frame_8x8", "scene_4x4", "scene_8x8"):
    print(f"  | {name} | {result[f'{name}_class_acc']:.3f} | "
          f"{result[f'{name}_scene_class_acc']:.3f} |")
  line = json.dumps(result, sort_keys=True)
  print(line)
  if _OUT.value:
    with open(_OUT.value, "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
