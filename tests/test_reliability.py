"""Faults a user can cause, met where the user meets them: one line, exit 2, nothing lost.

Each case was a traceback, a hang or a silent wrong result before (issue 31's trials).
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from claus_jax import errors
from claus_jax import experiment
from claus_jax import models
from claus_jax import pretrain
from claus_jax import runlock
from claus_jax.data import tfds_store
from tests.test_tfds_store import _record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(module, *args, env=None):
  done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                        env={**os.environ, **(env or {})}, capture_output=True, text=True,
                        timeout=300)
  return done.returncode, done.stderr.strip().splitlines()


@pytest.mark.parametrize("module", ["claus_jax.main", "claus_jax.pretrain", "claus_jax.score",
                                    "claus_jax.prepare"])
def test_a_config_file_that_fails_to_import_or_to_run_is_one_line(module, tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n  pass\n")
  raising = tmp_path / "raising.py"
  raising.write_text("def get_config():\n  return undefined_name\n")
  rc, err = _cli(module, f"--config={broken}")
  assert (rc, err) == (2, [f"error: {broken}:1: SyntaxError: invalid syntax; fix the config file."])
  rc, err = _cli(module, f"--config={raising}")
  assert (rc, err) == (2, [f"error: --config={raising}: NameError: name 'undefined_name' is not "
                           "defined (set CLAUS_DEBUG=1 for the traceback)."])
  rc, err = _cli(module, f"--config={raising}", env={"CLAUS_DEBUG": "1"})
  assert rc == 1 and err[0].startswith("Traceback") and err[-1].startswith("NameError")


def test_an_unknown_override_names_the_full_field_in_plain_text(tmp_path):
  rc, err = _cli("claus_jax.main", "--config=configs/synthetic.py:smoke", "--config.train.stepz=3",
                 f"--workdir={tmp_path / 'w'}")
  assert (rc, err) == (2, ["error: --config.train.stepz: no such field 'config.train.stepz'. "
                           'Did you mean "steps" instead of "stepz"?'])
  rc, err = _cli("claus_jax.main", "--config=configs/synthetic.py:smoke", "--config.trainx.steps=3",
                 f"--workdir={tmp_path / 'w'}")
  assert (rc, err) == (2, ["error: --config.trainx.steps: no such field 'config.trainx'. "
                           'Did you mean "train" instead of "trainx"?'])
  assert not (tmp_path / "w").exists()


def test_prepare_exits_2_like_main():
  rc, err = _cli("claus_jax.prepare", "--config=configs/synthetic.py")
  assert rc == 2 and len(err) == 1 and err[0].startswith("error: config.dataset='synthetic'")


def test_a_second_run_on_a_busy_workdir_stops_at_once_naming_the_holder(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  with runlock.hold(str(workdir)):
    holder = json.loads((workdir / runlock.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    rc, err = _cli("claus_jax.main", "--config=configs/synthetic.py:smoke", f"--workdir={workdir}")
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith(f"error: {workdir} is in use by another run (pid {os.getpid()} on host "
                           f"{socket.gethostname()}, since ")
  assert sorted(os.listdir(workdir)) == [runlock.LOCK_FILE]  # The second run wrote nothing.


def test_the_lock_of_a_killed_run_is_taken_over_not_waited_on(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys, time
      from claus_jax import runlock
      with runlock.hold({str(tmp_path)!r}):
        print("held", flush=True)
        time.sleep(600)
      """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(runlock.WorkdirBusyError, match=f"pid {holder.pid} "):
      with runlock.hold(str(tmp_path)):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  finally:
    holder.kill()
  with runlock.hold(str(tmp_path)):  # The dead run's lock file is still there; its lock is not.
    assert json.loads((tmp_path / runlock.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_cluster_start_that_can_never_come_is_refused_before_compute(tmp_path):
  rc, err = _cli("claus_jax.main", "--config=configs/synthetic.py:smoke",
                 "--config.cluster.start_step=1000", f"--workdir={tmp_path / 'w'}")
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith("error: config.cluster.start_step: 1000 is not below train.steps=20, so "
                           "k-means never runs")
  assert not (tmp_path / "w").exists()


def test_an_unwritable_folder_is_one_line_naming_it():
  wrapped = RuntimeError("orbax: could not write")
  wrapped.__cause__ = PermissionError(errno.EACCES, "Permission denied", "/runs/x/round_000/a.tmp")
  message = errors.user_error_message(wrapped)
  assert message.startswith("/runs/x/round_000/a.tmp: permission denied. Choose a folder")


def _fake_pretrained(directory):
  import numpy as np
  models.save_encoder_variables({"params": {"w": np.arange(4096, dtype=np.float32)},
                                 "batch_stats": {"m": np.ones(3, np.float32)}}, str(directory))
  (directory / pretrain.RESULT_FILE).write_text("{}")


def test_a_damaged_pretrained_cache_is_set_aside_and_rebuilt(tmp_path):
  cache = tmp_path / "synthetic_64px_w0.25_abc"
  _fake_pretrained(cache)
  logs = []
  assert pretrain._readable_or_set_aside(str(cache), logs.append)  # pylint: disable=protected-access
  for dirpath, _, files in os.walk(cache / models.ENCODER_VARIABLES_SUBDIR):
    for f in files:
      path = os.path.join(dirpath, f)
      if f"{os.sep}d{os.sep}" in path:
        with open(path, "r+b") as fh:
          fh.truncate(8)
  with pytest.raises(models.EncoderInitError, match="cannot be read .* damaged or incomplete"):
    models.read_encoder_variables(str(cache))
  assert not pretrain._readable_or_set_aside(str(cache), logs.append)  # pylint: disable=protected-access
  aside = [d for d in os.listdir(tmp_path) if d.startswith(cache.name + ".damaged-")]
  assert not cache.exists() and len(aside) == 1  # Kept for inspection; the next run pretrains.
  assert "pretraining again with the same settings" in logs[-1]
  assert errors.user_error_message(models.EncoderInitError("x")) == "x"


def test_a_killed_generation_leaves_no_incomplete_folder_behind(tmp_path):
  def build():
    return tfds_store.make_builder(name="claus_unit", version="1.0.0", config_name="cfg",
                                   generate_records=lambda split: iter([_record(1, 3, 1)]),
                                   class_names=("a",), data_dir=str(tmp_path))
  builder = build()
  parent = os.path.dirname(str(builder.data_dir))
  stale = os.path.join(parent, "incomplete.AB12CD_1.0.0")
  os.makedirs(os.path.join(stale, "part"))  # What a SIGKILL during generation leaves.
  assert tfds_store.prepare(builder)
  assert sorted(os.listdir(parent)) == ["1.0.0"]
  assert not tfds_store.prepare(build())  # Prepared: nothing generated again.


def test_one_cluster_for_claus_is_refused_naming_the_field(tmp_path):
  rc, err = _cli("claus_jax.main", "--config=configs/synthetic.py:smoke", "--config.cluster.k=1",
                 f"--workdir={tmp_path / 'w'}")
  assert rc == 2 and err == ["error: config.cluster.k: 1 cluster turns CLAUS's cluster quotas into "
                             "one global top-n, which is selection.strategy=claus_no_cluster under "
                             "another name; use K >= 2 (paper: 5), or choose claus_no_cluster."]


def test_a_cluster_start_past_an_epoch_sized_round_is_refused_when_the_round_is_known():
  from claus_jax import configlib
  from claus_jax import train as train_lib
  from tests.config_files import load_config
  c = load_config("synthetic", "smoke")
  c.train.epochs, c.cluster.start_step = 2.0, 50
  configlib.validate(c)  # The round's steps are not known before its labelled set is.
  assert train_lib.cluster_start_step(train_lib.TrainParams.from_config(c), 51) == 50
  with pytest.raises(configlib.ConfigError, match="config.cluster.start_step: 50 is not below this "
                     "round's 50 steps"):
    train_lib.cluster_start_step(train_lib.TrainParams.from_config(c), 50)


@pytest.mark.slow
def test_the_pretrain_command_rebuilds_a_damaged_cache(tmp_path):
  args = ["--config=configs/synthetic.py:smoke", "--config.pretrain.steps=2",
          "--config.pretrain.batch_size=2", "--config.pretrain.val_clips=2",
          "--config.train.bn_recalibration_batches=1", f"--config.pretrain.cache_dir={tmp_path}"]
  rc, err = _cli("claus_jax.pretrain", *args)
  assert rc == 0, err[-5:]
  (cache,) = os.listdir(tmp_path)
  for dirpath, _, files in os.walk(tmp_path / cache / models.ENCODER_VARIABLES_SUBDIR):
    for f in files:
      if f"{os.sep}d{os.sep}" in os.path.join(dirpath, f):
        with open(os.path.join(dirpath, f), "r+b") as fh:
          fh.truncate(8)  # The array data cut short, as a full disk or a kill leaves it.
  rc, err = _cli("claus_jax.pretrain", *args)
  assert rc == 0, err[-5:]
  assert any("damaged or incomplete" in line and "pretraining again" in line for line in err)
  assert sorted(os.listdir(tmp_path))[0] == cache and len(os.listdir(tmp_path)) == 2
  models.read_encoder_variables(str(tmp_path / cache))  # Rebuilt, whole.


def test_a_workdir_recorded_before_a_field_existed_resumes_at_the_fields_earlier_behaviour(tmp_path):
  """config.json written before uncertainty.source existed: the same run resumes (the new field at
  the value that behaves as before), a run that changes it is refused naming it."""
  from claus_jax import configlib
  from claus_jax import provenance

  defaults = provenance.flat_config(configlib.to_dict(configlib.base_config()), ())
  for field, value in provenance.LATER_FIELDS.items():
    assert defaults[field] == value, field  # The schema's default is the earlier behaviour.
  config = configlib.base_config()
  old = json.loads(json.dumps(configlib.to_dict(config)))
  for field in ("source", "noise_amplitude", "noise_threshold", "noise_min_mass"):
    del old["uncertainty"][field]
  (tmp_path / "config.json").write_text(json.dumps(old))
  experiment.check_or_write_config(config, str(tmp_path))
  config.uncertainty.source = "noise"
  with pytest.raises(experiment.WorkdirMismatchError,
                     match="uncertainty.source: workdir has '<absent>', this run has 'noise'"):
    experiment.check_or_write_config(config, str(tmp_path))
