"""Compares selection strategies over seeds at equal annotation cost (like the paper's Fig. 7).

Runs the main job once per (strategy, seed), each in its own resumable workdir, then writes a table of
mean +- std per round and a plot of performance against cumulative cost.

  python launch/compare_strategies.py --config=configs/synthetic.py \
      --strategies=claus,random,uncertainty --seeds=0,1,2 --workdir=runs/compare

The strategy ``full`` is the full-supervision reference (the paper's 100% line): one round with every
train video and every frame labelled, the same training as a round of the others. It is drawn as a
horizontal band, and every table gives each strategy's last round as a percentage of it.

Extra ``--config.x=y`` style overrides go after ``--``, e.g. ``-- --config.train.steps=100``.
``--tabulate=LABEL=DIR,LABEL=DIR`` runs nothing: it tables finished comparisons of the same
strategy (one in ``--strategies``) and seeds made with different overrides, e.g. a setting against
the default, each LABEL a row, paired by seed against the first:

  python launch/compare_strategies.py --strategies=claus --seeds=0,1,2 \
      --tabulate=default=runs/cold,warm_start=runs/warm --out=runs/warm_vs_cold.md

Runs are sequential by default; ``--parallel=N`` starts N at a time (each is a separate process, so
on a multi-GPU host pin them with CUDA_VISIBLE_DEVICES yourself). Re-running the same command
resumes unfinished runs and only re-aggregates finished ones.

Round 0 does not depend on the strategy (the same seeded initial set, training and MC-dropout
scores), so a run that starts when another strategy of its seed has finished round 0 in the same
``--workdir`` copies that round instead of computing it again (``--no-share_round0`` turns this off):
every file of round_000 but the strategy's own selection, and the config with only
``selection.strategy`` changed, which the main job then checks against its own as on any resume.
With sharing on, the first strategy of every seed starts ahead of the others. Sharing saves one
round in five of a 5-round comparison; the results equal the runs' own (tested).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent import futures

import numpy as np

# v-mAP@0.2 as well: the paper family's second threshold, and informative where small models leave
# v-mAP@0.5 at 0.
METRICS = ("capsule/v-mAP@0.5", "capsule/v-mAP@0.2", "capsule/f-mAP@0.5", "detection/v-mAP@0.5",
           "detection/f-mAP@0.5", "accuracy")


FULL = "full"  # Every video and frame labelled in round 0, no selection rounds.
FULL_OVERRIDES = ("--config.budget.initial_videos_pct=100", "--config.budget.initial_frames_pct=100",
                  "--config.budget.schedule=()", "--config.selection.strategy=random")


# What a strategy needs besides its name: ssal ranks by the NoiseAug score, so its runs score with
# it (and share no round 0 with the MC-dropout runs).
STRATEGY_OVERRIDES = {"ssal": ("--config.uncertainty.source=noise",)}


def command(config: str, strategy: str, seed: int, workdir: str, extra: list[str]) -> list[str]:
  """The main job's command line of one (strategy, seed) run."""
  chosen = (list(FULL_OVERRIDES) if strategy == FULL else
            [f"--config.selection.strategy={strategy}", *STRATEGY_OVERRIDES.get(strategy, ())])
  return [sys.executable, "-m", "claus_jax.main", f"--config={config}", f"--workdir={workdir}",
          *chosen, f"--config.seed={seed}", "--quiet", *extra]


# Round-0 files that depend on the strategy: its selection and the latents saved beside it.
# inputs.json records the donor's whole config, strategy included; the copy records its own.
STRATEGY_FILES = ("selection.json", "latents.npy", "inputs.json")


def round0_donor(root: str, strategy: str, seed: int) -> str | None:
  """A run in ``root`` of another strategy (not full, nor one of STRATEGY_OVERRIDES, whose scores
  differ) and the same seed whose round 0 is finished.

  Round 0 is finished once its selection is written: training, evaluation and scoring come before.
  """
  if strategy in (FULL, *STRATEGY_OVERRIDES) or not os.path.isdir(root):
    return None
  for name in sorted(os.listdir(root)):
    other, _, k = name.rpartition("_seed")
    if other in ("", FULL, strategy, *STRATEGY_OVERRIDES) or k != str(seed):
      continue
    donor = os.path.join(root, name)
    if (os.path.exists(os.path.join(donor, "config.json"))
        and os.path.exists(os.path.join(donor, "round_000", "selection.json"))):
      return donor
  return None


def share_round0(donor: str, workdir: str, strategy: str) -> bool:
  """Starts ``workdir`` as a copy of ``donor``'s round 0 for ``strategy``; False if it exists.

  Copies round_000 without STRATEGY_FILES, and the donor's config.json with selection.strategy set
  to ``strategy``; the main job refuses the workdir if its own config differs in anything else. The
  copy is built beside ``workdir`` and renamed into place, so an interrupted copy leaves no workdir.
  """
  if os.path.exists(workdir):
    return False
  partial = workdir + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  shutil.copytree(os.path.join(donor, "round_000"), os.path.join(partial, "round_000"),
                  ignore=lambda folder, names: [n for n in names if n in STRATEGY_FILES])
  with open(os.path.join(donor, "config.json")) as f:
    config = json.load(f)
  config["selection"]["strategy"] = strategy
  with open(os.path.join(partial, "config.json"), "w") as f:
    json.dump(config, f, indent=1, sort_keys=True)
  with open(os.path.join(partial, "stdout.log"), "w") as f:
    f.write(f"round 0 copied from {donor} (compare_strategies --share_round0)\n")
  os.rename(partial, workdir)
  return True


def start_order(jobs: list[tuple[str, int]], share: bool) -> list[tuple[str, int]]:
  """The (strategy, seed) jobs in the order they start: as given (seed-major), or when round 0 is
  shared, the first selecting strategy of each seed (the donors) ahead of the rest."""
  if not share:
    return list(jobs)
  donors = []
  for s, k in jobs:
    if s != FULL and all(k != seed for _, seed in donors):
      donors.append((s, k))
  return donors + [job for job in jobs if job not in donors]


def run_one(config: str, strategy: str, seed: int, workdir: str, extra: list[str],
            share_from: str | None = None) -> int:
  """Runs the main job of one (strategy, seed); ``share_from``: the comparison's root folder."""
  if share_from is not None:
    donor = round0_donor(share_from, strategy, seed)
    if donor is not None:
      share_round0(donor, workdir, strategy)
  cmd = command(config, strategy, seed, workdir, extra)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "stdout.log"), "a") as log:
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode


def run_jobs(calls: dict, parallel: int, name, workdir) -> list:
  """Runs ``run_one(*calls[key])`` for every key, ``parallel`` at a time, in the dict's order; prints
  one line per finished run (``name(key)``, ``workdir(key)``) and returns the keys that failed."""
  failed = []
  with futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
    running = {pool.submit(run_one, *args): key for key, args in calls.items()}
    for fut in futures.as_completed(running):
      key = running[fut]
      code = fut.result()
      print(f"{name(key)}: {'done' if code == 0 else f'failed (exit {code})'} -> {workdir(key)}",
            flush=True)
      if code != 0:
        failed.append(key)
  return failed


def load_rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def aggregate(results: dict[str, dict[int, list[dict]]], metric: str) -> dict:
  """{strategy: [(round, cost mean, metric mean, metric std, n)]} over the seeds with that round."""
  out = {}
  for strategy, per_seed in results.items():
    rounds = sorted({r["round"] for rows in per_seed.values() for r in rows})
    series = []
    for rnd in rounds:
      rows = [r for rows in per_seed.values() for r in rows if r["round"] == rnd]
      vals = np.array([np.nan if r.get(metric) is None else r[metric] for r in rows], float)
      cost = np.array([r["cost"] for r in rows], float)
      series.append((rnd, float(cost.mean()), float(np.nanmean(vals)) if len(vals) else np.nan,
                     float(np.nanstd(vals)) if len(vals) else np.nan, len(rows)))
    out[strategy] = series
  return out


def paired(results: dict[str, dict[int, list[dict]]], metric: str) -> dict:
  """{strategy: (mean, std, n, {seed: difference})} of (strategy - the first strategy) at the last
  round, per seed.

  Strategies share round 0 for a seed (same seeded initial set, same training), so the per-seed
  difference removes that shared luck; only seeds where both runs reached their last round count.
  """
  names = [n for n in results if n != FULL]
  if not names:  # Only the reference: nothing to pair.
    return {}
  base = names[0]
  out = {}
  for strategy in names[1:]:
    diffs = {}
    for seed, rows in results[strategy].items():
      ref = results[base].get(seed, [])
      if rows and ref and rows[-1]["round"] == ref[-1]["round"]:
        a, b = rows[-1].get(metric), ref[-1].get(metric)
        if a is not None and b is not None:
          diffs[seed] = a - b
    values = list(diffs.values())
    out[strategy] = ((float(np.mean(values)), float(np.std(values)), len(values), diffs) if values
                     else (np.nan, np.nan, 0, {}))
  return out


def area_under_curve(rows: list[dict], metric: str) -> float:
  """The learning curve's area (metric against cumulative cost, all rounds; trapezoids), divided
  by the cost it spans: the curve's mean height. NaN for fewer than two rounds or a missing value."""
  cost = np.array([r["cost"] for r in rows], float)
  values = np.array([np.nan if r.get(metric) is None else r[metric] for r in rows], float)
  if len(rows) < 2 or not np.all(np.isfinite(values)) or cost[-1] <= cost[0]:
    return float("nan")
  return float(np.sum(0.5 * (values[1:] + values[:-1]) * np.diff(cost)) / (cost[-1] - cost[0]))


def interval95(values) -> tuple[float, float, int]:
  """Mean and half-width of the 95% Student-t interval of ``values`` (paired differences)."""
  from scipy import stats
  values = np.asarray([v for v in values if np.isfinite(v)], float)
  n = len(values)
  if n == 0:
    return float("nan"), float("nan"), 0
  if n == 1:
    return float(values[0]), float("inf"), 1
  half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)
  return float(values.mean()), float(half), n


def paired_summary(results: dict[str, dict[int, list[dict]]], metric: str) -> dict:
  """{strategy: {"auc"|"last": (mean, half-width, n, {seed: difference})}}: the paired difference
  (strategy - the first strategy) of the area under the learning curve and of the last round, per
  seed, with its 95% interval. Only seeds where both runs reached the same last round count."""
  names = [n for n in results if n != FULL]
  out = {}
  for strategy in names[1:]:
    per = {"auc": {}, "last": {}}
    for seed, rows in results[strategy].items():
      ref = results[names[0]].get(seed, [])
      if not rows or not ref or rows[-1]["round"] != ref[-1]["round"]:
        continue
      a, b = rows[-1].get(metric), ref[-1].get(metric)
      if a is not None and b is not None:
        per["last"][seed] = a - b
      per["auc"][seed] = area_under_curve(rows, metric) - area_under_curve(ref, metric)
    out[strategy] = {k: (*interval95(list(d.values())), d) for k, d in per.items()}
  return out


def verdict(mean: float, half: float) -> str:
  if not np.isfinite(mean):
    return "no pair"
  if not np.isfinite(half) or abs(mean) <= half:
    return "inside the noise"
  return "ahead" if mean > 0 else "behind"


def percent_of_full(results: dict[str, dict[int, list[dict]]], metric: str) -> dict:
  """{strategy: (mean, std, n)} of 100 * strategy / full at the strategy's last round, per seed.

  Only seeds whose run reached that round count (a run still going would compare an earlier round).
  """
  full = results.get(FULL, {})
  out = {}
  for strategy, per_seed in results.items():
    if strategy == FULL:
      continue
    last = max((rows[-1]["round"] for rows in per_seed.values() if rows), default=None)
    ratios = []
    for seed, rows in per_seed.items():
      ref = full.get(seed, [])
      if rows and ref and rows[-1]["round"] == last:
        a, b = rows[-1].get(metric), ref[-1].get(metric)
        if a is not None and b:
          ratios.append(100.0 * a / b)
    out[strategy] = ((float(np.mean(ratios)), float(np.std(ratios)), len(ratios)) if ratios
                     else (np.nan, np.nan, 0))
  return out


def markdown(results: dict, metrics=METRICS) -> str:
  lines = []
  for metric in metrics:
    agg = aggregate(results, metric)
    rounds = sorted({s[0] for series in agg.values() for s in series})
    of_full = percent_of_full(results, metric) if FULL in results else {}
    lines += [f"### {metric} (%, mean +- std over seeds)", "",
              "| strategy | " + " | ".join(f"round {r}" for r in rounds)
              + (" | % of full, last round |" if of_full else " |"),
              "|---|" + "---|" * (len(rounds) + bool(of_full))]
    for strategy, series in agg.items():
      cells = {s[0]: f"{100 * s[2]:.1f} +- {100 * s[3]:.1f} (n={s[4]}, cost {s[1]:.0f})"
               for s in series}
      row = f"| {strategy} | " + " | ".join(cells.get(r, "-") for r in rounds) + " |"
      if of_full:
        mean, std, n = of_full.get(strategy, (100.0, 0.0, len(results[FULL])))
        row += f" {mean:.0f} +- {std:.0f} (n={n}) |"
      lines.append(row)
    base = next((n for n in results if n != FULL), None)
    for strategy, (mean, std, n, diffs) in paired(results, metric).items():
      by_seed = (f"; seeds {' / '.join(str(k) for k in diffs)}: "
                 + " / ".join(f"{100 * d:+.1f}" for d in diffs.values())) if diffs else ""
      lines.append(f"\n{strategy} - {base} at the last round, paired by seed: "
                   f"{100 * mean:+.1f} +- {100 * std:.1f} (n={n}{by_seed})")
    for strategy, parts in paired_summary(results, metric).items():
      for key, label in (("auc", "area under the learning curve"), ("last", "last round")):
        mean, half, n, diffs = parts[key]
        by_seed = " / ".join(f"{100 * d:+.1f}" for d in diffs.values())
        lines.append(f"{strategy} - {base}, {label}: {100 * mean:+.1f}, 95% interval "
                     f"+- {100 * half:.1f} (n={n}; per seed {by_seed}): "
                     f"{verdict(mean, half)}")
    lines.append("")
  return "\n".join(lines)


def plot(results: dict, metric: str, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for strategy, series in aggregate(results, metric).items():
    if strategy == FULL:  # A band: all labels, at a cost off the chart.
      if series and np.isfinite(series[-1][2]):
        mean, std = 100 * series[-1][2], 100 * series[-1][3]
        ax.axhline(mean, color="k", linestyle="--", linewidth=1, label="full supervision")
        ax.axhspan(mean - std, mean + std, color="k", alpha=0.08)
      continue
    cost = [s[1] for s in series]
    mean = np.array([100 * s[2] for s in series])
    std = np.array([100 * s[3] for s in series])
    ax.plot(cost, mean, "o-", label=strategy)
    ax.fill_between(cost, mean - std, mean + std, alpha=0.15)
  ax.set_xlabel("cumulative annotation cost")
  ax.set_ylabel(f"{metric} (%)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def tabulate(spec: str, strategies: list[str], seeds: list[int], out: str) -> int:
  """Tables LABEL=DIR comparisons of one strategy as if each LABEL were a strategy."""
  if len(strategies) != 1:
    raise SystemExit(f"--tabulate tables one strategy at a time; --strategies={strategies}.")
  results = {}
  for item in (i for i in spec.split(",") if i):
    label, sep, workdir = item.partition("=")
    if not sep or not label or not workdir:
      raise SystemExit(f"--tabulate: {item!r} is not LABEL=DIR.")
    results[label] = {k: load_rows(os.path.join(workdir, f"{strategies[0]}_seed{k}"))
                      for k in seeds}
    missing = [k for k, rows in results[label].items() if not rows]
    if missing:
      raise SystemExit(f"--tabulate: {workdir} has no finished round for seeds {missing} "
                       f"({strategies[0]}_seed<k>/metrics.jsonl); run them first.")
  table = markdown(results)
  if out:
    with open(out, "w") as f:
      f.write(table)
  print(table)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="", help="Required unless --tabulate.")
  parser.add_argument("--strategies", default="claus,random,uncertainty")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--workdir", default="runs/compare")
  parser.add_argument("--parallel", type=int, default=1)
  parser.add_argument("--share_round0", action=argparse.BooleanOptionalAction, default=True,
                      help="Copy round 0 from a finished run of the same seed (module docstring).")
  parser.add_argument("--metric", default="capsule/v-mAP@0.5", choices=METRICS)
  parser.add_argument("--tabulate", default="",
                      help="LABEL=DIR,...: table finished runs of one strategy; runs nothing.")
  parser.add_argument("--out", default="", help="--tabulate: also write the table to this file.")
  args, extra = parser.parse_known_args(argv)
  extra = [e for e in extra if e != "--"]
  strategies = [s for s in args.strategies.split(",") if s]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  if args.tabulate:
    return tabulate(args.tabulate, strategies, seeds, args.out)
  if not args.config:
    parser.error("--config is required (unless --tabulate).")
  # Seed-major order: with --parallel=len(strategies) the strategies of one seed run side by side,
  # so a comparison stopped early still holds complete seeds, paired at equal cost. When round 0 is
  # shared, the first selecting strategy of every seed starts first (start_order), so that the
  # others find its round 0 finished.
  jobs = {(s, k): os.path.join(args.workdir, f"{s}_seed{k}") for k in seeds for s in strategies}
  share_from = args.workdir if args.share_round0 else None
  order = start_order(list(jobs), args.share_round0)
  failed = run_jobs({(s, k): (args.config, s, k, jobs[(s, k)], extra, share_from) for s, k in order},
                    args.parallel, lambda key: f"{key[0]} seed {key[1]}", lambda key: jobs[key])
  results = {s: {k: load_rows(jobs[(s, k)]) for k in seeds} for s in strategies}
  table = markdown(results)
  with open(os.path.join(args.workdir, "comparison.md"), "w") as f:
    f.write(table)
  plot(results, args.metric, os.path.join(args.workdir, "comparison.png"))
  print(table)
  if failed:
    print(f"failed runs (see their stdout.log): {failed}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
