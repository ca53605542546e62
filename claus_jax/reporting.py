"""Reports of a run, rebuilt from the rounds' files: metrics.jsonl, summary.md, plots and TensorBoard
events (:mod:`claus_jax.events`); and the
Markdown of one evaluation (a round's eval.md, :func:`to_markdown`).

Everything here reads the workdir only, so reports can be rebuilt at any time (also after a crash)
and always describe exactly the finished rounds.
"""

from __future__ import annotations

import json
import os

import numpy as np

from claus_jax import events
from claus_jax import pool as pool_lib

HEADLINE = ("accuracy", "capsule/v-mAP@0.5", "capsule/f-mAP@0.5", "detection/v-mAP@0.5",
            "detection/f-mAP@0.5")


def emit_row(row: dict, path: str = "") -> None:
  """Prints ``row`` as one JSON line and, when ``path`` is set, appends it there (the diagnostics
  under launch/ keep their measurements this way)."""
  line = json.dumps(row)
  print(line, flush=True)
  if path:
    with open(path, "a") as f:
      f.write(line + "\n")


def _rounds(workdir: str) -> list[int]:
  """Evaluated rounds. A round whose pool.json is missing is left out until the run rebuilds it."""
  out = []
  for name in sorted(os.listdir(workdir)):
    rd = os.path.join(workdir, name)
    if (name.startswith("round_") and os.path.exists(os.path.join(rd, "eval.json"))
        and os.path.exists(os.path.join(rd, "pool.json"))):
      out.append(int(name.split("_")[1]))
  return out


def collect(workdir: str) -> list[dict]:
  """One row per evaluated round: pool size and cost, and every scalar metric."""
  rows = []
  for r in _rounds(workdir):
    rd = os.path.join(workdir, f"round_{r:03d}")
    pool = pool_lib.read_json(os.path.join(rd, "pool.json"), require=("summary",))["summary"]
    result = pool_lib.read_json(os.path.join(rd, "eval.json"))
    row = {"round": r, "videos_pct": pool["videos_pct"], "frames_pct": pool["frames_pct"],
           "labelled_videos": pool["labelled_videos"], "labelled_frames": pool["labelled_frames"],
           "cost": pool["cost"]}
    row.update({k: v for k, v in result.items() if not isinstance(v, (dict, list))})
    train_json = os.path.join(rd, "train.json")
    if os.path.exists(train_json):
      hist = pool_lib.read_json(train_json, require=("history",))["history"]
      if hist:
        row["final_loss"] = hist[-1].get("total")
    rows.append(row)
  return rows


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def _cell(x) -> str:
  return _pct(x) if x is None or isinstance(x, float) else str(x)


def to_markdown(res: dict) -> str:
  """Markdown of one evaluation (an ``evaluation.Evaluator.result`` dict): the summary, the metric
  table by threshold, the per-class table and the confusion matrix (percentages, one decimal)."""
  # Metric keys end in "@<threshold formatted with :g>", as the evaluator writes them.
  lines = [f"**Videos:** {res['num_videos']}  **Frames with ground truth:** "
           f"{res['num_frames_counted']}  **Accuracy:** {_cell(res['accuracy'])}%", ""]
  metric_keys = [k for k in res if k.startswith(("capsule/f-mAP@", "capsule/v-mAP@", "detection/"))]
  thresholds = sorted({float(k.split("@")[1]) for k in metric_keys})
  lines.append("| metric (%) | " + " | ".join(f"@{t:g}" for t in thresholds) + " |")
  lines.append("|---|" + "---|" * len(thresholds))
  for name in ("capsule/f-mAP", "capsule/v-mAP", "detection/f-mAP", "detection/v-mAP"):
    lines.append(f"| {name} | " + " | ".join(
        _cell(res.get(f"{name}@{t:g}")) for t in thresholds) + " |")
  lines.append("")
  lines.append("capsule = hit rate of frame/video mask IoU (VideoCapsuleNet/CLAUS tables); "
               "detection = ACT frame-AP / video-AP of mask-derived boxes.")
  if res["excluded_classes"]:
    lines.append("")
    lines.append("Excluded from the means (no test videos): " + ", ".join(res["excluded_classes"]))
  lines.append("")
  per_class = res["per_class"]
  cols = [k for k in per_class[0] if k != "class"] if per_class else []
  lines.append("| class | " + " | ".join(cols) + " |")
  lines.append("|---|" + "---|" * len(cols))
  for row in per_class:
    lines.append(f"| {row['class']} | " + " | ".join(
        str(row[k]) if k in ("videos", "gt_frames") else _cell(row[k]) for k in cols) + " |")
  lines.append("")
  names = res["class_names"]
  lines.append("Confusion matrix (rows: ground truth, columns: predicted)")
  lines.append("")
  lines.append("| gt \\ pred | " + " | ".join(str(i) for i in range(len(names))) + " |")
  lines.append("|---|" + "---|" * len(names))
  for i, row in enumerate(res["confusion_matrix"]):
    lines.append(f"| {i} {names[i]} | " + " | ".join(str(x) for x in row) + " |")
  return "\n".join(lines) + "\n"


def summary_markdown(rows: list[dict], title: str = "") -> str:
  """A Table-1-style table: round, V%, A%, cumulative cost, v-mAP and f-mAP @0.5, accuracy."""
  lines = [f"# {title}" if title else "# CLAUS active-learning run", "",
           "| round | V% | A% | cost | capsule v-mAP@0.5 | capsule f-mAP@0.5 | "
           "detection v-mAP@0.5 | detection f-mAP@0.5 | accuracy |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    lines.append(
        f"| {row['round']} | {row['videos_pct']:.1f} | {row['frames_pct']:.2f} | {row['cost']:g} | "
        f"{_pct(row.get('capsule/v-mAP@0.5'))} | {_pct(row.get('capsule/f-mAP@0.5'))} | "
        f"{_pct(row.get('detection/v-mAP@0.5'))} | {_pct(row.get('detection/f-mAP@0.5'))} | "
        f"{_pct(row.get('accuracy'))} |")
  lines += ["", "Metrics in %, on the test split. capsule = hit rate of mask IoU >= 0.5 (the "
            "protocol of the paper's tables); detection = ACT frame-AP / video-AP of mask-derived "
            "boxes. V%: labelled videos, A%: annotated frames of the train pool; cost = C_v x videos "
            "+ C_f x frames."]
  return "\n".join(lines) + "\n"


def write_reports(workdir: str, dataset=None, quiet: bool = False) -> dict:
  """Rewrites metrics.jsonl, summary.md and the plots; prints the table unless ``quiet``."""
  rows = collect(workdir)
  pool_lib.atomic_write_text(os.path.join(workdir, "metrics.jsonl"),
                             "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
  strategy = ""
  cfg_path = os.path.join(workdir, "config.json")
  if os.path.exists(cfg_path):
    cfg = pool_lib.read_json(cfg_path, require=("dataset", "selection", "seed"))
    strategy = f"{cfg['dataset']}, strategy {cfg['selection']['strategy']}, seed {cfg['seed']}"
  table = summary_markdown(rows, strategy)
  pool_lib.atomic_write_text(os.path.join(workdir, "summary.md"), table)
  events.write_all(workdir, rows)
  if rows:
    plot_cost_vs_map(rows, os.path.join(workdir, "cost_vs_map.png"))
    if dataset is not None:
      plot_selection_pca(workdir, dataset, os.path.join(workdir, "selection_pca.png"))
      plot_per_class(workdir, dataset, os.path.join(workdir, "per_class.png"))
  if not quiet:
    print(table, flush=True)
    print(f"reports: {os.path.join(workdir, 'summary.md')}, metrics.jsonl, cost_vs_map.png, "
          "selection_pca.png, per_class.png; curves: tensorboard --logdir "
          f"{os.path.join(workdir, events.DIR)}", flush=True)
  return {"rounds": rows}


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_cost_vs_map(rows: list[dict], path: str) -> None:
  """Performance against cumulative annotation cost (like the paper's Fig. 8)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  cost = [r["cost"] for r in rows]
  for key, style in (("capsule/v-mAP@0.5", "o-"), ("capsule/f-mAP@0.5", "s-"),
                     ("detection/v-mAP@0.5", "o--"), ("detection/f-mAP@0.5", "s--")):
    vals = [np.nan if r.get(key) is None else 100 * r[key] for r in rows]
    ax.plot(cost, vals, style, label=key)
  ax.set_xlabel("cumulative annotation cost (C_v x videos + C_f x frames)")
  ax.set_ylabel("%")
  ax.set_title("performance vs annotation cost")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _last_selection_round(workdir: str) -> int | None:
  rounds = [int(n.split("_")[1]) for n in os.listdir(workdir)
            if n.startswith("round_") and all(os.path.exists(os.path.join(workdir, n, f)) for f in
                                              ("selection.json", "latents.npy", "pool.json"))]
  return max(rounds) if rounds else None


def plot_selection_pca(workdir: str, dataset, path: str) -> None:
  """PCA of the pool's latents with clusters, labelled and newly selected videos (like Fig. 4)."""
  from sklearn.decomposition import PCA

  r = _last_selection_round(workdir)
  if r is None:
    return
  rd = os.path.join(workdir, f"round_{r:03d}")
  latents_path = os.path.join(rd, "latents.npy")
  try:
    latents = np.load(latents_path)
  except (OSError, ValueError, EOFError) as e:
    raise pool_lib.state_file_error(latents_path, f"{type(e).__name__}: {e}") from None
  sel = pool_lib.read_json(os.path.join(rd, "selection.json"), require=("clusters", "picks"))
  labelled = set(pool_lib.read_json(os.path.join(rd, "pool.json"), require=("videos",))["videos"])
  ids = list(dataset.train_index.video_ids)
  clusters = np.array([sel["clusters"].get(v, -1) for v in ids])
  chosen = {p["video_id"] for p in sel["picks"] if p["new_video"]}
  xy = PCA(n_components=2, random_state=0).fit_transform(latents) if len(ids) > 2 else \
      np.zeros((len(ids), 2))
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 5))
  sc = ax.scatter(xy[:, 0], xy[:, 1], c=clusters, cmap="tab10", s=14, alpha=0.6)
  lab = np.array([v in labelled for v in ids])
  new = np.array([v in chosen for v in ids])
  ax.scatter(xy[lab, 0], xy[lab, 1], facecolors="none", edgecolors="k", s=60, label="labelled")
  ax.scatter(xy[new, 0], xy[new, 1], marker="*", c="red", s=90, label=f"selected in round {r}")
  ax.legend(*sc.legend_elements(), title="cluster", loc="upper right", fontsize=7)
  ax.add_artist(ax.legend(loc="lower left", fontsize=8))
  ax.set_title(f"latent space of the pool (PCA), round {r}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_per_class(workdir: str, dataset, path: str) -> None:
  """Per-class AP of the last evaluated round with the labelled videos per class (like Fig. 9)."""
  rounds = _rounds(workdir)
  if not rounds:
    return
  rd = os.path.join(workdir, f"round_{rounds[-1]:03d}")
  result = pool_lib.read_json(os.path.join(rd, "eval.json"), require=("per_class",))
  labelled = pool_lib.read_json(os.path.join(rd, "pool.json"), require=("videos",))["videos"]
  index = dataset.train_index
  pos = {v: i for i, v in enumerate(index.video_ids)}
  counts = np.bincount([int(index.labels[pos[v]]) for v in labelled if v in pos],
                       minlength=dataset.num_classes)
  names = [row["class"] for row in result["per_class"]]
  ap = [np.nan if row.get("detection/video_AP@0.5") is None else 100 * row["detection/video_AP@0.5"]
        for row in result["per_class"]]
  hit = [np.nan if row.get("capsule/video_hit@0.5") is None else 100 * row["capsule/video_hit@0.5"]
         for row in result["per_class"]]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 4))
  x = np.arange(len(names))
  ax.bar(x - 0.2, ap, 0.4, label="detection video-AP@0.5")
  ax.bar(x + 0.2, hit, 0.4, label="capsule video hit@0.5")
  ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
  ax.set_ylabel("%")
  ax2 = ax.twinx()
  ax2.plot(x, counts, "k.--", label="labelled videos")
  ax2.set_ylabel("labelled videos")
  ax.set_title(f"per-class performance, round {rounds[-1]}")
  ax.legend(loc="upper left", fontsize=7)
  ax2.legend(loc="upper right", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
