"""`validate.evaluate`, whose score picks `model_best`: known answers worked out by hand."""

import numpy as np
import pytest

from mpc_jax import distributed, validate
from mpc_jax.data import pipeline

S = 32  # model input size; predictions come at S / 4


class ListSource:
  """Records given as `(value, mask)`: the image is the constant `value` (0 or 255)."""

  def __init__(self, records):
    self.records = records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    value, mask = self.records[i]
    return {
      "image": np.full(mask.shape + (3,), value, np.uint8),
      "mask": mask.astype(np.uint8),
      "path": f"img{i}",
    }


def _mask(h, w, forged_rows):
  m = np.zeros((h, w), np.uint8)
  m[:forged_rows] = 1
  return m


def _predict(state, images):
  """Probability = the image's value / 255 at 1/4 resolution: a white image is predicted all
  forged, a black one all authentic."""
  del state
  return images[:, ::4, ::4, 0]


def test_evaluate_known_answer():
  cfg = pipeline.default_data_config()
  cfg.input_size, cfg.augment = S, False
  mesh = distributed.make_mesh()  # 8 simulated devices: every source is padded to a batch of 8
  # source a: (1) all predicted forged, 6 of 20x30 rows forged: TP = 180, FP = 420, FN = 0
  #           (2) nothing predicted, 3 of 10x10 rows forged: F1 = IoU = 0
  #           (3) authentic but all predicted forged: F1 = IoU = 0, and not in the forged mean
  a = ListSource([(255, _mask(20, 30, 6)), (0, _mask(10, 10, 3)), (255, _mask(16, 16, 0))])
  # source b: authentic images only, nothing predicted: F1 = 0 and IoU = 1 (both empty) for each,
  # and with no forged image the set's means are over all its images
  b = ListSource([(0, _mask(12, 12, 0)), (0, _mask(9, 14, 0))])
  scalars, samples = validate.evaluate(
    _predict, None, cfg, [("a", a), ("b", b)], batch_size=8, mesh=mesh, num_images=2
  )
  f1_1, iou_1 = 2 * 180 / (2 * 180 + 420), 180 / 600
  want = {
    "a/f1": (f1_1 + 0) / 2,
    "a/iou": (iou_1 + 0) / 2,
    "a/f1_all": (f1_1 + 0 + 0) / 3,
    "a/iou_all": (iou_1 + 0 + 0) / 3,
    "a/num": 3,
    "b/f1": 0.0,
    "b/iou": 1.0,
    "b/f1_all": 0.0,
    "b/iou_all": 1.0,
    "b/num": 2,
  }
  for k, v in want.items():
    assert scalars[k] == pytest.approx(v), k
  assert scalars["f1"] == pytest.approx((want["a/f1"] + 0.0) / 2)
  assert scalars["iou"] == pytest.approx((want["a/iou"] + 1.0) / 2)
  assert scalars["score"] == pytest.approx((want["a/f1"] + 0.0 + want["a/iou"] + 1.0) / 4)
  assert samples.shape == (2, S, 3 * S, 3)
  # the tile is image | ground truth | prediction: image 1 is white and predicted forged
  np.testing.assert_allclose(samples[0][:, :S], 1.0)
  np.testing.assert_allclose(samples[0][:, 2 * S :], 1.0)
