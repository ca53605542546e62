"""Annotation tools: the original <-> prepared mapping, Label Studio export and import, CVAT import.

The videos are the UCF-101-24 fixture's geometry: 64 x 48 (W x H) original frames prepared at
32 x 32, rectangles on a grid that maps to whole prepared pixels (fixtures_datasets).
"""

import json
import os

import numpy as np
import pytest

import fixtures_datasets as fx
from claus_jax import oracle as oracle_lib
from claus_jax.annotation import answers as answers_lib
from claus_jax.annotation import cvat
from claus_jax.annotation import geometry
from claus_jax.annotation import label_studio
from claus_jax.data import official

SIZE = 32
CLASSES = ("Basketball", "Biking")


def test_boxes_map_between_original_and_prepared_frames_both_ways():
  # By hand: 64 x 48 -> 32 x 32 is sx = 1/2, sy = 2/3; pixel areas: x1' = x1 sx, x2' = (x2+1) sx - 1.
  original = (20, 30, 59, 44)
  stored = official.scale_boxes(np.array(original, np.float32), fx.HEIGHT, fx.WIDTH, SIZE)
  np.testing.assert_allclose(stored, (10, 20, 29, 29), atol=1e-5)
  np.testing.assert_allclose(geometry.to_original_box(stored, SIZE, fx.HEIGHT, fx.WIDTH), original,
                             atol=1e-5)
  # Label Studio's percentages of the original image, by hand: 20/64, 30/48, 40/64, 15/48.
  value = label_studio.percent(original, fx.HEIGHT, fx.WIDTH)
  assert value == pytest.approx({"x": 31.25, "y": 62.5, "width": 62.5, "height": 31.25,
                                 "rotation": 0})
  np.testing.assert_allclose(label_studio.from_percent(value, fx.HEIGHT, fx.WIDTH), original,
                             atol=1e-4)


def _sources(tmp_path, videos):
  out = {}
  for v in videos:
    files = []
    for t in range(v.num_frames):
      path = tmp_path / v.video_id / f"{t + 1:05d}.jpg"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(b"")
      files.append(str(path))
    out[v.video_id] = geometry.SourceVideo(v.video_id, fx.HEIGHT, fx.WIDTH, SIZE, tuple(files))
  return out


def _videos():
  by_id = {v.video_id: v for v in fx.ucf_videos()}
  return [by_id["Basketball/v_Basketball_g01_c01"], by_id["Biking/v_Biking_g01_c01"]]


def _requests(rd, videos, frames):
  os.makedirs(rd, exist_ok=True)
  requests = {"round": 1, "class_names": list(CLASSES), "videos": [
      {"video_id": v.video_id, "frames": frames[v.video_id], "needs_label": i == 0,
       "num_frames": v.num_frames, "score": 0.5, "cluster": 0} for i, v in enumerate(videos)]}
  with open(os.path.join(rd, "requests.json"), "w") as f:
    json.dump(requests, f)
  return requests


FRAMES = {"Basketball/v_Basketball_g01_c01": [0, 4, 8],  # 0: before the tube (no actor).
          "Biking/v_Biking_g01_c01": [6, 12]}  # 6: two actors; 12: the second one only.


def _annotator(task, video):
  """What an annotator submits in Label Studio: the fixture's original rectangles, in percent."""
  result = []
  for i, f in enumerate(task["data"]["frame_indices"]):
    rects = [r for r in video.rects[f] if r is not None]
    for k, rect in enumerate(rects):
      x1, y1, x2, y2 = rect
      result.append({"id": f"r{i}{k}", "from_name": "actor", "to_name": "frames",
                     "type": "rectanglelabels", "item_index": i, "original_width": fx.WIDTH,
                     "original_height": fx.HEIGHT, "image_rotation": 0,
                     "value": {"x": 100 * x1 / fx.WIDTH, "y": 100 * y1 / fx.HEIGHT,
                               "width": 100 * (x2 - x1 + 1) / fx.WIDTH,
                               "height": 100 * (y2 - y1 + 1) / fx.HEIGHT, "rotation": 0,
                               "rectanglelabels": ["actor"]}})
  empty = [opt["value"] for opt, f in zip(task["data"]["no_actor_options"],
                                          task["data"]["frame_indices"])
           if not any(r is not None for r in video.rects[f])]
  if empty:
    result.append({"id": "e", "from_name": "no_actor", "to_name": "frames", "type": "choices",
                   "value": {"choices": empty}})
  if task["data"]["needs_label"]:
    result.append({"id": "a", "from_name": "action", "to_name": "frames", "type": "choices",
                   "value": {"choices": [video.class_name]}})
  return result


def _expected_mask(video, f):
  """The simulated oracle's mask: the fixture's rectangles resized as the reader resizes them."""
  boxes = [fx.expected_resized_rect(r, SIZE) for r in video.rects[f] if r is not None]
  if not boxes:
    return np.zeros((SIZE, SIZE), np.uint8)
  return official.fill_boxes(np.array(boxes, np.float32)[:, None], SIZE)[0]


def test_label_studio_round_trip_gives_the_ground_truth(tmp_path):
  videos = _videos()
  rd = str(tmp_path / "round_001")
  requests = _requests(rd, videos, FRAMES)
  sources = _sources(tmp_path / "root", videos)
  # The model's boxes as pre-annotations: prepared coordinates, shown in the original's percent.
  oracle_lib.write_predictions(rd, {videos[0].video_id: {
      "label": "Biking", "score": 0.6, "frames": {"4": {"box": [10, 20, 29, 29]}, "0": {}}}}, 0)
  made = label_studio.export(rd, str(tmp_path / "ls"), requests, sources, CLASSES,
                             str(tmp_path / "root"))
  assert made == {"tasks": 2, "predictions": True}
  tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
  assert tasks[0]["data"]["frames"][1] == (
      "/data/local-files/?d=Basketball/v_Basketball_g01_c01/00005.jpg")
  pred = tasks[0]["predictions"][0]
  assert pred["model_version"] == "round_000"
  assert [r["item_index"] for r in pred["result"] if r["type"] == "rectanglelabels"] == [1]
  value = dict(pred["result"][0]["value"])
  assert value.pop("rectanglelabels") == ["actor"]
  assert value == pytest.approx(label_studio.percent((20, 30, 59, 44), fx.HEIGHT, fx.WIDTH))
  assert "<Choice value=\"Biking\"/>" in (tmp_path / "ls" / "label_config.xml").read_text()
  export = [{"id": k + 1, "data": t["data"], "annotations": [
      {"id": k + 1, "was_cancelled": False, "result": _annotator(t, v)}]}
      for k, (t, v) in enumerate(zip(tasks, videos))]
  got = answers_lib.write_answers(rd, label_studio.to_answers(export, requests, sources, CLASSES),
                                  SIZE, CLASSES)
  assert got[videos[0].video_id]["label"] == 0 and got[videos[1].video_id]["label"] is None
  for v in videos:
    for f in FRAMES[v.video_id]:
      np.testing.assert_array_equal(got[v.video_id]["frames"][f][0], _expected_mask(v, f),
                                    err_msg=f"{v.video_id} frame {f}")
  saved = json.loads((tmp_path / "round_001" / "answers.json").read_text())["videos"]
  assert saved[videos[0].video_id]["frames"]["0"] == {"empty": True}
  assert saved[videos[1].video_id]["frames"]["6"]["mask"].startswith("masks/")  # Two actors.


def test_label_studio_import_names_every_problem_and_writes_nothing(tmp_path):
  videos = _videos()
  rd = str(tmp_path / "round_001")
  requests = _requests(rd, videos, FRAMES)
  sources = _sources(tmp_path / "root", videos)
  tasks = label_studio.tasks(requests, sources, str(tmp_path / "root"))
  result = _annotator(tasks[0], videos[0])
  result = [r for r in result if r["from_name"] != "action"]  # No action chosen.
  result[0]["original_width"] = 320  # Drawn on another image size.
  del result[1]  # Frame 8 left without a box.
  result.append({"from_name": "no_actor", "type": "choices", "value": {"choices": ["frame 4 (file 00005)"]}})
  export = [{"id": 7, "data": tasks[0]["data"],
             "annotations": [{"was_cancelled": False, "result": result}]},
            {"id": 8, "data": {"video_id": "Biking/unknown"}, "annotations": []}]
  with pytest.raises(geometry.AnnotationError) as e:
    label_studio.to_answers(export, requests, sources, CLASSES)
  message = str(e.value)
  for expected in ["task 7 (video Basketball/v_Basketball_g01_c01): result[0] (frame 4 (file 00005)): drawn "
                   "on a 320x48 image, the original frames are 64x48",
                   "frame 8 (file 00009) has no box and is not ticked 'no actor'",
                   "no action chosen (this video needs its label)",
                   "task 8: video_id 'Biking/unknown' is not requested in round 1",
                   "video Biking/v_Biking_g01_c01: no task in the export"]:
    assert expected in message, message
  assert not os.path.exists(os.path.join(rd, "answers.json"))


CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><id>3</id><name>{name}</name><size>8</size><mode>interpolation</mode>
    <start_frame>0</start_frame><stop_frame>14</stop_frame><frame_filter>step=2</frame_filter>
    <original_size><width>64</width><height>48</height></original_size></task></meta>
  {tracks}
</annotations>
"""


def test_cvat_video_export_becomes_answers(tmp_path):
  videos = _videos()
  rd = str(tmp_path / "round_001")
  requests = _requests(rd, videos, {videos[0].video_id: [0, 4, 8, 11],
                                    videos[1].video_id: [6]})
  sources = _sources(tmp_path / "root", videos)
  # CVAT frame i is video frame 2 i (step=2). Keyframes at video frames 2 and 8; frame 4 is
  # interpolated (CVAT does not list it); the actor leaves at 10 (outside), so 11 has none.
  track = """<track id="0" label="Basketball" source="manual">
    <box frame="1" outside="0" occluded="0" keyframe="1" xtl="4" ytl="3" xbr="20" ybr="27"/>
    <box frame="4" outside="0" occluded="0" keyframe="1" xtl="16" ytl="12" xbr="32" ybr="36"/>
    <box frame="5" outside="1" occluded="0" keyframe="1" xtl="16" ytl="12" xbr="32" ybr="36"/>
  </track>"""
  polygon = """<track id="1" label="Biking"><polygon frame="3" outside="0" keyframe="1"
      points="40,24;56,24;56,36;40,36"/></track>
    <track id="2" label="Biking"><box frame="3" outside="0" keyframe="1" xtl="0" ytl="0" xbr="2"
      ybr="3"/></track>"""
  files = [("a.xml", CVAT_XML.format(name=videos[0].video_id, tracks=track)),
           ("b.xml", CVAT_XML.format(name="whatever", tracks=polygon))]
  got = answers_lib.write_answers(rd, cvat.to_answers(files, requests, sources, CLASSES,
                                                      video_ids=[videos[0].video_id,
                                                                 videos[1].video_id]),
                                  SIZE, CLASSES)
  first = got[videos[0].video_id]
  assert first["label"] == 0
  assert not first["frames"][0][0].any() and not first["frames"][11][0].any()
  # Frame 4 is a third of the way from the frame-2 box to the frame-8 box: (8, 6, 24, 30)
  # continuous, pixels 8..23 x 6..29, prepared: columns 4..11, rows 4..19.
  np.testing.assert_array_equal(first["frames"][4][1], (4, 4, 11, 19))
  np.testing.assert_array_equal(first["frames"][8][1], (8, 8, 15, 23))  # Pixels 16..31 x 12..35.
  # The polygon covers pixels 40..55 x 24..35 (centres inside) and the box 0..1 x 0..2: their
  # union at the prepared size, as the reader resizes masks (nearest neighbour).
  full = np.zeros((fx.HEIGHT, fx.WIDTH), np.uint8)
  full[24:36, 40:56] = 1
  full[0:3, 0:2] = 1
  expected = official.resize_masks(full[None], SIZE)[0]
  np.testing.assert_array_equal(got[videos[1].video_id]["frames"][6][0], expected)


def test_cvat_import_names_every_problem(tmp_path):
  videos = _videos()
  rd = str(tmp_path / "round_001")
  requests = _requests(rd, videos, FRAMES)
  sources = _sources(tmp_path / "root", videos)
  bad_size = CVAT_XML.format(name=videos[1].video_id, tracks="").replace("<width>64", "<width>65")
  files = [("a.xml", CVAT_XML.format(name=videos[0].video_id, tracks=(
      '<track id="0" label="Basketball"><mask frame="0" rle="1,2" left="0" top="0" width="1" '
      'height="1"/></track>'))),
           ("b.xml", bad_size), ("c.xml", "<annotations><image id='0'/></annotations>")]
  with pytest.raises(geometry.AnnotationError) as e:
    cvat.to_answers(files, requests, sources, CLASSES)
  message = str(e.value)
  for expected in ["a.xml:\n  track 0: <mask> shapes are not read; export polygons instead",
                   "b.xml (video Biking/v_Biking_g01_c01): original_size 65x48, but the video's "
                   "frames are 64x48",
                   "c.xml: holds <image> elements ('CVAT for images')",
                   "video Basketball/v_Basketball_g01_c01: no CVAT file answers it"]:
    assert expected in message, message


def test_polygon_fills_the_pixels_whose_centres_are_inside():
  got = geometry.polygon_mask([(10, 10), (30, 10), (10, 30)], fx.HEIGHT, fx.WIDTH)
  ys, xs = np.mgrid[0:fx.HEIGHT, 0:fx.WIDTH] + 0.5  # By hand: the half-plane x + y <= 40.
  np.testing.assert_array_equal(got, (xs >= 10) & (ys >= 10) & (xs + ys <= 40))


def _ucf_workdir(tmp_path):
  """A UCF-101-24 fixture, the tiny config, and a workdir whose round 1 awaits these requests."""
  from claus_jax import experiment
  from tests.config_files import load_config

  root = str(tmp_path / "ucf24")
  fx.write_ucf(root)
  config = load_config("ucf101_24", "tiny")
  config.data.root, config.data.tfds_dir, config.quiet = root, str(tmp_path / "tfds"), True
  config.oracle.kind = "files"
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  experiment.check_or_write_config(config, workdir)
  videos = [v for v in _videos()]
  requests = _requests(os.path.join(workdir, "round_001"), videos, FRAMES)
  requests["class_names"] = list(fx.UCF_CLASSES)
  with open(os.path.join(workdir, "round_001", "requests.json"), "w") as f:
    json.dump(requests, f)
  return config, workdir, root, videos


def test_annotate_commands_map_the_original_frames_of_a_real_layout(tmp_path):
  from claus_jax.annotation import commands as annotate
  from claus_jax import data as data_lib

  config, workdir, root, videos = _ucf_workdir(tmp_path)
  made = annotate.run("export", config, workdir)
  assert made["round"] == 1 and made["tasks"] == 2 and not made["predictions"]
  assert made["document_root"] == os.path.abspath(root)
  out = os.path.join(workdir, "round_001", "label_studio")
  tasks = json.loads(open(os.path.join(out, "tasks.json")).read())
  assert tasks[1]["data"]["frame_files"] == [
      os.path.join(os.path.abspath(root), "rgb-images", videos[1].video_id, name)
      for name in ("00007.jpg", "00013.jpg")]
  assert "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=" + os.path.abspath(root) in open(
      os.path.join(out, "README.txt")).read()
  export = [{"id": k, "data": t["data"], "annotations": [
      {"was_cancelled": False, "result": _annotator(t, v)}]}
      for k, (t, v) in enumerate(zip(tasks, videos))]
  path = str(tmp_path / "export.json")
  with open(path, "w") as f:
    json.dump(export, f)
  done = annotate.run("import", config, workdir, files=[path])
  assert done == {"round": 1, "answers": os.path.join(workdir, "round_001", "answers.json"),
                  "videos": 2, "frames": 5}
  # The simulated oracle's answer: the reader's own masks of those frames.
  dataset = data_lib.get_dataset(config)
  answers = oracle_lib.load_answers(os.path.join(workdir, "round_001"), (SIZE, SIZE),
                                    fx.UCF_CLASSES)
  for v in videos:
    record = dataset.train[dataset.train_index.position(v.video_id)]
    assert answers[v.video_id]["label"] in (None, record.label)
    for f in FRAMES[v.video_id]:
      np.testing.assert_array_equal(answers[v.video_id]["frames"][f][0], record.masks[f])
  with pytest.raises(geometry.AnnotationError, match="exists already"):
    annotate.run("import", config, workdir, round_index=1, files=[path])
