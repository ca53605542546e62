"""TensorBoard events of a run (claus_jax.events), read back by TensorBoard's own event reader."""

import json
import os

from tensorboard.backend.event_processing import event_accumulator

from claus_jax import events


def tensorboard_scalars(folder):
  """{tag: [(step, value)]} of the event files in ``folder``, as TensorBoard reads them."""
  acc = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _fake_round(workdir, r, history, live=False):
  rd = os.path.join(workdir, f"round_{r:03d}")
  os.makedirs(rd, exist_ok=True)
  name = "train_history.json" if live else "train.json"
  with open(os.path.join(rd, name), "w") as f:
    json.dump(history if live else {"round": r, "history": history}, f)


def test_training_curves_are_rebuilt_whole_never_twice(tmp_path):
  w = str(tmp_path)
  _fake_round(w, 0, [{"step": 10, "total": 2.5, "cls": 0.5}, {"step": 20, "total": 1.25,
                                                                 "cls": float("nan")}])
  _fake_round(w, 1, [{"step": 10, "total": 3.0}], live=True)  # Round 1 is training.
  rows = [{"round": 0, "cost": 12.0, "frames_pct": 1.0, "accuracy": 0.5,
           "capsule/f-mAP@0.5": 0.25, "per_class": "not a scalar"}]
  for _ in range(2):  # A report rebuilt after a resume shows each point once.
    events.write_all(w, rows)
  board = tmp_path / events.DIR
  assert sorted(os.listdir(board)) == ["round_000", "round_001", "rounds"]
  assert tensorboard_scalars(str(board / "round_000")) == {"train/total": [(10, 2.5), (20, 1.25)],
                                                "train/cls": [(10, 0.5)]}  # NaN left out.
  assert tensorboard_scalars(str(board / "round_001")) == {"train/total": [(10, 3.0)]}
  assert tensorboard_scalars(str(board / "rounds")) == {
      "pool/cost": [(0, 12.0)], "pool/frames_pct": [(0, 1.0)], "test/accuracy": [(0, 0.5)],
      "test/capsule/f-mAP_iou0.5": [(0, 0.25)]}
  # Round 1 finishes with more steps; a round set aside by --recompute_from leaves the board.
  _fake_round(w, 1, [{"step": 10, "total": 3.0}, {"step": 20, "total": 2.0}])
  os.rename(tmp_path / "round_000", tmp_path / "superseded")
  events.write_all(w, rows)
  assert sorted(os.listdir(board)) == ["round_001", "rounds"]
  assert tensorboard_scalars(str(board / "round_001")) == {"train/total": [(10, 3.0), (20, 2.0)]}
  assert not os.listdir(tmp_path / ".tensorboard-staging")

