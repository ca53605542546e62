"""The command line: startup errors are one line naming the file or field, with distinct exit codes."""

import errno
import os
import subprocess
import sys

import pytest

from claus_jax import errors
from claus_jax import experiment
from claus_jax import pool as pool_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, env=None):
  """Runs ``python -m claus_jax.main`` and returns (exit code, stderr lines)."""
  done = subprocess.run([sys.executable, "-m", "claus_jax.main", *args], cwd=ROOT,
                        env={**os.environ, **(env or {})}, capture_output=True, text=True,
                        timeout=300)
  return done.returncode, done.stderr.strip().splitlines()


def test_a_missing_config_file_is_one_line(tmp_path):
  rc, err = _main("--config=configs/nope.py", f"--workdir={tmp_path / 'w'}")
  assert rc == experiment.EXIT_ERROR
  assert err == ["error: --config: no such file 'configs/nope.py' (paths are relative to the "
                 "current folder, e.g. --config=configs/synthetic.py from the repository root)."]
  assert not os.path.exists(tmp_path / "w")


def test_bad_values_and_overrides_are_one_line_and_write_nothing(tmp_path):
  workdir = tmp_path / "w"
  rc, err = _main("--config=configs/synthetic.py:smoke", "--config.train.steps=0",
                  f"--workdir={workdir}")
  assert (rc, err) == (experiment.EXIT_ERROR, ["error: config.train.steps: 0 must be >= 1."])
  rc, err = _main("--config=configs/synthetic.py:smoke", "--config.train.stepz=3",
                  f"--workdir={workdir}")
  assert (rc, err) == (experiment.EXIT_ERROR, [
      "error: --config.train.stepz: no such field 'config.train.stepz'. Did you mean \"steps\" "
      "instead of \"stepz\"?"]), err
  rc, err = _main("--config=configs/synthetic.py:nope", f"--workdir={workdir}")
  assert rc == experiment.EXIT_ERROR and err == [
      "error: --config=configs/synthetic.py:nope: ValueError: configs/synthetic.py: unknown "
      "variant 'nope'; use '', 'smoke' or 'ssl'."], err
  assert not os.path.exists(workdir)


def test_workdir_expands_home_and_a_file_in_the_way_is_named(tmp_path):
  (tmp_path / "taken").write_text("not a folder")
  rc, err = _main("--config=configs/synthetic.py:smoke", "--workdir=~/taken/run",
                  env={"HOME": str(tmp_path)})
  assert (rc, err) == (experiment.EXIT_ERROR, [
      f"error: --workdir: {tmp_path / 'taken'} is a file where a folder is needed; move or delete "
      f"it, or choose another path than {tmp_path / 'taken' / 'run'}."])
  assert not os.path.exists(os.path.join(ROOT, "~"))


def test_user_error_messages():
  # A full disk, however deep it is wrapped (orbax and tensorstore wrap it twice), is one line.
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/round_001/checkpoints/20")
    except OSError as e:
      raise RuntimeError("Checkpoint save failed") from e
  except RuntimeError as wrapped:
    assert errors.user_error_message(wrapped) == (
        "/runs/x/round_001/checkpoints/20: no space left on device (ENOSPC); free space on that "
        "disk and re-run the same command (finished stages and checkpoints are kept).")
  assert errors.user_error_message(ValueError("tensorstore: No space left on device")) == str(
      errors.DiskFullError("the workdir"))
  err = FileExistsError(errno.EEXIST, "File exists", "/runs/x/round_001")
  assert errors.user_error_message(err) == (
      "/runs/x/round_001 is a file where a folder is needed; move or delete it and re-run the "
      "same command.")
  assert errors.user_error_message(pool_lib.StateFileError("x is damaged")) == "x is damaged"
  assert errors.user_error_message(KeyError("a bug")) is None  # Keeps its traceback.


@pytest.mark.parametrize("code", ["EXIT_ERROR", "EXIT_AWAITING_ANSWERS"])
def test_exit_codes_are_distinct_from_success_and_crashes(code):
  assert getattr(experiment, code) not in (0, 1)
  assert experiment.EXIT_ERROR != experiment.EXIT_AWAITING_ANSWERS


def test_a_full_disk_while_checkpointing_names_the_folder(tmp_path):
  from claus_jax import train

  folder = str(tmp_path / "round_000" / "checkpoints")
  with pytest.raises(errors.DiskFullError) as e:
    with train._full_disk_named(folder):  # As tensorstore words it, under orbax's wrapper.
      try:
        raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": Failed to write 8504 '
                         "bytes to file 5: No space left on device [os_error_code='28']")
      except ValueError as inner:
        raise RuntimeError("Save Finalize thread (save_finalize) failed.") from inner
  assert str(e.value).startswith(f"{folder}: no space left on device (ENOSPC);")
  with pytest.raises(KeyError):  # Anything else passes unchanged.
    with train._full_disk_named(folder):
      raise KeyError("a bug")


def test_the_echoes_of_a_failed_checkpoint_are_dropped_and_other_logs_kept():
  import logging

  experiment.quiet_library_logs()
  absl_logger = logging.getLogger("absl")

  def record(level, path):
    return logging.LogRecord("absl", level, path, 1, "message", None, None)

  orbax = os.path.join(os.sep, "venv", "site-packages", "orbax", "checkpoint", "future.py")
  ours = os.path.join(ROOT, "claus_jax", "data", "official.py")
  assert not absl_logger.filter(record(logging.ERROR, orbax))
  assert absl_logger.filter(record(logging.WARNING, orbax))  # Orbax's warnings stay.
  assert absl_logger.filter(record(logging.ERROR, ours))
  assert logging.getLogger("asyncio").level == logging.CRITICAL


def test_status_lines_reach_the_console_and_library_chatter_does_not():
  import logging

  from absl import logging as absl_logging

  experiment.quiet_library_logs()
  absl_logger = logging.getLogger("absl")
  assert absl_logger.isEnabledFor(logging.INFO)  # Status lines are absl INFO records.

  def record(level, path):
    return logging.LogRecord("absl", level, path, 1, "message", None, None)

  venv = os.path.join(os.sep, "venv", "site-packages")
  for where in (absl_logger, absl_logging.get_absl_handler()):
    assert where.filter(record(logging.INFO, os.path.join(ROOT, "claus_jax", "experiment.py")))
    assert not where.filter(record(logging.INFO, os.path.join(venv, "orbax", "checkpoint", "x.py")))
    assert not where.filter(record(logging.INFO, os.path.join(venv, "tensorflow_datasets", "a.py")))
    # A checkout whose folder is named claus_jax is not the package: its venv's chatter stays out.
    assert not where.filter(record(logging.INFO, os.path.join(os.sep, "claus_jax", ".venv", "lib",
                                                              "tensorflow_datasets", "y.py")))
    assert where.filter(record(logging.WARNING, os.path.join(venv, "jax", "z.py")))


def test_the_run_logs_its_status_lines_on_stderr(tmp_path):
  """absl.app writes absl logging to stderr; stdout keeps the command's own output."""
  script = tmp_path / "say.py"
  script.write_text("from absl import app\n"
                    "from claus_jax import experiment\n"
                    "from claus_jax import rounds\n"
                    "def main(argv):\n"
                    "  experiment.quiet_library_logs()\n"
                    "  rounds.say('round 0: a status line')\n"
                    "  print('| the results table |')\n"
                    "app.run(main)\n")
  done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "round 0: a status line" in done.stderr and "status line" not in done.stdout
  assert done.stdout == "| the results table |\n"
