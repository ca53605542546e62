"""Does a round's metric follow how much foreground its model predicts? One row per scored round.

For every finished round of the given run folders (a main job's ``--workdir``, or a
``compare_strategies`` folder holding several), reads the MC-dropout scores the round wrote
(``round_K/scores/*.npz``, ``<video>/mean_prob``: the mean foreground probability of each frame of
each pool video) and the round's metric in ``metrics.jsonl``. It prints per round the mean predicted
foreground over the pool's frames beside the metric, then the Spearman rank correlation over all
rounds. The last round of a run is never scored, so it has no row.

  python launch/studies/foreground_mass.py runs/compare/claus_seed0 runs/compare/claus_seed1
  python launch/studies/foreground_mass.py --metric=accuracy runs/compare/*_seed*

``--from_round=1`` leaves out round 0, e.g. where runs that differ only from round 1 on share it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from claus_jax import score_files  # noqa: E402


def foreground_mass(round_dir: str) -> float | None:
  """Mean over the pool's frames of the predicted foreground, or None when the round has no scores."""
  values = [fields["mean_prob"]
            for shard in sorted(glob.glob(os.path.join(round_dir, "scores", "*.npz")))
            for fields in score_files.load_shard(shard).values()]
  return float(np.mean(np.concatenate(values))) if values else None


def rows(workdir: str, metric: str, from_round: int = 0) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise SystemExit(f"{path} is missing: {workdir} is not a finished main-job folder.")
  out = []
  with open(path) as f:
    for line in f:
      r = json.loads(line)
      if r["round"] < from_round:
        continue
      mass = foreground_mass(os.path.join(workdir, f"round_{r['round']:03d}"))
      if mass is not None and r.get(metric) is not None:
        out.append({"run": workdir, "round": r["round"], "foreground": mass, metric: r[metric]})
  return out


def main(argv=None) -> int:
  from scipy import stats

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--metric", default="capsule/f-mAP@0.5")
  parser.add_argument("--from_round", type=int, default=0, help="Leave out the rounds before it.")
  args = parser.parse_args(argv)
  table = [r for w in args.workdirs for r in rows(w, args.metric, args.from_round)]
  print(f"| run | round | mean predicted foreground | {args.metric} (%) |\n|---|---:|---:|---:|")
  for r in sorted(table, key=lambda r: r["foreground"]):
    print(f"| {r['run']} | {r['round']} | {r['foreground']:.4f} | {100 * r[args.metric]:.1f} |")
  if len(table) > 2:
    rho, p = stats.spearmanr([r["foreground"] for r in table], [r[args.metric] for r in table])
    print(f"\nSpearman rank correlation over {len(table)} rounds: {rho:+.2f} (p = {p:.2g})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
