#!/usr/bin/env bash
# The paper's J-HMDB-21 run on one GPU: prepare the dataset once, then run (or resume) CLAUS.
#
# Usage:
#   launch/gpu.sh DATA_ROOT [WORKDIR] [-- extra flags for claus_jax.main]
#   launch/gpu.sh /data/jhmdb runs/jhmdb_paper -- --config.model.dtype=bfloat16
#
# Expects:
#   DATA_ROOT  the official J-HMDB-21 layout (Rename_Images/ or ReCompress_Videos/, puppet_mask/,
#              splits/), see claus_jax/data/jhmdb.py.
#   WORKDIR    output folder (default runs/jhmdb); rerunning the same command resumes it.
#   python     with claus_jax installed (pip install -e .) and a CUDA build of jaxlib
#              (pip install -U "jax[cuda12]"); override the interpreter with PYTHON=...
#   one visible NVIDIA GPU (CUDA_VISIBLE_DEVICES picks it).
# Environment: CLAUS_TFDS_DIR (prepared data, default ~/.cache/claus_jax/tfds), SPLIT (J-HMDB split,
# default 1), DTYPE (float32 | bfloat16, default float32 = the paper), CONFIG (default
# configs/jhmdb.py).
set -euo pipefail

die() { echo "gpu.sh: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || die "usage: launch/gpu.sh DATA_ROOT [WORKDIR] [-- extra flags]"
DATA_ROOT=$1
shift
WORKDIR=runs/jhmdb
if [[ $# -ge 1 && $1 != "--" ]]; then
  WORKDIR=$1
  shift
fi
if [[ $# -ge 1 && $1 == "--" ]]; then
  shift
fi
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/jhmdb.py}
SPLIT=${SPLIT:-1}
DTYPE=${DTYPE:-float32}

cd "$(dirname "$0")/.."
[[ -d $DATA_ROOT ]] || die "DATA_ROOT '$DATA_ROOT' is not a directory; unpack J-HMDB-21 there."
[[ -d $DATA_ROOT/puppet_mask && -d $DATA_ROOT/splits ]] ||
  die "'$DATA_ROOT' lacks puppet_mask/ or splits/; expected the official J-HMDB-21 layout."
[[ -d $DATA_ROOT/Rename_Images || -d $DATA_ROOT/ReCompress_Videos ]] ||
  die "'$DATA_ROOT' has neither Rename_Images/ nor ReCompress_Videos/ (the frames)."
[[ $DTYPE == float32 || $DTYPE == bfloat16 ]] || die "DTYPE must be float32 or bfloat16, not '$DTYPE'."
command -v "$PYTHON" >/dev/null || die "no '$PYTHON' on PATH; set PYTHON=/path/to/venv/bin/python."
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver on this machine."
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi sees no GPU (driver or CUDA_VISIBLE_DEVICES)."
"$PYTHON" - <<'EOF' || die "JAX does not see a GPU; install a CUDA jaxlib: pip install -U 'jax[cuda12]'."
import sys
import jax
gpus = [d for d in jax.devices() if d.platform == "gpu"]
if not gpus:
  sys.exit(f"JAX backend is {jax.default_backend()!r}, devices {jax.devices()}")
print(f"JAX {jax.__version__}: {len(gpus)} GPU(s), using {gpus[0].device_kind}")
EOF
"$PYTHON" -c "import claus_jax" 2>/dev/null || die "claus_jax is not importable; run: pip install -e ."

FLAGS=(--config="$CONFIG" --config.data.root="$DATA_ROOT" --config.data.split="$SPLIT"
       --config.model.dtype="$DTYPE")
echo "== prepare J-HMDB-21 split $SPLIT (once; later runs only print the report)"
"$PYTHON" -m claus_jax.prepare --config="$CONFIG" --config.data.root="$DATA_ROOT" \
  --config.data.split="$SPLIT"
echo "== CLAUS active learning in $WORKDIR"
mkdir -p "$WORKDIR"
exec "$PYTHON" -m claus_jax.main "${FLAGS[@]}" --workdir="$WORKDIR" "$@"
