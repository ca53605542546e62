#!/usr/bin/env bash
# One short, prepared check for a lent GPU (<= 8 minutes): detector forward and forward+backward
# time per clip (float32, bfloat16), MC-dropout scoring clips/s (shared encoder + vmapped head vs R
# sequential full passes), peak GPU memory. At full paper size by default: 224x224x8 clips, width
# 1.0, 24 classes, R=10. Prints one Markdown table last; writes $OUT/device_check.json if OUT is set.
#
# Usage (from anywhere; extra flags go to launch/device_check.py):
#   launch/device_check.sh                                     # paper size, on the GPU
#   launch/device_check.sh --frame_size=64 --width=0.25 --repeats=2   # small, e.g. on a CPU
#   ALLOW_CPU=1 launch/device_check.sh --frame_size=64 --width=0.25 --repeats=2
#
# Environment it needs: a standard CUDA JAX image (python3 with jax, jaxlib[cuda] and numpy), plus
# the project's pure-Python modules flax, ml_collections and absl-py (and what flax imports: etils,
# rich, pygments, markdown-it-py, mdurl, msgpack, PyYAML, typing_extensions, treescope). Nothing
# else: no orbax, optax or tensorflow-datasets, and the project itself runs from this checkout
# (PYTHONPATH), without pip install. When the image lacks some of them and has no network, carry
# wheels with the checkout: on a machine with network, for the image's Python version (e.g. 3.12),
#   pip download --dest launch/wheels --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --no-deps flax ml-collections absl-py etils rich pygments \
#       markdown-it-py mdurl msgpack PyYAML typing_extensions treescope cloudpickle filelock
# (pick a flax release that supports the image's jax), and the script installs them with
#   pip install --no-index --find-links launch/wheels <missing modules>
# launch/wheels/ is not committed (binary files); copy it next to this script before the check.
#
# Time: a hard limit of LIMIT_S seconds (default 470) on the Python run; every measurement is
# bounded by --budget_s, and the JSON is rewritten after each, so a run cut short still reports.
set -euo pipefail

die() { echo "device_check.sh: $*" >&2; exit 2; }

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PYTHON=${PYTHON:-python3}
LIMIT_S=${LIMIT_S:-470}
command -v "$PYTHON" >/dev/null || die "no '$PYTHON' on PATH; set PYTHON=..."
command -v timeout >/dev/null || die "coreutils 'timeout' is missing."

"$PYTHON" -c "import jax, numpy" 2>/dev/null ||
  die "'$PYTHON' cannot import jax and numpy; use a CUDA JAX image (pip install 'jax[cuda12]')."

missing=()
for pair in flax:flax ml_collections:ml-collections absl:absl-py; do
  "$PYTHON" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  [[ -d $HERE/wheels ]] || die "missing Python packages: ${missing[*]}; carry them as wheels in \
launch/wheels (see the header of this script) or pip install them."
  echo "== installing ${missing[*]} from launch/wheels (no network)"
  "$PYTHON" -m pip install -q --no-index --find-links "$HERE/wheels" "${missing[@]}" ||
    die "pip could not install ${missing[*]} from launch/wheels; add the wheels they depend on."
fi

if [[ ${ALLOW_CPU:-0} != 1 ]]; then
  "$PYTHON" - <<'EOF' || die "JAX sees no GPU (set ALLOW_CPU=1 for a small CPU run)."
import sys
import jax
if jax.default_backend() != "gpu":
  sys.exit(f"JAX backend is {jax.default_backend()!r}: {jax.devices()}")
d = jax.devices()[0]
print(f"== {jax.device_count()} GPU(s); measuring on {d.device_kind}, jax {jax.__version__}")
EOF
fi

cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# Large allocations are measured, not pre-reserved: report the allocator's real peak.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
rc=0
timeout --signal=TERM --kill-after=10 "$LIMIT_S" "$PYTHON" "$HERE/device_check.py" "$@" || rc=$?
if [[ $rc == 124 || $rc == 137 ]]; then
  echo "device_check.sh: stopped after ${LIMIT_S} s; the JSON holds the measurements done so far." >&2
fi
exit "$rc"
