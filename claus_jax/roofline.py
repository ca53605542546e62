"""Per-layer-group roofline of the detector's eval forward and its backward (``bench model --profile``).

Kept apart from :mod:`claus_jax.bench`, which defines command-line flags at import, so that the
profile can be imported anywhere (tests, notebooks) beside other claus_jax commands.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from claus_jax import models
from claus_jax.models import i3d


def xla_flops(compiled: jax.stages.Compiled) -> float:
  """FLOPs per call from XLA's cost analysis of a compiled program; 0 where XLA gives none.

  XLA counts a convolution's multiply-adds over the taps that fall inside the input (padding
  excluded) and transcendentals (exp, log) apart from the FLOPs.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
  """Median wall time of each zero-argument ``fn`` (which must block until its result is ready).

  The functions are timed round-robin (a, b, a, b, ...) after one warm-up call each, so load from
  other processes on a shared machine hits them alike and their ratio stays meaningful.
  """
  for fn in fns.values():
    fn()
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(max(1, repeats)):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------------------------------- profile

# The detector's eval forward cut into layer groups, in execution order: one profile row each.
PROFILE_GROUPS = ("stem", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c",
                  "Mixed_4d", "Mixed_4e", "Mixed_4f", "decoder/skip56", "decoder/skip112",
                  "primary_caps", "routing", "decoder/up28", "decoder/up56", "decoder/up112",
                  "decoder/up224", "decoder/output")
_STEM = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")
_MIXED = tuple(name for name in i3d.VALID_ENDPOINTS[:i3d.VALID_ENDPOINTS.index("Mixed_4f") + 1]
               if name.startswith("Mixed"))


@dataclasses.dataclass
class LayerGroup:
  """One layer group of the eval forward: ``fn(*args)`` on the real inputs, compiled for them."""
  name: str
  fn: Callable
  args: tuple
  compiled: jax.stages.Compiled


def layer_groups(model: models.CLAUSDetector, variables: dict, video: jax.Array
                 ) -> tuple[list[LayerGroup], dict[str, jax.Array]]:
  """The detector's eval forward (``train=False``) as the pure functions of PROFILE_GROUPS.

  Each group runs the detector's own modules with its own variables: the encoder's layers are
  applied one by one with their slice of ``variables`` (mirroring the layer list of
  ``InceptionI3d.__call__``), the head's parts through ``model.apply(..., method=...)``. A group's
  inputs are the outputs of the groups before it, computed here by running them in order.

  Args:
    model: from :func:`build_model`.
    variables: the detector's ``{'params', 'batch_stats'}``.
    video: (B, 8, H, W, 3) float in [-1, 1].

  Returns:
    The groups in PROFILE_GROUPS order, each compiled for its inputs, and the chained outputs
    ``{'seg_logits', 'class_probs', 'latent'}`` (equal to the whole forward's up to float
    reordering).
  """
  dtype, impl = model.dtype, i3d.resolve_conv_impl(model.conv_impl)
  strided = i3d.STRIDES[model.strides]
  channels = lambda c: i3d.scaled_channels(c, model.width)
  encoder = {coll: variables[coll]["encoder"] for coll in ("params", "batch_stats")}
  layer = lambda name: {coll: encoder[coll][name] for coll in encoder}

  def unit(v, x, features, kernel, strides):
    return i3d.Unit3D(channels(features), kernel, strides, dtype, impl).apply(v, x, train=False)

  def stem(v, x):
    cross112 = unit(v["Conv3d_1a_7x7"], x.astype(dtype), 64, (7, 7, 7), (2, 2, 2))
    x = i3d.max_pool_same(cross112, (1, 3, 3), (1, 2, 2), impl)
    x = unit(v["Conv3d_2b_1x1"], x, 64, (1, 1, 1), (1, 1, 1))
    cross56 = unit(v["Conv3d_2c_3x3"], x, 192, (3, 3, 3), strided["Conv3d_2c_3x3"])
    return i3d.max_pool_same(cross56, (1, 3, 3), (1, 2, 2), impl), cross56, cross112

  def mixed(name):
    module = i3d.InceptionModule(tuple(channels(c) for c in i3d.INCEPTION_CHANNELS[name]), dtype,
                                 impl)
    return lambda v, x: module.apply(v, x, train=False)

  def pool4a(x):
    return i3d.max_pool_same(x, (3, 3, 3), strided["MaxPool3d_4a_3x3"], impl)

  # The head's parts, as CLAUSDetector.head and Decoder run them with the channel dropout off.
  def skip56(m, cross56):
    return m.decoder.up112(nn.relu(m.decoder.conv56(cross56)), m.decoder.skip_in, add_bias=False)

  def skip112(m, cross112):
    return m.decoder.up224(nn.relu(m.decoder.conv112(cross112)), m.decoder.skip_in,
                           add_bias=False)

  def primary(m, features):
    return m.primary(features[:, 0])

  def routing(m, poses, acts):
    class_poses, class_acts = m.class_caps(poses, acts)
    b, g_h, g_w, c, d = class_poses.shape
    flat_poses = class_poses.reshape(b, g_h, g_w, c * d)
    latent = jnp.max(jnp.concatenate([flat_poses, class_acts], axis=-1), axis=(1, 2))
    return flat_poses, jnp.mean(class_acts, axis=(1, 2)), latent

  def up28(m, flat_poses, features):
    x = nn.relu(m.decoder.up28(flat_poses.astype(dtype)))[:, None]
    return jnp.concatenate([x, nn.relu(m.decoder.conv28(features)).astype(x.dtype)], axis=-1)

  def up56(m, x):
    return nn.relu(m.decoder.up56(x))

  def up112(m, x, skip):
    return nn.relu(m.decoder.up112(x, m.decoder.path_in) + skip)

  def up224(m, x, skip):
    return m.decoder.up224(x, m.decoder.path_in) + skip

  def output(m, x):
    return m.decoder.smooth(x)[..., 0].astype(jnp.float32)

  def head(method):
    return lambda v, *xs: model.apply(v, *xs, method=method)

  groups = []

  def run(name, fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    groups.append(LayerGroup(name, fn, args, compiled))
    return compiled(*args)

  x, cross56, cross112 = run("stem", stem, {n: layer(n) for n in _STEM}, video)
  for name in _MIXED:
    if name == "Mixed_4b":
      x = run("MaxPool3d_4a_3x3", pool4a, x)
    x = run(name, mixed(name), layer(name), x)
  skip_up112 = run("decoder/skip56", head(skip56), variables, cross56)
  skip_up224 = run("decoder/skip112", head(skip112), variables, cross112)
  poses, acts = run("primary_caps", head(primary), variables, x)
  flat_poses, class_probs, latent = run("routing", head(routing), variables, poses, acts)
  y = run("decoder/up28", head(up28), variables, flat_poses, x)
  y = run("decoder/up56", head(up56), variables, y)
  y = run("decoder/up112", head(up112), variables, y, skip_up112)
  y = run("decoder/up224", head(up224), variables, y, skip_up224)
  seg_logits = run("decoder/output", head(output), variables, y)
  assert tuple(g.name for g in groups) == PROFILE_GROUPS, [g.name for g in groups]
  return groups, {"seg_logits": seg_logits, "class_probs": class_probs, "latent": latent}


@dataclasses.dataclass(frozen=True)
class MatmulOp:
  """A convolution or dot product of a group's program, and the keys of its two references.

  ``flops`` is 2 x its multiply-adds over the whole kernel (padding taps included). The 2-D conv
  reference is ``('conv', N, H, W, C_in, kh, kw, C_out, dtype)``: a stride-1 NHWC conv with SAME
  padding, output H x W, so of the same FLOPs; the matmul reference is ``('dot', batch, M, K, N,
  dtype)``.
  """
  primitive: str
  flops: float
  conv_ref: tuple
  dot_ref: tuple


def _sub_jaxprs(params: dict):
  """The jaxprs nested in an equation's parameters (jit, custom_jvp and the like)."""
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      item = getattr(item, "jaxpr", item)  # ClosedJaxpr -> Jaxpr
      if hasattr(item, "eqns"):
        yield item


def _walk_eqns(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it; a loop body is visited once (the
  detector's forward has none: the routing iterations are unrolled)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in _sub_jaxprs(eqn.params):
      yield from _walk_eqns(sub)


def matmul_ops(fn: Callable, *args) -> list[MatmulOp]:
  """The convolutions and dot products that ``fn(*args)`` traces to, with their references.

  A convolution of any rank gets the 2-D conv of the same output positions and FLOPs: spatial axes
  but the last two fold into the batch, their kernel taps into the input channels (a 3-D conv's
  time into the batch, its temporal taps into C_in); its matmul has M = output positions,
  K = taps x C_in, N = C_out. A dot product's conv reference is the 1x1 conv of its M positions; a
  batched dot product (the capsule votes, EM routing) has no 2-D conv form and is its own
  reference in both columns (a batched ``jnp.matmul``).
  """
  ops = []
  for eqn in _walk_eqns(jax.make_jaxpr(fn)(*args).jaxpr):
    name = eqn.primitive.name
    if name not in ("conv_general_dilated", "dot_general"):
      continue
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    dtype = str(lhs.dtype)
    if name == "conv_general_dilated":
      dims = eqn.params["dimension_numbers"]
      out = eqn.outvars[0].aval.shape
      batch, c_out = out[dims.out_spec[0]], out[dims.out_spec[1]]
      spatial = [out[d] for d in dims.out_spec[2:]]
      taps = [rhs.shape[d] for d in dims.rhs_spec[2:]]
      c_in = rhs.shape[dims.rhs_spec[1]]  # Per feature group.
      positions, kernel = batch * math.prod(spatial), math.prod(taps)
      flops = 2.0 * positions * kernel * c_in * c_out
      conv_ref = ("conv", batch * math.prod(spatial[:-2]), *([1, 1] + spatial)[-2:],
                  c_in * math.prod(taps[:-2]), *([1, 1] + taps)[-2:], c_out, dtype)
      dot_ref = ("dot", 1, positions, kernel * c_in, c_out, dtype)
    else:
      (l_contract, r_contract), (l_batch, r_batch) = eqn.params["dimension_numbers"]
      batch = math.prod(lhs.shape[d] for d in l_batch)
      k = math.prod(lhs.shape[d] for d in l_contract)
      m = math.prod(s for d, s in enumerate(lhs.shape) if d not in (*l_contract, *l_batch))
      n = math.prod(s for d, s in enumerate(rhs.shape) if d not in (*r_contract, *r_batch))
      flops = 2.0 * batch * m * k * n
      dot_ref = ("dot", batch, m, k, n, dtype)
      conv_ref = ("conv", 1, m, 1, k, 1, 1, n, dtype) if batch == 1 else dot_ref
    ops.append(MatmulOp(name, flops, conv_ref, dot_ref))
  return ops


def _ref_name(key: tuple) -> str:
  """A reference's timing name, e.g. 'conv 8x56x56x576 k3x3 o128 float32'."""
  if key[0] == "conv":
    _, n, h, w, c_in, kh, kw, c_out, dtype = key
    return f"conv {n}x{h}x{w}x{c_in} k{kh}x{kw} o{c_out} {dtype}"
  _, batch, m, k, n, dtype = key
  return f"dot {batch}x{m}x{k}x{n} {dtype}"


def _reference_call(key: tuple, rng: np.random.Generator) -> Callable[[], object]:
  """A compiled 2-D conv (``lax.conv_general_dilated`` NHWC) or ``jnp.dot``/``jnp.matmul`` of the
  shapes in ``key`` (see MatmulOp) on random inputs, as a zero-argument blocking call."""
  dtype = jnp.dtype(key[-1])
  if key[0] == "conv":
    _, n, h, w, c_in, kh, kw, c_out, _ = key
    shapes = (n, h, w, c_in), (kh, kw, c_in, c_out)
    pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in (kh, kw)]
    fn = lambda x, y: jax.lax.conv_general_dilated(x, y, (1, 1), pads,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  else:
    _, batch, m, k, n, _ = key
    shapes = ((m, k), (k, n)) if batch == 1 else ((batch, m, k), (batch, k, n))
    fn = jnp.dot if batch == 1 else jnp.matmul
  x, y = (jnp.asarray(rng.standard_normal(s, dtype=np.float32), dtype) for s in shapes)
  compiled = jax.jit(fn).lower(x, y).compile()
  return lambda: jax.block_until_ready(compiled(x, y))


def vjp_program(fn: Callable, *args) -> jax.stages.Compiled:
  """``fn``'s forward and backward, compiled for ``args``: ``(outputs, gradients)``, the gradients
  with respect to every argument (parameters and inputs) for an all-ones cotangent, as a training
  step runs them. The outputs are returned so that the forward is computed even where the gradients
  do not need it (a linear layer's), and the program minus the forward is the backward."""
  def forward_backward(*xs):
    out, pullback = jax.vjp(fn, *xs)
    return out, pullback(jax.tree_util.tree_map(jnp.ones_like, out))
  return jax.jit(forward_backward).lower(*args).compile()


def layer_profile(model: models.CLAUSDetector, variables: dict, video: jax.Array,
                  repeats: int = 3, backward: bool = True) -> dict:
  """Per-layer-group roofline of the detector's eval forward on this machine, and its backward.

  Each group of :func:`layer_groups` is compiled for its real inputs and timed (compile excluded,
  median of ``repeats`` calls after a warm-up); beside it, every convolution and dot product the
  group runs (:func:`matmul_ops`) is timed alone as a plain 2-D conv and as a matmul of the same
  FLOPs, on random inputs. With ``backward``, each group's forward + backward (:func:`vjp_program`:
  gradients for its parameters and its inputs) is timed too. The groups, the references and the
  whole forward are timed round-robin in one process, so load from other processes hits them alike.

  Returns:
    {'rows': one dict per group of PROFILE_GROUPS with
       'group', 'gflop' (per call, XLA's cost analysis; our dense conv + dot count where XLA gives
       none, see 'flops_source'), 'conv_dot_gflop' (our count of its convs and dots, padding taps
       included), 'ms', 'gflop_per_s' (gflop / ms), 'conv2d_gflop_per_s' and 'matmul_gflop_per_s'
       (conv_dot_gflop over the summed times of its ops' 2-D conv or matmul references),
       'roofline_ms' (sum over its ops of the faster reference), 'of_roofline' (roofline_ms / ms),
       'ops'; the reference fields are None for a group without convs or dots,
     'forward_gflop', 'forward_ms' (the whole forward, compiled as one program), 'groups_gflop',
     'groups_ms' (sums over the groups), 'flops_rel_diff' ((groups - forward) / forward),
     'output_max_abs_diff' (chained groups against the whole forward), 'batch', 'references'};
    with ``backward``, each row also has 'fwd_bwd_ms', 'bwd_ms' (fwd_bwd_ms - ms), 'bwd_gflop'
    (XLA's count of the vjp program minus the forward's) and 'bwd_gflop_per_s'; 'backward' says
    which.
  """
  groups, chained = layer_groups(model, variables, video)
  whole = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, video).compile()
  forward_out = whole(variables, video)
  diff = max(float(jnp.max(jnp.abs(forward_out[k].astype(jnp.float32) - chained[k])))
             for k in chained)
  ops = {g.name: matmul_ops(g.fn, *g.args) for g in groups}
  rng = np.random.default_rng(0)
  calls = {"forward": lambda: jax.block_until_ready(whole(variables, video))}
  for g in groups:
    calls[g.name] = lambda g=g: jax.block_until_ready(g.compiled(*g.args))
  refs = sorted({key for group_ops in ops.values() for op in group_ops
                 for key in (op.conv_ref, op.dot_ref)}, key=str)
  for key in refs:
    calls[_ref_name(key)] = _reference_call(key, rng)
  vjps = {}
  if backward:
    for g in groups:
      vjps[g.name] = vjp_program(g.fn, *g.args)
      calls["vjp " + g.name] = lambda c=vjps[g.name], a=g.args: jax.block_until_ready(c(*a))
  seconds = median_times(calls, repeats)
  ref_s = lambda key: seconds[_ref_name(key)]

  rows = []
  for g in groups:
    xla = xla_flops(g.compiled)
    counted = sum(op.flops for op in ops[g.name])
    flops = xla or counted
    t = seconds[g.name]
    conv_s = sum(ref_s(op.conv_ref) for op in ops[g.name])
    dot_s = sum(ref_s(op.dot_ref) for op in ops[g.name])
    best_s = sum(min(ref_s(op.conv_ref), ref_s(op.dot_ref)) for op in ops[g.name])
    has_ops = bool(ops[g.name])
    rows.append({
        "group": g.name, "gflop": flops / 1e9, "flops_source": "xla" if xla else "count",
        "conv_dot_gflop": counted / 1e9, "ms": t * 1e3, "gflop_per_s": flops / t / 1e9,
        "conv2d_gflop_per_s": counted / conv_s / 1e9 if has_ops else None,
        "matmul_gflop_per_s": counted / dot_s / 1e9 if has_ops else None,
        "roofline_ms": best_s * 1e3 if has_ops else None,
        "of_roofline": best_s / t if has_ops else None, "ops": len(ops[g.name])})
    if backward:
      fb = seconds["vjp " + g.name]
      bwd_flops = max(0.0, xla_flops(vjps[g.name]) - xla)
      rows[-1].update({"fwd_bwd_ms": fb * 1e3, "bwd_ms": (fb - t) * 1e3,
                       "bwd_gflop": bwd_flops / 1e9,
                       "bwd_gflop_per_s": bwd_flops / (fb - t) / 1e9 if fb > t else None})
  forward_flops = xla_flops(whole)
  groups_flops = sum(r["gflop"] for r in rows) * 1e9
  return {"backward": backward, "rows": rows, "forward_gflop": forward_flops / 1e9,
          "forward_ms": seconds["forward"] * 1e3, "groups_gflop": groups_flops / 1e9,
          "groups_ms": sum(r["ms"] for r in rows),
          "flops_rel_diff": ((groups_flops - forward_flops) / forward_flops if forward_flops
                             else None),
          "output_max_abs_diff": diff, "batch": int(video.shape[0]), "references": len(refs)}


def format_profile(profile: dict) -> list[str]:
  """The readable table of :func:`layer_profile`'s result, one line per group and two totals; with
  the backward columns where the profile has them."""
  fmt = lambda v, spec: format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))
  backward = profile.get("backward", False)
  lines = [f"profile: eval forward of {profile['batch']} clip(s) per call, median ms (compile "
           "excluded); GFLOP from XLA's cost analysis ('*': our conv + dot count); peaks: this "
           "machine's 2-D conv and matmul of each group's conv/dot shapes"
           + ("; bwd: the group's backward (gradients of its parameters and inputs), = its "
              "forward+backward program's ms minus the forward's" if backward else ""),
           f"  {'group':18s} {'GFLOP':>8s} {'ms':>9s} {'GFLOP/s':>8s} | {'conv2d':>8s} "
           f"{'matmul':>8s} GFLOP/s | {'roof ms':>8s} {'of roof':>7s}"
           + (f" | {'bwd GFLOP':>9s} {'bwd ms':>8s} {'GFLOP/s':>8s}" if backward else "")]
  for r in profile["rows"]:
    mark = "*" if r["flops_source"] == "count" else " "
    line = (f"  {r['group']:18s} {r['gflop']:7.3f}{mark} {r['ms']:9.2f} "
            f"{r['gflop_per_s']:8.1f} | {fmt(r['conv2d_gflop_per_s'], '8.1f')} "
            f"{fmt(r['matmul_gflop_per_s'], '8.1f')}         | "
            f"{fmt(r['roofline_ms'], '8.2f')} {fmt(r['of_roofline'], '7.0%')}")
    if backward:
      line += (f" | {r['bwd_gflop']:9.3f} {r['bwd_ms']:8.2f} "
               f"{fmt(r['bwd_gflop_per_s'], '8.1f')}")
    lines.append(line)
  roof = sum(r["roofline_ms"] or 0.0 for r in profile["rows"])
  lines.append(f"  {'sum of groups':18s} {profile['groups_gflop']:7.3f}  "
               f"{profile['groups_ms']:9.2f} "
               f"{profile['groups_gflop'] / profile['groups_ms'] * 1e3:8.1f} | "
               f"{'':27s} | {roof:8.2f} {roof / profile['groups_ms']:7.0%}"
               + (f" | {sum(r['bwd_gflop'] for r in profile['rows']):9.3f} "
                  f"{sum(r['bwd_ms'] for r in profile['rows']):8.2f}" if backward else ""))
  lines.append(f"  {'whole forward':18s} {profile['forward_gflop']:7.3f}  "
               f"{profile['forward_ms']:9.2f} "
               f"{profile['forward_gflop'] / profile['forward_ms'] * 1e3:8.1f} | "
               f"{'':27s} | {roof:8.2f} {roof / profile['forward_ms']:7.0%}")
  lines.append(f"  groups vs whole forward: FLOPs {fmt(profile['flops_rel_diff'], '1.3%')}, "
               f"outputs max |diff| {profile['output_max_abs_diff']:.2e}; "
               f"{profile['references']} reference programs")
  return lines


# ------------------------------------------------------------------------------------------ train
