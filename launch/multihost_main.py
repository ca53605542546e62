"""``claus_jax.main`` for multi-process runs: starts ``jax.distributed`` first, then runs the job.

  python launch/multihost_main.py --config=configs/ucf101_24.py --workdir=/shared/runs/ucf [...]

Same flags as ``python -m claus_jax.main``. Before any JAX computation it calls
``parallel.initialize_from_config``: explicit ``--config.distributed.*`` fields win; otherwise JAX's
own cluster detection runs when the environment shows a cluster (SLURM with more than one task, TPU
pod workers with CLAUS_DISTRIBUTED=1, JAX_COORDINATOR_ADDRESS); with none it is one process. It then
prints one line per process (rank, devices) so a hung start is easy to locate.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402  (after the path fix, so a plain checkout works)

from claus_jax import cli  # noqa: E402
from claus_jax import main as main_lib  # noqa: E402
from claus_jax import parallel  # noqa: E402


def _main(argv):
  config = main_lib._CONFIG.value  # pylint: disable=protected-access
  parallel.initialize_from_config(config)
  import jax  # pylint: disable=g-import-not-at-top

  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
        f"{jax.device_count()} {jax.default_backend()} devices", flush=True)
  main_lib.main(argv)


if __name__ == "__main__":
  app.run(cli.guarded(_main), flags_parser=cli.parse_flags)
