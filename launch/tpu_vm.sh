#!/usr/bin/env bash
# CLAUS on a Cloud TPU VM pod slice: copy this checkout to every worker, optionally install, prepare
# the dataset once, then start the same program on all workers (gcloud --worker=all). JAX finds the
# other workers itself (jax.distributed on TPU); one 1-D 'data' mesh spans all chips.
#
# Usage:
#   launch/tpu_vm.sh TPU_NAME ZONE DATA_ROOT WORKDIR [-- extra flags for claus_jax.main]
#   SETUP=1 launch/tpu_vm.sh my-v4-32 us-central2-b gs://my-bucket/ucf24 gs://my-bucket/runs/ucf
#
# Expects:
#   gcloud, authenticated, with a TPU VM named TPU_NAME in ZONE (PROJECT=... picks the project).
#   DATA_ROOT  the dataset's official layout, readable by every worker: either a path on a disk
#              mounted at the same place on all workers (read-only persistent disk, Filestore/NFS),
#              or gs://BUCKET/PATH, which is mounted on every worker with gcsfuse (must be installed
#              on the workers' image).
#   WORKDIR    shared by every worker, the same way (shared path or gs://...): checkpoints are
#              written collectively by all workers and resumed from there.
#   On the workers: python3 with pip; SETUP=1 installs jax[tpu] and this project (pip install -e .).
# Environment: CONFIG (default configs/ucf101_24.py), PROJECT, REMOTE_DIR (checkout on the workers,
# default claus_jax under the remote home), TFDS_DIR (prepared data, shared; default
# WORKDIR/../tfds), SETUP=1, SKIP_PREPARE=1, DRY_RUN=1 (print the gcloud commands, run nothing).
set -euo pipefail

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

[[ $# -ge 4 ]] || die "usage: launch/tpu_vm.sh TPU_NAME ZONE DATA_ROOT WORKDIR [-- extra flags]"
TPU_NAME=$1 ZONE=$2 DATA_ROOT=$3 WORKDIR=$4
shift 4
if [[ $# -ge 1 && $1 == "--" ]]; then
  shift
fi
EXTRA=("$@")
CONFIG=${CONFIG:-configs/ucf101_24.py}
REMOTE_DIR=${REMOTE_DIR:-claus_jax}
DRY_RUN=${DRY_RUN:-0}
cd "$(dirname "$0")/.."
[[ -f $CONFIG ]] || die "CONFIG '$CONFIG' does not exist in this checkout."
[[ -n $DATA_ROOT && -n $WORKDIR ]] || die "DATA_ROOT and WORKDIR must not be empty."
[[ $DATA_ROOT == gs://* || $DATA_ROOT == /* ]] ||
  die "DATA_ROOT '$DATA_ROOT' must be gs://... or an absolute path mounted on every worker."
[[ $WORKDIR == gs://* || $WORKDIR == /* ]] ||
  die "WORKDIR '$WORKDIR' must be gs://... or an absolute path shared by every worker."
command -v git >/dev/null || die "git is needed to pack this checkout."

GCLOUD=(gcloud compute tpus tpu-vm)
ZONE_ARGS=(--zone="$ZONE")
if [[ -n ${PROJECT:-} ]]; then
  ZONE_ARGS+=(--project="$PROJECT")
fi
run() {  # Runs (or, with DRY_RUN=1, prints) one local command.
  if [[ $DRY_RUN == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}
on_workers() {  # on_workers WORKER COMMAND: one shell command on the TPU workers (all or 0).
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${ZONE_ARGS[@]}" --worker="$1" --command="$2"
}

if [[ $DRY_RUN != 1 ]]; then
  command -v gcloud >/dev/null ||
    die "gcloud not found; install the Google Cloud SDK and run 'gcloud auth login'."
  "${GCLOUD[@]}" describe "$TPU_NAME" "${ZONE_ARGS[@]}" --format='value(state)' >/dev/null ||
    die "TPU VM '$TPU_NAME' not found in zone $ZONE (check PROJECT, ZONE and 'gcloud auth list')."
  workers=$("${GCLOUD[@]}" describe "$TPU_NAME" "${ZONE_ARGS[@]}" \
    --format='value(networkEndpoints.len())')
  echo "== $TPU_NAME: ${workers:-?} worker(s)"
fi

# gs:// paths are mounted with gcsfuse at the same place on every worker.
mount_point() { echo "/tmp/claus_mnt/$(echo "${1#gs://}" | cut -d/ -f1)"; }
local_path() {
  if [[ $1 == gs://* ]]; then
    local rest=${1#gs://}
    if [[ $rest == */* ]]; then
      echo "$(mount_point "$1")/${rest#*/}"
    else
      mount_point "$1"
    fi
  else
    echo "$1"
  fi
}
MOUNTS=""
SEEN=" "
for p in "$DATA_ROOT" "$WORKDIR" "${TFDS_DIR:-}"; do
  bucket=$(echo "${p#gs://}" | cut -d/ -f1)
  if [[ $p == gs://* && $SEEN != *" $bucket "* ]]; then
    SEEN+="$bucket "
    mp=$(mount_point "$p")
    MOUNTS+="command -v gcsfuse >/dev/null || { echo 'gcsfuse missing on this worker' >&2; exit 2; }; "
    MOUNTS+="mkdir -p $mp; mountpoint -q $mp || gcsfuse --implicit-dirs $bucket $mp; "
  fi
done
DATA=$(local_path "$DATA_ROOT")
WORK=$(local_path "$WORKDIR")
TFDS=$(local_path "${TFDS_DIR:-$(dirname "$WORKDIR")/tfds}")

echo "== copy this checkout (tracked files) to $REMOTE_DIR on every worker"
archive=$(mktemp /tmp/claus_src.XXXXXX.tgz)
trap 'rm -f "$archive"' EXIT
git ls-files -z | tar --null -czf "$archive" -T -
run "${GCLOUD[@]}" scp "$archive" "$TPU_NAME:claus_src.tgz" "${ZONE_ARGS[@]}" --worker=all
on_workers all "mkdir -p $REMOTE_DIR && tar xzf claus_src.tgz -C $REMOTE_DIR"

if [[ ${SETUP:-0} == 1 ]]; then
  echo "== install jax[tpu] and the project on every worker"
  on_workers all "cd $REMOTE_DIR && python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q -e ."
fi

ENV="export CLAUS_TFDS_DIR=$(printf %q "$TFDS");"
if [[ ${SKIP_PREPARE:-0} != 1 ]]; then
  echo "== prepare the dataset once (worker 0) into $TFDS"
  on_workers 0 "$MOUNTS $ENV cd $REMOTE_DIR && python3 -m claus_jax.prepare \
--config=$CONFIG --config.data.root=$(printf %q "$DATA")"
fi

echo "== run on all workers; logs: ~/claus_run.log on each worker"
extra=""
if [[ ${#EXTRA[@]} -gt 0 ]]; then
  extra=$(printf '%q ' "${EXTRA[@]}")
fi
on_workers all "$MOUNTS $ENV export CLAUS_DISTRIBUTED=1; cd $REMOTE_DIR && \
python3 launch/multihost_main.py --config=$CONFIG --config.data.root=$(printf %q "$DATA") \
--config.train.data_parallel=True --workdir=$(printf %q "$WORK") $extra 2>&1 | tee -a ~/claus_run.log"
