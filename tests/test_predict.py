"""predict: window plans, bucketing, odd sizes, tiling vs untiled, the CLI on a folder with broken files.

Model tests use the tests' random-init tiny HRFormer (`train_testlib.TINY_HRFORMER`) wrapped so its
logits have unit spread (a random HRFormer's logits sit near +550 and every probability would be 1.0,
which would make every comparison vacuous). Only two programs are compiled: (1, 128, 128) and
(1, 192, 192).
"""

import os

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mpc_jax import predict as P
from train_testlib import TINY_HRFORMER

# Tiling tolerance (the tests' tiny random HRFormer, logits scaled to unit std, 192x192 image, tile 128,
# overlap 64): a windowed-attention model sees different context in a tile, so outputs differ. With
# PyTorch's default conv init, measured over images of seeds 3/5/7/11: mean |dp| 0.042-0.045, max
# 0.21-0.25, mask agreement 0.85-0.88. A purely local model must match to 1e-5 (test below).
TILE_MEAN_TOL, TILE_MAX_TOL, TILE_AGREE_MIN = 0.07, 0.4, 0.78


class Calibrated(nnx.Module):
  """`(model(x) - shift) * scale`: spreads the random model's logits around 0 with unit std."""

  def __init__(self, model):
    self.model = model
    self.scale = nnx.Variable(jnp.float32(1e-3))
    self.shift = nnx.Variable(jnp.float32(0.0))

  def __call__(self, x):
    return (self.model(x) - self.shift[...]) * self.scale[...]


def textured(hw, seed=0):
  r = np.random.default_rng(seed)
  img = cv2.GaussianBlur(r.integers(0, 255, (*hw, 3), dtype=np.uint8), (5, 5), 0)
  h, w = hw
  img[h // 6 : h // 2, w // 4 : w // 2] = r.integers(0, 255, (h // 2 - h // 6, w // 2 - w // 4, 3))
  return img


def make_tiny():
  from mpc_jax.models import build_mpc

  model = build_mpc(TINY_HRFORMER, seed=0)
  model.eval()
  cal = Calibrated(model)
  p = P.predict_arrays(cal, textured((128, 128)), batch_size=1, mode="native")["prob"].astype(np.float64)
  logits = np.log(p / (1 - p)) / 1e-3
  cal.shift[...] = jnp.float32(np.median(logits))
  cal.scale[...] = jnp.float32(1.0 / max(logits.std(), 1e-6))
  return cal


@pytest.fixture(scope="module")
def tiny():
  return make_tiny()


def local_model(x):
  """Purely local 'model': logits from the 4x4 mean of the red channel (tiling must be exact)."""
  b, h, w, _ = x.shape
  x = np.pad(x, ((0, 0), (0, (-h) % 4), (0, (-w) % 4), (0, 0)))
  y = x.reshape(b, x.shape[1] // 4, 4, x.shape[2] // 4, 4, 3).mean((2, 4))[..., :1]
  return (y - 0.5) * 8


# ------------------------------------------------------------------------------------------ no model
@pytest.mark.parametrize(
  "length,tile,overlap",
  [(333, 1024, 128), (2500, 1024, 128), (160, 64, 32), (1025, 1024, 0), (4097, 512, 100), (1000, 256, 64)],
)
def test_plan_axis_covers_aligned_and_overlapping(length, tile, overlap):
  padded, win, offs = P.plan_axis(length, tile, overlap)
  assert padded >= length and padded % 32 == 0 and win <= max(tile, P.bucket(length))
  assert offs[0] == 0 and offs[-1] + win == padded
  assert all(o % 32 == 0 for o in offs)
  for a, b in zip(offs, offs[1:]):
    assert a + win - b >= overlap  # neighbours overlap by at least `overlap`
  if length <= tile:
    assert offs == [0] and padded <= 1.5 * length + 32


def test_local_model_tiling_exact_and_bucketing_few_programs():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 255, (333, 517, 3), dtype=np.uint8)
  full = P.predict_arrays(local_model, img, mode="native")
  tiled = P.predict_arrays(local_model, img, mode="native", tile=128, overlap=64)
  assert full["prob"].shape == (333, 517) and full["mask"].dtype == np.uint8
  np.testing.assert_allclose(tiled["prob"], full["prob"], atol=1e-5)
  # a folder of 14 mixed sizes -> few (B, H, W) programs
  pred = P.Predictor(local_model, batch_size=4)
  sizes = [tuple(rng.integers(40, 300, 2)) for _ in range(14)]
  items = [(i, rng.integers(0, 255, (*s, 3), dtype=np.uint8)) for i, s in enumerate(sizes)]
  out = dict(P.predict_stream(pred, items, P.PredictConfig(mode="native", batch_size=4)))
  assert [out[i].shape for i in range(14)] == sizes
  spatial = {p[1:] for p in pred.shapes}
  assert len(spatial) <= 12 and len(pred.shapes) <= 2 * len(spatial)


@pytest.mark.parametrize("shape", [(1, 517, 3), (517, 1, 3), (8, 300)])
def test_thin_strips_rejected_with_clear_message(shape):
  with pytest.raises(ValueError, match=r"at least 16 px"):
    P.predict_arrays(local_model, np.zeros(shape, np.uint8))


def test_input_formats_gray_rgba_float():
  g = np.random.default_rng(1).integers(0, 255, (40, 50), dtype=np.uint8)
  a = P.predict_arrays(local_model, g, mode="native")["prob"]
  b = P.predict_arrays(local_model, np.dstack([g, g, g, np.full_like(g, 7)]), mode="native")["prob"]
  c = P.predict_arrays(local_model, np.dstack([g, g, g]).astype(np.float32) / 255, mode="native")["prob"]
  np.testing.assert_allclose(a, b)
  np.testing.assert_allclose(a, c, atol=1e-6)


# ----------------------------------------------------------------------------------------- tiny model
def test_tiled_matches_untiled_within_tolerance(tiny):
  pred = P.Predictor(tiny, batch_size=1)
  img = textured((192, 192), seed=3)
  full = P.predict_arrays(pred, img, mode="native")
  tiled = P.predict_arrays(pred, img, mode="native", tile=128, overlap=64)
  d = np.abs(full["prob"] - tiled["prob"])
  assert full["prob"].std() > 0.05  # not saturated: the comparison means something
  assert d.mean() < TILE_MEAN_TOL and d.max() < TILE_MAX_TOL
  assert (full["mask"] == tiled["mask"]).mean() > TILE_AGREE_MIN
  assert pred.shapes == {(1, 192, 192), (1, 128, 128)}


def test_odd_size_native_tiled_resize_and_downscale(tiny):
  img = textured((333, 517), seed=4)
  for kw in (dict(mode="native", tile=128, overlap=32), dict(mode="resize", size=128)):
    r = P.predict_arrays(tiny, img, batch_size=1, **kw)
    assert r["prob"].shape == (333, 517) and r["prob"].dtype == np.float32
    assert r["mask"].shape == (333, 517) and set(np.unique(r["mask"])) <= {0, 1}
    np.testing.assert_array_equal(r["mask"], (r["prob"] > 0.5).astype(np.uint8))
    assert r["score"] == pytest.approx(float(r["prob"].max())) and 0 <= r["score"] <= 1
  r = P.predict_arrays(tiny, textured((256, 200)), batch_size=1, mode="native", tile=128, large="downscale")
  assert r["prob"].shape == (256, 200)


def _write_folder(d):
  os.makedirs(d)
  cv2.imwrite(os.path.join(d, "a_rgb.png"), textured((110, 100), 5)[..., ::-1])
  cv2.imwrite(os.path.join(d, "b_gray.png"), textured((120, 97), 6)[..., 0])
  rgba = np.dstack([textured((128, 128), 7), np.full((128, 128), 200, np.uint8)])
  cv2.imwrite(os.path.join(d, "c_rgba.png"), rgba)
  cv2.imwrite(os.path.join(d, "d_big.jpg"), textured((150, 230), 8))  # tiled with --tile 128
  with open(os.path.join(d, "e_broken.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\nthis is not a png")
  ok, buf = cv2.imencode(".jpg", textured((100, 100), 9))
  with open(os.path.join(d, "f_truncated.jpg"), "wb") as f:
    f.write(buf.tobytes()[: len(buf) // 2])
  cv2.imwrite(os.path.join(d, "g_strip.png"), np.zeros((1, 300, 3), np.uint8))
  with open(os.path.join(d, "notes.txt"), "w") as f:
    f.write("not an image, ignored")


def test_cli_folder_with_broken_files(tiny, tmp_path, monkeypatch, capsys):
  src, out = str(tmp_path / "in"), str(tmp_path / "out")
  _write_folder(src)
  monkeypatch.setattr(P, "load_model_from_args", lambda args: tiny)
  rc = P.cli_main(
    [
      src,
      "--checkpoint",
      "unused",
      "--out",
      out,
      "--mode",
      "native",
      "--tile",
      "128",
      "--overlap",
      "32",
      "--batch-size",
      "1",
      "--no-progress",
    ]
  )
  cap = capsys.readouterr()
  assert rc == 1
  for bad in ("e_broken.png", "f_truncated.jpg", "g_strip.png"):
    assert bad in cap.err
  assert "3 of 7 inputs failed" in cap.err
  sizes = {"a_rgb": (110, 100), "b_gray": (120, 97), "c_rgba": (128, 128), "d_big": (150, 230)}
  for stem, hw in sizes.items():
    prob = cv2.imread(os.path.join(out, stem + "_prob.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(os.path.join(out, stem + "_mask.png"), cv2.IMREAD_UNCHANGED)
    ov = cv2.imread(os.path.join(out, stem + "_overlay.jpg"))
    assert prob.shape == hw and mask.shape == hw and ov.shape == hw + (3,)
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask > 0, prob >= 128)  # mask = prob > 0.5 = PNG value >= 128
    assert os.path.join(src, stem) in cap.out
  assert not os.path.exists(os.path.join(out, "e_broken_prob.png"))
  lines = open(os.path.join(out, "scores.csv")).read().splitlines()
  assert len(lines) == 8 and lines[0].startswith("path,score")


def test_predict_paths_api_matches_predict_arrays(tiny, tmp_path):
  p = str(tmp_path / "x.png")
  img = textured((100, 120), 11)
  cv2.imwrite(p, img[..., ::-1])
  [row] = P.predict_paths(tiny, [p], batch_size=1, mode="native", tile=128)
  ref = P.predict_arrays(tiny, img, batch_size=1, mode="native", tile=128)
  assert row["ok"] and row["prob"].shape == (100, 120)
  np.testing.assert_allclose(row["prob"], ref["prob"], atol=1e-6)
  assert row["score"] == pytest.approx(ref["score"])
  [bad] = P.predict_paths(tiny, [str(tmp_path / "missing.png")])
  assert not bad["ok"] and "missing.png" in bad["error"]


def test_programs_choice():
  """'auto' runs small batches of inputs module by module and larger runs as one program; a bad value
  is named."""
  auto = P.PredictConfig()
  assert auto.for_images(1).programs == "pieces" and auto.for_images(P.PIECES_UP_TO).programs == "pieces"
  assert auto.for_images(P.PIECES_UP_TO + 1).programs == "whole"
  assert P.PredictConfig(programs="whole").for_images(1).programs == "whole"
  with pytest.raises(ValueError, match="programs must be one of .* got 'fast'"):
    P.PredictConfig(programs="fast").check()
  with pytest.raises(ValueError, match="got 'auto'"):
    P.Predictor(local_model, programs="auto")
