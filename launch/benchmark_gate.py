"""The learnability gate of a synthetic benchmark version, on validation groups carved from train.

Before any strategy is compared on a benchmark version, its default training must learn it, and
leave the rounds room to differ. Per seed, on ``--validation_groups`` held-out train groups (the
test split is never read), it runs the main job twice:

  * ``full``: every train video and frame labelled, one round of the default training;
  * ``round0``: round 0's budget alone (the config's V% and A%, a seeded random set), no selection.

and checks, on the means over the seeds:

  * full: accuracy >= 0.85, capsule f-mAP@0.5 >= 0.60, capsule v-mAP@0.5 >= 0.50, detection
    f-mAP@0.5 >= 0.40;
  * headroom: round0 reaches at most 75% of full's capsule f-mAP@0.5 and v-mAP@0.5.

It writes ``gate.md`` and ``gate.json`` in ``--workdir`` (per seed, means, std, pass or fail).

  python launch/benchmark_gate.py --config=configs/synthetic.py --seeds=0,1,2 --workdir=runs/gate

Extra ``--config.x=y`` overrides go after ``--``; re-running resumes unfinished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare_strategies as cs  # noqa: E402

# (metric, threshold) on full supervision; and the metrics whose round-0 share is capped.
FULL_TARGETS = (("accuracy", 0.85), ("capsule/f-mAP@0.5", 0.60), ("capsule/v-mAP@0.5", 0.50),
                ("detection/f-mAP@0.5", 0.40))
HEADROOM = (("capsule/f-mAP@0.5", 0.75), ("capsule/v-mAP@0.5", 0.75))
REPORTED = ("accuracy", "capsule/f-mAP@0.5", "capsule/v-mAP@0.5", "capsule/v-mAP@0.2",
            "detection/f-mAP@0.5", "detection/v-mAP@0.5")
ROUND0 = "round0"


def run_commands(config: str, seed: int, workdir: str, validation_groups: int, extra: list[str]):
  """{name: (strategy, workdir, extra)} of the two runs of one seed."""
  common = [f"--config.data.validation_groups={validation_groups}", *extra]
  return {
      cs.FULL: (cs.FULL, os.path.join(workdir, f"full_seed{seed}"), common),
      ROUND0: ("random", os.path.join(workdir, f"round0_seed{seed}"),
               ["--config.budget.schedule=()", *common]),
  }


def evaluate(rows: dict[str, dict[int, dict]]) -> dict:
  """The gate from ``{run: {seed: last metrics row}}``: means, stds and each check's verdict."""
  def stats(name, metric):
    values = np.array([r[metric] for r in rows[name].values()], float)
    return float(values.mean()), float(values.std()), values.tolist()
  out = {"full": {}, "round0": {}, "checks": []}
  for name, key in ((cs.FULL, "full"), (ROUND0, "round0")):
    for metric in REPORTED:
      out[key][metric] = dict(zip(("mean", "std", "per_seed"), stats(name, metric)))
  for metric, threshold in FULL_TARGETS:
    mean = out["full"][metric]["mean"]
    out["checks"].append({"check": f"full {metric} >= {threshold:.2f}", "value": mean,
                          "pass": bool(mean >= threshold)})
  for metric, cap in HEADROOM:
    full, first = out["full"][metric]["mean"], out["round0"][metric]["mean"]
    share = first / full if full > 0 else float("inf")
    out["checks"].append({"check": f"round0 {metric} <= {cap:.0%} of full", "value": share,
                          "pass": bool(share <= cap)})
  out["passed"] = all(c["pass"] for c in out["checks"])
  return out


def markdown(gate: dict, seeds: list[int], header: str) -> str:
  lines = [header, "", "| run | " + " | ".join(REPORTED) + " |",
           "|---|" + "---:|" * len(REPORTED)]
  for key in ("full", "round0"):
    cells = []
    for metric in REPORTED:
      m = gate[key][metric]
      per = " / ".join(f"{100 * v:.1f}" for v in m["per_seed"])
      cells.append(f"{100 * m['mean']:.1f} +- {100 * m['std']:.1f} ({per})")
    lines.append(f"| {key} | " + " | ".join(cells) + " |")
  lines += ["", f"Seeds {', '.join(map(str, seeds))}; % on the validation groups (per seed in "
            "brackets).", "", "| check | value | verdict |", "|---|---:|---|"]
  for c in gate["checks"]:
    value = f"{100 * c['value']:.1f}%" if np.isfinite(c["value"]) else "inf"
    lines.append(f"| {c['check']} | {value} | {'pass' if c['pass'] else 'FAIL'} |")
  lines += ["", f"**Gate: {'passed' if gate['passed'] else 'not passed'}.**", ""]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--workdir", default="runs/gate")
  parser.add_argument("--validation_groups", type=int, default=10)
  parser.add_argument("--parallel", type=int, default=1)
  args, extra = parser.parse_known_args(argv)
  extra = [e for e in extra if e != "--"]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  jobs = {(name, k): spec for k in seeds
          for name, spec in run_commands(args.config, k, args.workdir, args.validation_groups,
                                         extra).items()}
  failed = cs.run_jobs({key: (args.config, strategy, key[1], workdir, run_extra)
                        for key, (strategy, workdir, run_extra) in jobs.items()},
                       args.parallel, lambda key: f"{key[0]} seed {key[1]}",
                       lambda key: jobs[key][1])
  if failed:
    print(f"failed runs (see their stdout.log): {failed}", file=sys.stderr)
    return 1
  rows = {name: {} for name in (cs.FULL, ROUND0)}
  for (name, k), (_, workdir, _) in jobs.items():
    metrics = cs.load_rows(workdir)
    if not metrics:
      raise SystemExit(f"{workdir}/metrics.jsonl: no finished round; re-run to resume it.")
    rows[name][k] = metrics[-1]
  gate = evaluate(rows)
  header = (f"# Learnability gate: {args.config} {' '.join(extra)} "
            f"(validation groups {args.validation_groups})")
  text = markdown(gate, seeds, header)
  with open(os.path.join(args.workdir, "gate.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.workdir, "gate.json"), "w") as f:
    json.dump({"config": args.config, "extra": extra, "seeds": seeds,
               "validation_groups": args.validation_groups, **gate}, f, indent=1)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
