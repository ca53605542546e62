"""Converts a pytorch_i3d state dict (e.g. the paper's ``rgb_charades.pt``) to Flax I3D variables.

Run:
  python -m claus_jax.tools.import_i3d rgb_charades.pt --out ~/claus/i3d_charades
  python -m claus_jax.main --config=configs/jhmdb.py --config.model.encoder_init=~/claus/i3d_charades

Key mapping (pytorch_i3d -> Flax ``InceptionI3d``; PyTorch conv weights are (out, in, t, h, w), Flax
kernels (t, h, w, in, out)):
  <layer>.conv3d.weight      -> params/<layer>/conv3d/kernel
  <layer>.bn.weight | bias   -> params/<layer>/bn/scale | bias
  <layer>.bn.running_mean    -> batch_stats/<layer>/bn/mean
  <layer>.bn.running_var     -> batch_stats/<layer>/bn/var
  <layer>.bn.num_batches_tracked: ignored (Flax keeps no counter).
where <layer> is ``Conv3d_1a_7x7`` or ``Mixed_3b.b1a`` etc. Layers after ``--final_endpoint`` (and
the ``logits`` layer) are skipped and counted; any other unknown key, a missing variable or a
wrongly shaped one is an error that lists them all. torch is needed only here
(``pip install claus_jax[torch]``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from claus_jax import pool
from claus_jax.models import i3d, save_encoder_variables

_BN_KEYS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


class StateDictMismatch(ValueError):
  """A state dict that does not fit InceptionI3d; the message lists every offending key."""


def expected_variables(final_endpoint: str = "Mixed_4f", width: float = 1.0) -> dict[str, tuple]:
  """{'params/Conv3d_1a_7x7/conv3d/kernel': shape, ...} of InceptionI3d, computed without FLOPs."""
  model = i3d.InceptionI3d(final_endpoint, "standard", width)
  video = jax.ShapeDtypeStruct((1, 8, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, False), video)
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    flat["/".join(str(p.key) for p in path)] = tuple(leaf.shape)
  return flat


def _target(key: str) -> tuple[str, bool] | None:
  """Flax path of a torch key and whether it is a conv kernel; None if the key is not mappable."""
  parts = key.split(".")
  if len(parts) < 3:
    return None
  *layer, module, leaf = parts
  if module == "conv3d" and leaf == "weight":
    return "/".join(["params", *layer, "conv3d", "kernel"]), True
  if module == "bn" and leaf in _BN_KEYS:
    collection, name = _BN_KEYS[leaf]
    return "/".join([collection, *layer, "bn", name]), False
  return None


def convert_state_dict(state_dict: Mapping[str, np.ndarray], final_endpoint: str = "Mixed_4f",
                       width: float = 1.0) -> tuple[dict, dict]:
  """Maps a pytorch_i3d state dict onto InceptionI3d(final_endpoint, width) variables.

  Args:
    state_dict: torch key -> array (numpy or anything ``np.asarray`` takes); a leading ``module.``
      (DataParallel) is stripped.
    final_endpoint: last encoder layer to import (the detector uses 'Mixed_4f').
    width: channel multiplier of the target model (1.0 for published weights).

  Returns:
    ({'params': ..., 'batch_stats': ...} nested dicts of float32 numpy arrays,
     report {'converted': n, 'skipped': [keys of later layers], 'ignored': [num_batches_tracked]}).

  Raises:
    StateDictMismatch: listing unknown, missing and wrongly shaped keys.
  """
  if final_endpoint not in i3d.VALID_ENDPOINTS:
    raise ValueError(f"final_endpoint {final_endpoint!r} is not one of {i3d.VALID_ENDPOINTS}.")
  later = set(i3d.VALID_ENDPOINTS[i3d.VALID_ENDPOINTS.index(final_endpoint) + 1:]) | {"logits"}
  expected = expected_variables(final_endpoint, width)
  found, unknown, misshaped, skipped, ignored = {}, [], [], [], []
  misshaped_paths = set()
  for raw_key, value in state_dict.items():
    key = raw_key[len("module."):] if raw_key.startswith("module.") else raw_key
    if key.endswith("num_batches_tracked"):
      ignored.append(raw_key)
      continue
    if key.split(".")[0] in later:
      skipped.append(raw_key)
      continue
    target = _target(key)
    if target is None or target[0] not in expected:
      unknown.append(raw_key)
      continue
    path, is_kernel = target
    array = np.asarray(value, dtype=np.float32)
    if is_kernel and array.ndim == 5:
      array = np.transpose(array, (2, 3, 4, 1, 0))  # (out, in, t, h, w) -> (t, h, w, in, out)
    if tuple(array.shape) != expected[path]:
      misshaped.append(f"{raw_key}: {tuple(np.shape(value))} -> {tuple(array.shape)}, "
                       f"expected {expected[path]} for {path}")
      misshaped_paths.add(path)
      continue
    found[path] = array
  missing = sorted(p for p in expected if p not in found and p not in misshaped_paths)
  if unknown or missing or misshaped:
    lines = ([f"unknown key: {k}" for k in unknown] + [f"missing: {p}" for p in missing]
             + [f"wrong shape: {m}" for m in misshaped])
    raise StateDictMismatch(f"the state dict does not fit InceptionI3d(final_endpoint={final_endpoint!r}, "
                       f"width={width}) ({len(unknown)} unknown, {len(missing)} missing, "
                       f"{len(misshaped)} wrongly shaped):\n  " + "\n  ".join(lines))
  variables: dict = {"params": {}, "batch_stats": {}}
  for path, array in found.items():
    node = variables
    *parents, leaf = path.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = array
  report = {"converted": len(found), "skipped": skipped, "ignored": ignored}
  return variables, report


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict file (tensors only, no pickled code) into numpy arrays."""
  try:
    import torch
  except ModuleNotFoundError as e:
    raise SystemExit("import_i3d needs PyTorch to read .pt files: pip install 'claus_jax[torch]' "
                     "(or pip install torch).") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise StateDictMismatch(f"{path}: expected a state dict (a mapping of tensors), got {type(obj)}.")
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m claus_jax.tools.import_i3d",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("state_dict", help="pytorch_i3d state dict (.pt), e.g. rgb_charades.pt")
  parser.add_argument("--out", required=True, help="output directory (becomes encoder_init)")
  parser.add_argument("--final_endpoint", default="Mixed_4f", choices=i3d.VALID_ENDPOINTS)
  parser.add_argument("--width", type=float, default=1.0, help="width multiplier of the target")
  args = parser.parse_args(argv)
  from claus_jax import experiment  # The console's one logging setup; not needed to convert.

  experiment.quiet_library_logs()
  state = load_torch_state_dict(args.state_dict)
  variables, report = convert_state_dict(state, args.final_endpoint, args.width)
  path = save_encoder_variables(variables, args.out)
  meta = {"source": os.path.abspath(args.state_dict), "final_endpoint": args.final_endpoint,
          "width": args.width, "converted": report["converted"],
          "skipped_later_layers": len(report["skipped"]),
          "ignored_counters": len(report["ignored"]), "orbax": path}
  pool.atomic_write_json(os.path.join(args.out, "import_i3d.json"), meta)
  logging.info("converted %d arrays to %s; skipped %d keys of layers after %s, ignored %d BN "
               "counters.", report["converted"], path, len(report["skipped"]), args.final_endpoint,
               len(report["ignored"]))
  return meta


if __name__ == "__main__":
  main(sys.argv[1:])
