"""The annotation commands (``python -m claus_jax.annotate export | import``), without flags, so
they can be called in process."""

from __future__ import annotations

import os

from claus_jax.annotation.geometry import AnnotationError


def pending_round(workdir: str) -> int:
  """The latest round with requests.json and no answers.json."""
  rounds = sorted(int(n[6:]) for n in os.listdir(workdir) if n.startswith("round_")
                  and n[6:].isdigit())
  for r in reversed(rounds):
    rd = os.path.join(workdir, f"round_{r:03d}")
    if (os.path.exists(os.path.join(rd, "requests.json"))
        and not os.path.exists(os.path.join(rd, "answers.json"))):
      return r
  raise AnnotationError(f"{workdir}: no round awaits answers (no round_K/requests.json without "
                        "answers.json); run the main command with --config.oracle.kind=files "
                        "first, or pass --round.")


def _requested_records(config, requests: dict) -> dict:
  from claus_jax import data as data_lib

  dataset = data_lib.get_dataset(config)
  index = dataset.train_index
  records = {}
  for v in requests["videos"]:
    records[v["video_id"]] = dataset.train[index.position(v["video_id"])]
  return records


def run(command: str, config, workdir: str, round_index: int = -1, tool: str = "label_studio",
        files=(), video_ids=(), out: str | None = None, document_root: str | None = None) -> dict:
  """``export`` or ``import`` (the flags of :mod:`claus_jax.annotate`); returns a summary.

  Raises:
    AnnotationError naming what is wrong (the command line prints it in one message, exit 2).
  """
  from claus_jax import experiment
  from claus_jax import pool as pool_lib
  from claus_jax import rounds
  from claus_jax.annotation import answers as answers_lib
  from claus_jax.annotation import cvat
  from claus_jax.annotation import geometry
  from claus_jax.annotation import label_studio

  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise AnnotationError(f"--workdir={workdir}: no run there (no config.json); pass the workdir "
                          "of the run that awaits answers.")
  experiment.check_or_write_config(config, workdir, write=False)
  r = pending_round(workdir) if round_index < 0 else round_index
  rd = rounds.round_dir(workdir, r)
  requests = pool_lib.read_json(os.path.join(rd, "requests.json"), require=("videos", "round"))
  class_names = requests["class_names"]
  size = int(config.data.frame_size)
  if command == "export":
    if tool != "label_studio":
      raise AnnotationError(f"--tool={tool}: export writes Label Studio projects; CVAT is import "
                            "only (make one CVAT task per video of requests.json from its "
                            "original frames, named after the video).")
    out = out or os.path.join(rd, "label_studio")
    sources = geometry.source_videos(config, _requested_records(config, requests),
                                     os.path.join(out, "frames"))
    root = document_root or (out if config.dataset == "synthetic" else config.data.root)
    made = label_studio.export(rd, out, requests, sources, class_names, root)
    return {"round": r, "out": out, "document_root": os.path.abspath(root), **made}
  if not files:
    raise AnnotationError("import: pass the tool's export with --file.")
  sources = geometry.source_videos(config, _requested_records(config, requests),
                                   os.path.join(rd, "label_studio", "frames"), write_frames=False)
  if tool == "label_studio":
    if len(files) != 1:
      raise AnnotationError("import --tool=label_studio: pass the one JSON export of the project "
                            "with --file.")
    videos = label_studio.to_answers(label_studio.read_export(files[0]), requests, sources,
                                     class_names)
  else:
    texts = []
    for path in files:
      try:
        with open(path, encoding="utf-8") as f:
          texts.append((path, f.read()))
      except OSError as e:
        raise AnnotationError(f"{path}: cannot read the CVAT export ({e}).") from None
    videos = cvat.to_answers(texts, requests, sources, class_names, video_ids)
  answers = answers_lib.write_answers(rd, videos, size, class_names)
  return {"round": r, "answers": os.path.join(rd, "answers.json"), "videos": len(answers),
          "frames": sum(len(a["frames"]) for a in answers.values())}
