"""The `mpc-jax` command as a newcomer meets it: run from another folder with relative paths; every run
must end with the expected exit status (0 ok, 1 failure, 2 usage) and no traceback. The entry point,
help, version and training run as subprocesses; predict, eval and convert run in this process."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
VERSION = re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text()).group(1)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_testlib import TINY_HRFORMER, timeout_s  # noqa: E402


def cli(cwd, *args, timeout=1800):
  """`mpc-jax ARGS` in `cwd` (the worktree's package first on the path); asserts no traceback.
  `timeout`: the base limit in seconds (`train_testlib.timeout_s` scales it)."""
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    JAX_COMPILATION_CACHE_DIR=os.environ.get(
      "MPC_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "mpc_jax_test_cache")
    ),
  )
  r = subprocess.run(
    [sys.executable, "-m", "mpc_jax.main", *map(str, args)],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout_s(timeout),
  )
  assert "Traceback" not in r.stderr + r.stdout, r.stderr
  return r


@pytest.fixture
def cli_here(capfd, monkeypatch):
  """`mpc-jax ARGS` run in this process (`mpc_jax.main.run`) from folder `cwd`, with what a subprocess
  would give: exit status, stdout, stderr (file-descriptor level) and no traceback. The commands whose
  programs the tests compile anyway (predict, eval, convert) run here, where JAX is already loaded;
  each subprocess start costs seconds."""
  from mpc_jax import main

  def run(cwd, *args):
    monkeypatch.chdir(cwd)
    capfd.readouterr()
    try:
      code = main.run([str(a) for a in args])
    except SystemExit as e:  # argparse's own usage errors
      code = e.code
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, err
    return subprocess.CompletedProcess(args, code, out, err)

  return run


def one_line(text):
  lines = [ln for ln in text.splitlines() if ln.strip()]
  assert len(lines) == 1, text
  return lines[0]


def _win4(cfg):
  cfg = json.loads(json.dumps(cfg))
  for stage in ("STAGE2", "STAGE3", "STAGE4"):
    cfg[stage]["NUM_WINDOW_SIZES"] = [4] * cfg[stage]["NUM_BRANCHES"]
  return cfg


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
  """A user's folder: two saved models of the tests' tiny HRFormer (trained at 64 px: stage 2 and a
  stage-1 export), an `hrt_tiny` with 4x4 windows and its PyTorch-keyed export, a dataset folder, a
  large photo, the repo's configs, an empty folder."""
  from mpc_jax.checkpoint import save_model
  from mpc_jax.convert import export_npz, to_torch_state_dict
  from mpc_jax.data.synthetic import write_dataset
  from mpc_jax.models import HRFORMER_CONFIGS, build_mpc

  d = tmp_path_factory.mktemp("user")
  tiny = build_mpc(TINY_HRFORMER, seed=0)
  save_model(tiny, d / "models" / "tiny", training={"input_size": 64, "stage": "stage2"})
  save_model(tiny, d / "models" / "s1", training={"input_size": 64, "stage": "stage1"})
  win4 = build_mpc(_win4(HRFORMER_CONFIGS["hrt_tiny"]), seed=1)
  save_model(win4, d / "models" / "win4")
  export_npz(win4, d / "win4.npz")
  sd = {k: v for k, v in to_torch_state_dict(win4).items() if k.startswith("encoder.")}
  np.savez(d / "backbone.npz", **sd)
  write_dataset(d / "data", 2, seed=0, size=(64, 64), difficulty=0.0, authentic_prob=0.0)
  r = np.random.default_rng(0)
  (d / "big").mkdir()
  cv2.imwrite(
    str(d / "big" / "photo.jpg"), cv2.resize(r.integers(0, 255, (150, 200, 3), dtype=np.uint8), (3000, 2000))
  )
  shutil.copytree(REPO / "configs", d / "configs")
  (d / "empty").mkdir()
  return d


# ------------------------------------------------------------------------------------ help, version
def test_the_program_exits_with_the_commands_status(monkeypatch):
  """`mpc-jax` (`main.main`) exits with what the command returned, with the objects made so far frozen
  out of the interpreter's last garbage collection."""
  import gc

  from mpc_jax import main as entry

  monkeypatch.setattr(entry, "run", lambda: 3)
  try:
    with pytest.raises(SystemExit) as stop:
      entry.main()
    assert stop.value.code == 3 and gc.get_freeze_count() > 0
  finally:
    gc.unfreeze()


def test_help_and_version_everywhere(tmp_path):
  assert cli(tmp_path, "--version").stdout.strip() == f"mpc-jax {VERSION}"
  for cmd in ("train", "predict"):
    r = cli(tmp_path, cmd, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mpc-jax {VERSION}"
  r = cli(tmp_path, "train", "--help")
  assert r.returncode == 0 and "--workdir" in r.stdout and "--config.FIELD=VALUE" in r.stdout
  r = cli(tmp_path, "eval", "--help")
  assert r.returncode == 0 and "--mode" in r.stdout and "--debug" in r.stdout
  r = cli(tmp_path, "nonsense")
  assert r.returncode == 2 and "unknown command" in r.stderr


# ------------------------------------------------------------------------------------- train errors
@pytest.mark.slow
def test_train_usage_errors_are_one_line(ws):
  r = cli(ws, "train", "--config", "configs/demo.py", "--workdir", "run", "--config.stage2.num_step=5")
  assert r.returncode == 2 and 'Did you mean "num_steps"' in one_line(r.stderr)
  r = cli(ws / "empty", "train", "--config", "configs/demo.py", "--workdir", "run")
  assert r.returncode == 2 and "configs/demo.py" in one_line(r.stderr) and "no such file" in r.stderr
  r = cli(ws, "train", "--config", "configs/paper.py:nonexistent", "--workdir", "run")
  line = one_line(r.stderr)
  assert r.returncode == 2 and "nonexistent" in line
  assert all(v in line for v in ("catnet_stage1", "catnet_stage2", "casiav2_stage1", "casiav2_stage2"))
  assert cli(ws, "train", "--config", "configs/demo.py").returncode == 2
  assert not (ws / "run").exists()


# -------------------------------------------------------------------------------- predict and eval
@pytest.mark.slow
def test_predict_and_eval_with_relative_paths(ws, cli_here):
  r = cli_here(ws, "predict", "data", "big/photo.jpg", "--checkpoint", "models/tiny", "--out", "preds")
  assert r.returncode == 0, r.stderr
  assert "data/images" in r.stderr  # the dataset folder's images/ was used
  stems = sorted(os.path.splitext(f)[0] for f in os.listdir(ws / "data" / "images")) + ["photo"]
  for stem in stems:
    assert (ws / "preds" / f"{stem}_prob.png").is_file()
  assert cv2.imread(str(ws / "preds" / "photo_mask.png"), cv2.IMREAD_UNCHANGED).shape == (2000, 3000)
  r = cli_here(ws, "eval", "--checkpoint", "models/tiny", "--data", "data", "--out", "ev", "--no-progress")
  assert r.returncode == 0, r.stderr
  meta = json.loads((ws / "ev" / "results.json").read_text())["meta"]
  assert meta["protocol"] == "resize" and meta["size"] == 64  # the size the model was saved as trained at
  r = cli_here(
    ws,
    "eval",
    "--checkpoint",
    "models/tiny",
    "--data",
    "data",
    "--out",
    "ev2",
    "--no-progress",
    "--size",
    "128",
    "--limit",
    "1",
  )
  assert r.returncode == 0 and "trained at 64 px" in r.stderr


@pytest.mark.slow
def test_model_errors_and_warnings(ws, cli_here):
  r = cli_here(ws, "predict", "data", "--checkpoint", "empty", "--out", "p1")
  errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
  assert r.returncode == 1 and len(errors) == 1 and "empty" in errors[0]
  r = cli_here(ws, "eval", "--data", "data", "--out", "e1")
  assert r.returncode == 2 and "--checkpoint" in one_line(r.stderr)
  r = cli_here(ws, "predict", "data/images", "--checkpoint", "models/s1", "--out", "p2", "--no-progress")
  assert r.returncode == 0 and "stage-1" in r.stderr
  r = cli_here(ws, "predict", "empty", "--checkpoint", "models/tiny", "--out", "p3")
  assert r.returncode == 1 and "no image files" in one_line(r.stderr)


def test_convert_takes_the_models_own_config(ws, cli_here):
  r = cli_here(
    ws, "convert", "win4.npz", "--out", "models/c1", "--hrformer-config", "models/win4/model_config.json"
  )
  assert r.returncode == 0, r.stderr
  r = cli_here(ws, "convert", "win4.npz", "--out", "models/c2", "--hrformer-config", "hrt_tiny")
  assert r.returncode == 0 and "window sizes taken from the weights" in r.stderr
  saved = json.loads((ws / "models" / "c2" / "model_config.json").read_text())
  assert saved["hrformer_config"]["STAGE4"]["NUM_WINDOW_SIZES"] == [4, 4, 4, 4]
  r = cli_here(ws, "convert", "backbone.npz", "--out", "models/c3", "--hrformer-config", "models/win4")
  assert r.returncode == 1 and "--head none" in r.stderr


# ----------------------------------------------------------------------------------- in-process
def test_large_image_default_is_one_small_forward_pass(ws):
  from mpc_jax import predict as P
  from mpc_jax.checkpoint import load_model

  pred = P.Predictor(load_model(str(ws / "models" / "tiny")), batch_size=4)
  img = np.zeros((3000, 4000, 3), np.uint8)
  assert P.predict_arrays(pred, img)["prob"].shape == (3000, 4000)
  assert pred.shapes == {(1, 64, 64)}  # resized to the 64 px it was trained at, whatever the image size


def test_progress_moves_per_tile():
  from mpc_jax import predict as P

  def local_model(x):
    return np.zeros((x.shape[0], x.shape[1] // 4, x.shape[2] // 4, 1), np.float32)

  steps = []
  cfg = P.PredictConfig(mode="native", tile=128, overlap=32, batch_size=1)
  out = list(
    P.predict_stream(local_model, [(0, np.zeros((300, 300, 3), np.uint8))], cfg, progress=steps.append)
  )
  assert out[0][1].shape == (300, 300)
  assert len(steps) == 9 and sum(steps) == pytest.approx(1.0)  # 3 x 3 tiles of one image


# --------------------------------------------------------------------------------------- training
TINY_TRAIN = """
import sys
sys.path.insert(0, {tests!r})
from train_testlib import tiny_config


def get_config():
  c = tiny_config(("stage2",))
  c.stage2.num_steps = 2
  c.stage2.eval_every = 2
  c.data.val_sources = ("synthetic:4:777:32:0.2",)
  c.final_eval = True
  c.print_progress = True
  c.result_file = "result.json"
  return c
"""


@pytest.mark.slow
def test_train_console_lines_once_and_summary(tmp_path):
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "tiny.py").write_text(TINY_TRAIN.format(tests=str(REPO / "tests")))
  r = cli(tmp_path, "train", "--config", "configs/tiny.py", "--workdir", "run")
  assert r.returncode == 0, r.stderr
  text = r.stdout + r.stderr
  for needle in ("stage2 step 2/2", "stage2 val step 2", "final (stage2)"):
    assert text.count(needle) == 1, text
  # `mpc-jax train` retains freed memory on the CPU, so its step is compiled by a child process (or
  # was, by an earlier run, into the shared test cache)
  compiled = [line for line in text.splitlines() if "stage2 step compiled" in line]
  assert len(compiled) == 1 and compiled[0].endswith(
    ("(by a child process)", "(read from the compilation cache)")
  )
  assert "libpng warning" not in text and "tracked_metric" not in text
  run = tmp_path.resolve() / "run"
  assert f"tensorboard --logdir {run}" in r.stdout and str(run / "result.json") in r.stdout
  assert str(run / "model_best") in r.stdout
  saved = json.loads((run / "model_best" / "model_config.json").read_text())
  assert saved["training"] == {"input_size": 32, "stage": "stage2"}
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

  tags = set()
  for f in run.glob("events.out.tfevents.*"):
    for event in EventFileLoader(str(f)).Load():
      tags |= {v.tag for v in event.summary.value}
  assert "stage2/steps_per_sec" in tags and "stage2/uptime" in tags
  assert "steps_per_sec" not in tags and "uptime" not in tags


def test_training_size_from_the_workdir_and_saved_config_wins(ws, tmp_path):
  from mpc_jax.checkpoint import read_model_config
  from mpc_jax.train_cli import use_saved_model_config
  from train_testlib import tiny_config

  work = tmp_path / "work"
  shutil.copytree(ws / "models" / "tiny", work / "stage1" / "model_best")
  f = work / "stage1" / "model_best" / "model_config.json"
  f.write_text(json.dumps({k: v for k, v in json.loads(f.read_text()).items() if k != "training"}))
  (work / "config.json").write_text(
    json.dumps({"stages": ["stage1", "stage2"], "data": {"input_size": 48}, "stage1": {"data_overrides": {}}})
  )
  assert read_model_config(work / "stage1" / "model_best")["training"] == {
    "input_size": 48,
    "stage": "stage1",
  }
  c = tiny_config(("stage2",))
  c.model.hrformer, c.model.hrformer_json = "hrt_tiny", ""
  c.stage2.init_from = str(ws / "models" / "win4")
  use_saved_model_config(c)
  assert json.loads(c.model.hrformer_json)["STAGE3"]["NUM_WINDOW_SIZES"] == [4, 4, 4]


def test_synthetic_photos_load_without_libpng_warning(capfd, monkeypatch):
  from mpc_jax.data import synthetic

  monkeypatch.setattr(synthetic, "_POOL", None)
  assert len(synthetic.natural_images()) > 10
  assert "libpng" not in capfd.readouterr().err
