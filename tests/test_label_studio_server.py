"""The human loop through a real Label Studio server (slow): export, annotate through its API as an
annotator would, export from the server, import, and resume; the run must equal the simulated
oracle's.

The server is the ``label-studio`` package in a virtual environment of its own (its pinned Django
stack stays out of ours), created once under ``~/.cache/claus_jax/label-studio-<version>`` with
every dependency pinned by ``tests/label_studio_constraints.txt`` (or ``$CLAUS_LABEL_STUDIO`` names
its ``label-studio`` executable). It runs on localhost with a
temporary SQLite data folder, started and stopped here; we talk to it over plain HTTP.

The data are the UCF-101-24 fixture (64 x 48 original frames, prepared at 32 x 32), one actor per
video: Label Studio's boxes are one actor each, and a frame answered by one box is the simulated
oracle's ground truth exactly (several actors on a frame become one mask, see claus_jax.annotation).
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import fixtures_datasets as fx
from claus_jax import experiment
from claus_jax import rounds
from tests.config_files import load_config
from tests.test_annotation import _annotator

pytestmark = pytest.mark.slow  # Both start runs; the first a server too.

VERSION = "1.23.2"
TOKEN = "0123456789abcdef0123456789abcdef01234567"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Its dependencies pinned: an unbounded one (sentry-sdk 3) once kept the server from starting.
CONSTRAINTS = os.path.join(ROOT, "tests", "label_studio_constraints.txt")


def label_studio_executable() -> str:
  exe = os.environ.get("CLAUS_LABEL_STUDIO")
  if exe:
    return exe
  cache = os.path.expanduser(os.environ.get("CLAUS_CACHE_DIR") or "~/.cache/claus_jax")
  venv = os.path.join(cache, f"label-studio-{VERSION}")
  exe = os.path.join(venv, "bin", "label-studio")
  with open(CONSTRAINTS, "rb") as f:
    pinned = hashlib.sha256(f.read()).hexdigest()
  done = os.path.join(venv, ".installed")
  if not os.path.exists(done) or open(done).read() != pinned:  # Rebuilt when the pins change.
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", f"label-studio=={VERSION}",
                    "-c", CONSTRAINTS], check=True, timeout=1800)
    with open(done, "w") as f:
      f.write(pinned)
  return exe


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """Label Studio on localhost, as an annotation team's server with one annotator."""

  def __init__(self, exe: str, data_dir: str, document_root: str):
    self.url = f"http://127.0.0.1:{_free_port()}"
    env = dict(os.environ, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
               LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
               LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=document_root)
    os.makedirs(data_dir, exist_ok=True)
    self.log = open(os.path.join(data_dir, "server.log"), "w")
    self.process = subprocess.Popen(
        [exe, "start", "--no-browser", "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1],
         "--data-dir", data_dir, "--username", "annotator@example.com", "--password", "annotate1",
         "--user-token", TOKEN], env=env, stdout=self.log, stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.time() + 600
    while True:
      try:
        self.get("/api/projects")
        return
      except (urllib.error.URLError, ConnectionError):
        if self.process.poll() is not None or time.time() > deadline:
          self.stop()
          raise RuntimeError("Label Studio did not start; see " + self.log.name)
        time.sleep(2)

  def _call(self, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(self.url + path, data=data, method=method, headers={
        "Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
      raise AssertionError(f"{method} {path}: HTTP {e.code}: {e.read()[:2000]!r}") from None

  def get(self, path):
    return self._call("GET", path)

  def post(self, path, body):
    return self._call("POST", path, body)

  def stop(self):
    if self.process.poll() is None:
      os.killpg(self.process.pid, 15)
      try:
        self.process.wait(30)
      except subprocess.TimeoutExpired:
        os.killpg(self.process.pid, 9)
    self.log.close()


def _single_actor_videos():
  out = []
  for v in fx.ucf_videos():
    if v.name == "v_Biking_g01_c01":  # Two actors: keep the first one only.
      v.rects = [[r[0]] for r in v.rects]
    out.append(v)
  return out


def _annotate_round(server, workdir, round_index, env, config_flags, videos):
  """One round through Label Studio; returns the tasks' prediction counts."""
  rd = rounds.round_dir(workdir, round_index)
  cmd = [sys.executable, "-m", "claus_jax.annotate", *config_flags, f"--workdir={workdir}"]
  done = subprocess.run(cmd + ["export"], env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  out = os.path.join(rd, "label_studio")
  with open(os.path.join(out, "label_config.xml")) as f:
    project = server.post("/api/projects", {"title": f"round {round_index}",
                                            "label_config": f.read()})
  with open(os.path.join(out, "tasks.json")) as f:
    server.post(f"/api/projects/{project['id']}/import", json.load(f))
  tasks = server.get(f"/api/projects/{project['id']}/tasks?page_size=1000")
  tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
  by_id = {v.video_id: v for v in videos}
  for task in tasks:  # The annotator: the fixture's original rectangles.
    server.post(f"/api/tasks/{task['id']}/annotations",
                {"result": _annotator(task, by_id[task["data"]["video_id"]])})
  exported = server.get(f"/api/projects/{project['id']}/export?exportType=JSON")
  path = os.path.join(out, "export.json")
  with open(path, "w") as f:
    json.dump(exported, f)
  done = subprocess.run(cmd + ["import", "--tool=label_studio", f"--file={path}"], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "re-run the main command" in done.stdout
  return [t.get("total_predictions", 0) for t in tasks]


def test_label_studio_round_trip_equals_the_simulated_oracle(tmp_path, monkeypatch):
  from tests.test_experiment import _outcome

  root = str(tmp_path / "ucf24")
  videos = fx.write_ucf(root, _single_actor_videos())
  tfds = str(tmp_path / "tfds")
  monkeypatch.setenv("CLAUS_TFDS_DIR", tfds)
  monkeypatch.setenv("CLAUS_DATA_DIR", root)

  def config(kind):
    c = load_config("ucf101_24", "tiny")
    c.quiet = True
    c.oracle.kind = kind
    # Round 0 labels one of the 3 training videos, round 1 all of them: both rounds ask people.
    c.budget.initial_videos_pct, c.budget.schedule = 34.0, ((20.0, 100.0),)
    return c

  reference = str(tmp_path / "simulated")
  experiment.run(config("simulated"), reference)
  server = Server(label_studio_executable(), str(tmp_path / "ls"), root)
  try:
    workdir = str(tmp_path / "label_studio")
    env = dict(os.environ, CLAUS_TFDS_DIR=tfds, CLAUS_DATA_DIR=root)
    flags = ["--config=configs/ucf101_24.py:tiny", "--config.oracle.kind=files",
             "--config.budget.initial_videos_pct=34", "--config.budget.schedule=((20.0,100.0),)"]
    predictions = []
    for r in range(2):  # Round 0 (the random start) and round 1 (CLAUS's picks).
      assert experiment.run(config("files"), workdir) == {"awaiting_answers": True}
      predictions.append(_annotate_round(server, workdir, r, env, flags, videos))
    experiment.run(config("files"), workdir)
  finally:
    server.stop()
  assert not any(predictions[0])  # Round 0's videos are random: no model yet.
  assert len(predictions[1]) == 2 and all(n == 1 for n in predictions[1])  # Boxes to correct.
  assert _outcome(workdir) == _outcome(reference)


def test_a_round_that_requests_nothing_does_not_wait_for_people(tmp_path, monkeypatch):
  """The tiny UCF config's round 1 buys nothing: the files oracle's run goes on to the end."""
  from tests.test_experiment import _answer_from_ground_truth, _outcome
  from claus_jax import data as data_lib

  root = str(tmp_path / "ucf24")
  fx.write_ucf(root)
  monkeypatch.setenv("CLAUS_TFDS_DIR", str(tmp_path / "tfds"))
  monkeypatch.setenv("CLAUS_DATA_DIR", root)
  config = load_config("ucf101_24", "tiny")
  config.quiet = True
  reference = str(tmp_path / "simulated")
  experiment.run(config, reference)
  config.oracle.kind = "files"
  workdir = str(tmp_path / "files")
  assert experiment.run(config, workdir) == {"awaiting_answers": True}
  _answer_from_ground_truth(rounds.round_dir(workdir, 0), data_lib.get_dataset(config))
  assert experiment.run(config, workdir) != {"awaiting_answers": True}
  with open(os.path.join(rounds.round_dir(workdir, 1), "requests.json")) as f:
    assert json.load(f)["videos"] == []
  assert _outcome(workdir) == _outcome(reference)
