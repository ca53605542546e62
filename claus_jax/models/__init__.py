"""The CLAUS detector and its parts: :func:`build_model` is the one entry point.

Usage:
  model = build_model(config)
  variables = model.init({'params': k1, 'dropout': k2}, video, train=False)  # params, batch_stats
  variables = load_encoder_init(variables, config.model.encoder_init)  # if set
  out = model.apply(variables, video, train=False)  # seg_logits, class_probs, latent
  feats = model.apply(variables, video, method='encode')
  out = model.apply(variables, feats, train=True, rngs={'dropout': k}, method='head')  # MC dropout
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from claus_jax import errors
from claus_jax.models import detector as detector_lib
from claus_jax.models import i3d as i3d_lib
from claus_jax.models.capsules import ConvCapsules, PrimaryCapsules, em_routing
from claus_jax.models.detector import CAPSULE_DIM, CLAUSDetector, Decoder, latent_dim
from claus_jax.models.i3d import InceptionI3d

__all__ = ["build_model", "init_variables", "preprocess", "input_range", "latent_dim",
           "CAPSULE_DIM", "DTYPES", "DETECTOR_STRIDES", "load_encoder_init",
           "save_encoder_variables", "count_params", "primary_kernel", "CLAUSDetector",
           "InceptionI3d", "ConvCapsules", "PrimaryCapsules", "Decoder", "em_routing",
           "ENCODER_VARIABLES_SUBDIR"]

ENCODER_VARIABLES_SUBDIR = "variables"  # Orbax tree inside an encoder_init directory.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.model.dtype: compute dtypes.
# config.model.strides: the detector's Mixed_4f must keep one frame for the 2-D capsules, which only
# the 'claus' strides do ('standard' is for InceptionI3d used on its own; see i3d.STRIDES).
DETECTOR_STRIDES = ("claus",)
# The numeric fields of the model section (config.model.<key>) and their intervals.
RANGES = {"num_classes": "[1, inf)", "primary_caps": "[1, inf)", "primary_kernel": "[0, inf)",
          "routing_iters": "[1, inf)", "routing_lambda": "(0, inf)", "seg_prior": "(0, 1)",
          "input_range": "(-inf, inf)", "width": "(0, inf)", "dropout": "[0, 1)",
          "routing_cost_scale": "[0, inf)"}
# What to do, added to a choice or range error of the model section.
HINTS = {"strides": "The detector needs 'claus' (Mixed_4f must keep one frame for the 2-D "
                    "capsules); 'standard' is only for InceptionI3d used on its own.",
         "width": "1.0 is the paper's width.",
         "routing_cost_scale": "0 standardises the costs over the classes."}


def choices() -> dict[str, tuple[str, ...]]:
  """The allowed values of the model section's enumerated fields (``config.model.<key>``)."""
  return {"strides": DETECTOR_STRIDES, "dtype": tuple(DTYPES), "conv_impl": i3d_lib.CONV_IMPLS,
          "routing_sign": detector_lib.ROUTING_SIGNS, "routing": detector_lib.ROUTINGS,
          "init": detector_lib.INITS}


def check_section(model_config: ml_collections.ConfigDict) -> None:
  """Every enumerated and numeric field of ``config.model`` (:func:`choices`, ``RANGES``).

  Raises:
    errors.ConfigError: for the first bad field, naming it, the allowed values and what to do.
  """
  for field, allowed in choices().items():
    errors.check_choice(f"model.{field}", model_config[field], allowed, HINTS.get(field, ""))
  for field, interval in RANGES.items():
    errors.check_range(f"model.{field}", model_config[field], interval, HINTS.get(field, ""))


def geometry(frame_size: int, clip_length: int = 8) -> dict:
  """Spatial sizes through the detector for a square input of ``frame_size`` pixels.

  The encoder reduces by 8 (1a: /2, 2a pool: /2, 3a pool: /2); the primary capsules use a VALID
  kernel, chosen so the grid is 20 at 224 (kernel 9), and scaled for smaller inputs.
  """
  if frame_size % 16 != 0:
    raise errors.ConfigError(
        f"config.data.frame_size={frame_size}: must be a multiple of 16 (the encoder downsamples "
        "by 8 and the decoder upsamples by 2 three times); try 64, 112 or 224.")
  feat = frame_size // 8
  kernel = max(1, round(9 * feat / 28)) if feat >= 4 else 1
  grid = feat - kernel + 1
  return {"feature": feat, "primary_kernel": kernel, "grid": grid,
          "encoder_frames": max(1, clip_length // 8)}


def primary_kernel(config: ml_collections.ConfigDict) -> int:
  """The primary-capsule kernel: config.model.primary_kernel, or derived from the frame size."""
  if config.model.primary_kernel:
    return int(config.model.primary_kernel)
  return geometry(config.data.frame_size, config.model.clip_length)["primary_kernel"]


def build_model(config: ml_collections.ConfigDict) -> CLAUSDetector:
  """The CLAUS detector for ``config.model`` at ``config.data.frame_size``.

  Raises:
    errors.ConfigError: for a model setting the detector cannot run with (:func:`check_section`,
      which the schema's ``configlib.validate`` also runs before a run).
  """
  check_section(config.model)
  m = config.model
  return CLAUSDetector(num_classes=m.num_classes, primary_kernel=primary_kernel(config),
                       width=m.width, strides=m.strides, primary_caps=m.primary_caps,
                       routing_iters=m.routing_iters, coord_add=m.coord_add,
                       routing_lambda=m.routing_lambda, dropout=m.dropout, dtype=DTYPES[m.dtype],
                       conv_impl=m.conv_impl, seg_prior=m.seg_prior,
                       routing_cost_scale=m.routing_cost_scale, routing_sign=m.routing_sign,
                       routing=m.routing, init_scheme=m.init)


def init_variables(model: CLAUSDetector, key: jax.Array, *, clip_length: int,
                   frame_size: int) -> dict:
  """Fresh ``{'params', 'batch_stats'}`` of ``model``: the jitted ``model.init`` on one blank clip.

  The one way a run, a benchmark and a test start a detector.

  Args:
    model: from :func:`build_model`.
    key: the ``params`` and ``dropout`` key (raw uint32 or typed).
    clip_length: frames of the blank clip (``model.clip_length``).
    frame_size: its side (``data.frame_size``, or the pretraining's).
  """
  dummy = jnp.zeros((1, int(clip_length), int(frame_size), int(frame_size), 3), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))({"params": key, "dropout": key}, dummy)


def preprocess(video: jax.Array | np.ndarray, input_range=(-1.0, 1.0)) -> jax.Array:
  """uint8 frames (..., H, W, 3) in [0, 255] -> float32 in ``input_range`` (``config.model.input_range``).

  The default [-1, 1] is the range the public pytorch_i3d Charades weights were trained on; the
  authors' code fed x / 255 in [0, 1] to those weights ('authors' preset: ``(0.0, 1.0)``).
  """
  low, high = (float(v) for v in input_range)
  if (low, high) == (-1.0, 1.0):
    return jnp.asarray(video, jnp.float32) / 127.5 - 1.0  # Bit-identical to the earlier form.
  return jnp.asarray(video, jnp.float32) * ((high - low) / 255.0) + low


def input_range(model_config: ml_collections.ConfigDict) -> tuple[float, float]:
  """The model section's ``input_range`` (``config.model.input_range``) as floats."""
  low, high = model_config.input_range
  return float(low), float(high)


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def save_encoder_variables(encoder_variables: dict, directory: str) -> str:
  """Saves InceptionI3d variables {'params', 'batch_stats'} with orbax under ``directory``.

  Returns the orbax path (``directory/variables``).
  """
  import orbax.checkpoint as ocp

  path = os.path.join(os.path.abspath(os.path.expanduser(directory)), ENCODER_VARIABLES_SUBDIR)
  tree = jax.tree_util.tree_map(np.asarray, {"params": encoder_variables["params"],
                                             "batch_stats": encoder_variables["batch_stats"]})
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, tree, force=True)
  checkpointer.wait_until_finished()
  return path


class EncoderInitError(errors.UserError, ValueError):
  """An ``encoder_init`` directory whose variables cannot be read (damaged or incomplete)."""


def read_encoder_variables(directory: str) -> dict:
  """The orbax tree under ``directory/variables``, restored in full (every array read).

  Raises:
    EncoderInitError: it cannot be read; the message names the folder, the storage layer's own
      words, and how to make it again.
  """
  import orbax.checkpoint as ocp

  path = os.path.join(os.path.abspath(os.path.expanduser(directory)), ENCODER_VARIABLES_SUBDIR)
  try:
    return ocp.StandardCheckpointer().restore(path)
  except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many kinds)
    raise EncoderInitError(
        f"encoder weights {path} cannot be read ({errors.root_cause(e)}); the folder is "
        "damaged or incomplete. Make it again: `python -m claus_jax.tools.import_i3d` for imported "
        "I3D weights, `python -m claus_jax.pretrain --force` for the synthetic pretraining "
        "cache.") from e


def load_encoder_init(variables: dict, directory: str) -> dict:
  """Replaces the detector's encoder variables with the imported ones in ``directory``.

  Args:
    variables: the detector's {'params', 'batch_stats'} (from ``model.init``).
    directory: an ``encoder_init`` dir written by ``python -m claus_jax.tools.import_i3d``.

  Returns:
    A new variables dict; everything outside ``encoder`` is unchanged. Imported layers beyond the
    detector's encoder (e.g. Mixed_5b) are ignored.

  Raises:
    FileNotFoundError: no orbax tree in ``directory``.
    ValueError: listing every encoder variable that is missing from the import or mis-shaped
      (e.g. a width multiplier other than 1.0).
    EncoderInitError: the variables cannot be read.
  """
  path = os.path.join(os.path.abspath(os.path.expanduser(directory)), ENCODER_VARIABLES_SUBDIR)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"config.model.encoder_init={directory!r}: no orbax tree at {path}; "
                            "create it with `python -m claus_jax.tools.import_i3d STATE_DICT.pt "
                            f"--out {directory}`.")
  restored = read_encoder_variables(directory)
  new_vars = {k: v for k, v in variables.items()}
  problems = []
  for collection in ("params", "batch_stats"):
    target = traverse_util.flatten_dict(dict(variables[collection]["encoder"]), sep="/")
    source = traverse_util.flatten_dict(dict(restored.get(collection, {})), sep="/")
    for key, leaf in target.items():
      if key not in source:
        problems.append(f"missing {collection}/{key} {tuple(leaf.shape)}")
      elif tuple(source[key].shape) != tuple(leaf.shape):
        problems.append(f"shape of {collection}/{key}: imported {tuple(source[key].shape)}, "
                        f"model {tuple(leaf.shape)}")
  if problems:
    raise ValueError(f"encoder_init {directory!r} does not fit the detector's encoder "
                     f"({len(problems)} problems; imported weights need model.width=1.0):\n  "
                     + "\n  ".join(problems))
  for collection in ("params", "batch_stats"):
    def take(subtree, src):
      return {k: take(v, src[k]) if hasattr(v, "items") else jnp.asarray(src[k], v.dtype)
              for k, v in subtree.items()}
    coll = dict(variables[collection])
    coll["encoder"] = take(variables[collection]["encoder"], restored[collection])
    new_vars[collection] = coll
  return new_vars
