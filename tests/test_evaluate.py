"""eval: perturbations, the pipeline on synthetic sets with known answers, reports, the CLI end to end."""

import csv
import json
import os

import cv2
import numpy as np
import pytest

from mpc_jax import evaluate as E
from mpc_jax import perturb as PB
from mpc_jax.predict import PredictConfig, predict_arrays

from test_predict import make_tiny  # noqa: E402 (tests/ is on sys.path under pytest)


def oracle(x):
  """Local 'model' that reads the mask from the red channel: a perfect predictor at 1/4 resolution."""
  b, h, w, _ = x.shape
  x = np.pad(np.asarray(x), ((0, 0), (0, (-h) % 4), (0, (-w) % 4), (0, 0)))
  y = x.reshape(b, x.shape[1] // 4, 4, x.shape[2] // 4, 4, 3).mean((2, 4))[..., :1]
  return (y - 0.5) * 100


def zero_model(x):
  b, h, w, _ = x.shape
  return np.full((b, -(-h // 4), -(-w // 4), 1), -20.0, np.float32)


class ListSource:
  """In-memory source; masks are 4-px-aligned bands, every third image authentic."""

  def __init__(self, n=9, seed=0):
    rng = np.random.default_rng(seed)
    self.recs = []
    for i in range(n):
      h, w = (int(v) * 4 for v in rng.integers(12, 40, 2))
      m = np.zeros((h, w), np.uint8)
      if i % 3:
        m[8 : 4 * (h // 8) + 4, :] = 1  # full-width band: no corners for bilinear to round off
      img = np.zeros((h, w, 3), np.uint8)
      img[..., 1] = rng.integers(0, 255, (h, w))
      img[..., 0] = m * 255
      self.recs.append({"image": img, "mask": m, "path": f"/x/img{i}.png"})

  def __len__(self):
    return len(self.recs)

  def __getitem__(self, i):
    return self.recs[i]


# --------------------------------------------------------------------------------------- perturbations
def test_perturbation_grids_and_ops():
  assert PB.GRIDS["jpeg"] == [100, 90, 80, 70, 60, 50] and PB.GRIDS["resize"][::5] == [1.0, 0.5]
  assert PB.GRIDS["blur"] == [3, 7, 11, 15, 19, 23] == PB.GRIDS["noise"]  # IMDL-BenCo's test_robust.py
  img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8), (7, 7), 0)
  q100, q50 = PB.apply(img, "jpeg", 100), PB.apply(img, "jpeg", 50)
  err = lambda a: np.abs(a.astype(float) - img).mean()  # noqa: E731
  assert q100.shape == img.shape and q100.dtype == np.uint8 and err(q100) < err(q50)
  assert PB.apply(img, "resize", 0.5).shape == (32, 40, 3) and PB.apply(img, "resize", 1.0) is img
  b3, b23 = PB.apply(img, "blur", 3), PB.apply(img, "blur", 23)
  assert b3.std() > b23.std()
  flat = np.full((200, 200, 3), 128, np.uint8)
  n = PB.apply(flat, "noise", 23, seed=1).astype(float) - 128
  assert n.std() == pytest.approx(23**0.5, rel=0.05)  # IMDL-BenCo: the number is the variance
  assert (PB.apply(flat, "noise_sigma", 23, seed=1).astype(float) - 128).std() == pytest.approx(23, rel=0.05)
  np.testing.assert_array_equal(PB.apply(flat, "noise", 7, seed=3), PB.apply(flat, "noise", 7, seed=3))


def test_parse_perturb_spec():
  assert [k for k, _ in PB.parse_spec("all")] == ["jpeg", "resize", "blur", "noise"]
  assert PB.parse_spec("jpeg:100,70;resize:0.5") == [("jpeg", [100, 70]), ("resize", [0.5])]
  assert PB.parse_spec(["blur", "noise:3"]) == [("blur", PB.GRIDS["blur"]), ("noise", [3])]
  with pytest.raises(ValueError, match="unknown perturbation"):
    PB.parse_spec("sharpen")


# ---------------------------------------------------------------------------------- known-answer runs
def test_perfect_and_empty_predictors_through_the_pipeline():
  src = ListSource()
  r = E.evaluate_source(oracle, src, cfg=PredictConfig(mode="native"), progress=False)
  s = r["summary"]
  assert s["forged"]["n_images"] == 6 and s["all"]["n_images"] == 9 and r["n_failed"] == 0
  assert s["forged"]["f1"] == 1.0 and s["forged"]["iou"] == 1.0 and s["forged"]["auc_pooled"] == 1.0
  assert s["all"]["f1"] == pytest.approx(6 / 9) and s["all"]["iou"] == 1.0  # authentic: F1 0, IoU 1
  assert s["image"]["auc"] == 1.0 and s["image"]["balanced_accuracy"] == 1.0
  # reference protocol (resize to a square, upsample the 1/4 map to the mask): close to perfect
  r = E.evaluate_source(oracle, src, cfg=PredictConfig(mode="resize", size=128), progress=False)
  assert r["summary"]["forged"]["f1"] > 0.9
  z = E.evaluate_source(zero_model, src, cfg=PredictConfig(mode="resize", size=64), progress=False)["summary"]
  assert z["forged"]["f1"] == 0.0 and z["forged"]["iou"] == 0.0
  assert z["all"]["f1"] == 0.0 and z["all"]["iou"] == pytest.approx(3 / 9)
  assert z["image"]["balanced_accuracy"] == 0.5 and z["forged"]["fn"] == sum(
    int(x["mask"].sum()) for x in src.recs
  )


def test_perturbed_runs_and_reports(tmp_path):
  src = ListSource(6, seed=1)
  runs = [E.evaluate_source(oracle, src, name="toy", cfg=PredictConfig(mode="native"), progress=False)]
  for kind, s in (("jpeg", 50), ("resize", 0.7), ("blur", 23), ("noise", 23)):
    runs.append(
      E.evaluate_source(
        oracle,
        src,
        name="toy",
        cfg=PredictConfig(mode="native"),
        perturbation=kind,
        strength=s,
        progress=False,
      )
    )
  assert all(r["summary"]["forged"]["f1"] <= 1.0 for r in runs)
  assert (
    runs[2]["summary"]["forged"]["f1"] < runs[0]["summary"]["forged"]["f1"] == 1.0
  )  # resize 0.7: off the 4-px grid
  paths = E.write_report(runs, str(tmp_path), {"checkpoint": "oracle"})
  md = open(paths["md"]).read()
  assert "| toy | jpeg | 50 |" in md and "forged images (the paper's table)" in md
  rows = list(csv.DictReader(open(paths["csv"])))
  assert len(rows) == 5 and float(rows[0]["f1_forged"]) == 1.0 and int(rows[0]["n_forged"]) == 4
  js = json.load(open(paths["json"]))
  assert js["results"][0]["summary"]["forged"]["tp"] > 0
  assert os.path.getsize(paths["plot_toy"]) > 1000
  assert len(os.listdir(tmp_path / "per_image")) == 5


def test_dataset_names():
  assert E.dataset_name("CASIA=/data/x.json") == ("CASIA", "/data/x.json")
  assert E.dataset_name("/data/Columbia/")[0] == "Columbia"
  assert E.dataset_name("/lists/NIST16.txt")[0] == "NIST16"
  assert E.dataset_name("tfds:casia:test")[0] == "tfds_casia_test"


# ------------------------------------------------------------------------------------ CLI, tiny model
def _write_set(root, n=4, seed=0, broken=False):
  rng = np.random.default_rng(seed)
  os.makedirs(root / "images")
  os.makedirs(root / "masks")
  for i in range(n):
    h, w = int(rng.integers(100, 128)), int(rng.integers(100, 128))
    img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)
    m = np.zeros((h, w), np.uint8)
    if i:  # image 0 authentic (all-zero mask)
      m[10:60, 20:70] = 255
    cv2.imwrite(str(root / "images" / f"im{i}.png"), img)
    cv2.imwrite(str(root / "masks" / f"im{i}.png"), m)
  if broken:
    (root / "images" / "im9.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    cv2.imwrite(str(root / "masks" / "im9.png"), np.zeros((50, 50), np.uint8))


@pytest.mark.slow
def test_eval_cli_two_sets_perturb_and_masks(tmp_path, monkeypatch, capsys):
  tiny = make_tiny()
  import mpc_jax.evaluate as ev_mod

  monkeypatch.setattr(ev_mod, "load_model_from_args", lambda args: tiny)
  _write_set(tmp_path / "setA", 4, 0)
  _write_set(tmp_path / "setB", 3, 1)
  lst = tmp_path / "b.txt"
  lst.write_text(
    "".join(f"{tmp_path}/setB/images/im{i}.png,{tmp_path}/setB/masks/im{i}.png\n" for i in range(3))
  )
  out = tmp_path / "out"
  rc = E.cli_main(
    [
      "--checkpoint",
      "unused",
      "--data",
      str(tmp_path / "setA"),
      f"B={lst}",
      "--out",
      str(out),
      "--protocol",
      "resize",
      "--size",
      "128",
      "--batch-size",
      "1",
      "--perturb",
      "jpeg:90;resize:0.5",
      "--save-masks",
      "--no-progress",
    ]
  )
  assert rc == 0
  rows = list(csv.DictReader(open(out / "results.csv")))
  assert [(r["dataset"], r["perturbation"]) for r in rows] == [
    ("setA", "none"),
    ("setA", "jpeg"),
    ("setA", "resize"),
    ("B", "none"),
    ("B", "jpeg"),
    ("B", "resize"),
  ]
  assert rows[0]["n_images"] == "4" and rows[0]["n_forged"] == "3" and rows[3]["n_forged"] == "2"
  assert (out / "results.md").exists() and (out / "results.json").exists()
  assert (out / "robustness_setA.png").exists() and (out / "robustness_B.png").exists()
  saved = cv2.imread(str(out / "masks" / "setA" / "clean" / "im1.png"), cv2.IMREAD_UNCHANGED)
  gt = cv2.imread(str(tmp_path / "setA" / "masks" / "im1.png"), cv2.IMREAD_UNCHANGED)
  assert saved.shape == gt.shape and set(np.unique(saved)) <= {0, 255}
  assert "| setA | none | 0 | 4 | 3 |" in capsys.readouterr().out


def test_eval_f1_equals_f1_of_predict_masks(tmp_path):
  """What `eval --protocol native` reports is the F1 of the masks `predict` writes."""
  tiny = make_tiny()
  _write_set(tmp_path / "s", 3, 2)
  from mpc_jax.data.sources import source_from_spec

  src = source_from_spec(str(tmp_path / "s"))
  cfg = PredictConfig(mode="native", tile=128, batch_size=1)
  r = E.evaluate_source(tiny, src, cfg=cfg, progress=False)
  from mpc_jax.metrics import pixel_f1

  for row, rec in zip(r["per_image"], (src[i] for i in range(len(src)))):
    mask = predict_arrays(tiny, rec["image"], cfg)["mask"]
    assert row["f1"] == pytest.approx(float(pixel_f1(mask.astype(np.float32), rec["mask"])))


def test_eval_broken_file_raises_or_skips(tmp_path, monkeypatch, capsys):
  _write_set(tmp_path / "s", 2, 3, broken=True)
  monkeypatch.setattr(E, "load_model_from_args", lambda args: oracle)
  out = tmp_path / "o"
  rc = E.cli_main(["--random-init", "x", "--data", str(tmp_path / "s"), "--out", str(out), "--no-progress"])
  assert rc == 1 and "im9.png" in capsys.readouterr().err
  rc = E.cli_main(
    ["--random-init", "x", "--data", str(tmp_path / "s"), "--out", str(out), "--skip-bad", "--no-progress"]
  )
  rows = list(csv.DictReader(open(out / "results.csv")))
  assert rc == 0 and rows[0]["n_images"] == "2" and rows[0]["n_failed"] == "1"
  assert "im9.png" in open(out / "results.md").read()
