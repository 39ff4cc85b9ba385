"""Metrics: known answers on synthetic cases, and agreement with scikit-learn on random ones."""

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from mpc_jax import metrics as M

BINS = 100


def _quantised(rng, shape, bins=BINS):
  """Scores at bin centres, so histogram metrics equal scikit-learn's exactly."""
  return (rng.integers(0, bins, shape) + 0.5) / bins


def _random_case(rng, n=6, h=23, w=31):
  gt = np.zeros((n, h, w), np.uint8)
  for i in range(n):
    if i % 3 != 2:  # every third image authentic
      y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
      gt[i, y : y + rng.integers(3, h - y), x : x + rng.integers(3, w - x)] = 1
  prob = np.clip(_quantised(rng, (n, h, w)) * 0.7 + gt * 0.3 * rng.random((n, 1, 1)), 0, 0.999)
  prob = (np.floor(prob * BINS) + 0.5) / BINS
  return prob, gt


def _np_bilinear_half_pixel(x, h, w):
  """Bilinear resize with half-pixel centres and edge clamping (OpenCV INTER_LINEAR, PyTorch
  align_corners=False without antialias), written out per axis in float64."""

  def weights(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m

  return weights(x.shape[0], h) @ np.asarray(x, np.float64) @ weights(x.shape[1], w).T


def _sk_f1(gt, pred):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return skm.f1_score(gt.ravel(), pred.ravel(), zero_division=0)


def test_perfect_and_empty_predictors_follow_the_conventions():
  gt = np.zeros((4, 16, 16), np.uint8)
  gt[0, 2:9, 3:12] = 1
  gt[1, :, :5] = 1  # images 2 and 3 authentic
  ev = M.Evaluator(bins=BINS)
  ev.add(gt.astype(np.float32), gt, name=[f"i{i}" for i in range(4)])
  s = ev.summary()
  assert s["forged"]["f1"] == 1.0 and s["forged"]["iou"] == 1.0 and s["forged"]["n_images"] == 2
  assert s["forged"]["f1_best_image"] == 1.0 and s["forged"]["auc_pooled"] == 1.0
  # authentic images: F1 = 0 (sklearn zero_division=0, the reference), IoU = 1 (empty on empty)
  assert s["all"]["f1"] == pytest.approx(0.5) and s["all"]["iou"] == 1.0
  assert s["image"]["auc"] == 1.0 and s["image"]["balanced_accuracy"] == 1.0

  ev0 = M.Evaluator(bins=BINS)
  ev0.add(np.zeros(gt.shape, np.float32), gt)
  s0 = ev0.summary()
  assert s0["forged"]["f1"] == 0.0 and s0["forged"]["iou"] == 0.0
  assert s0["all"]["f1"] == 0.0 and s0["all"]["iou"] == pytest.approx(0.5)  # authentic: empty on empty = 1
  assert s0["forged"]["tp"] == 0 and s0["forged"]["fn"] == int(gt.sum())
  assert s0["image"]["balanced_accuracy"] == 0.5  # everything called authentic


def test_per_image_f1_iou_match_sklearn():
  rng = np.random.default_rng(0)
  for _ in range(5):
    prob, gt = _random_case(rng)
    f1 = M.pixel_f1(prob, gt, 0.5)
    iou = M.pixel_iou(prob, gt, 0.5)
    for i in range(len(gt)):
      pred = prob[i] > 0.5
      assert f1[i] == pytest.approx(_sk_f1(gt[i], pred))
      if gt[i].any() or pred.any():
        assert iou[i] == pytest.approx(skm.jaccard_score(gt[i].ravel(), pred.ravel()))
      else:
        assert iou[i] == 1.0


def test_empty_prediction_on_empty_mask_iou_one_f1_zero():
  z = np.zeros((8, 8))
  assert M.pixel_iou(z, z) == 1.0 and M.pixel_f1(z, z) == 0.0
  assert M.pixel_iou(z + 0.9, z) == 0.0


def test_best_threshold_and_auc_match_sklearn():
  rng = np.random.default_rng(1)
  prob, gt = _random_case(rng, n=5)
  ev = M.Evaluator(bins=BINS)
  rows = ev.add(prob, gt)
  for i, row in enumerate(rows):
    if gt[i].any():
      p, r, _ = skm.precision_recall_curve(gt[i].ravel(), prob[i].ravel())
      best = np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0))
      assert row["f1_best"] == pytest.approx(best)
      assert row["auc"] == pytest.approx(skm.roc_auc_score(gt[i].ravel(), prob[i].ravel()))
    else:
      assert row["f1_best"] == 0.0 and np.isnan(row["auc"])
  s = ev.summary()
  forged = gt.reshape(len(gt), -1).any(1)
  assert s["forged"]["auc_pooled"] == pytest.approx(
    skm.roc_auc_score(gt[forged].ravel(), prob[forged].ravel())
  )
  assert s["all"]["auc_pooled"] == pytest.approx(skm.roc_auc_score(gt.ravel(), prob.ravel()))
  # one threshold for the set: brute force over the grid, same mean-of-per-image-F1 aggregation
  grid = np.arange(BINS + 1) / BINS
  means = [np.mean([_sk_f1(gt[i], prob[i] >= t) for i in np.flatnonzero(forged)]) for t in grid]
  assert s["forged"]["f1_best_dataset"] == pytest.approx(max(means))
  assert s["forged"]["threshold_best_dataset"] == pytest.approx(grid[int(np.argmax(means))])
  # pooled F1 and counts
  c = M.confusion_counts(prob[forged] > 0.5, gt[forged]).sum(0)
  assert (s["forged"]["tp"], s["forged"]["fp"], s["forged"]["fn"], s["forged"]["tn"]) == tuple(c)
  assert s["forged"]["f1_pooled"] == pytest.approx(_sk_f1(gt[forged], prob[forged] > 0.5))


def test_raw_scores_auc_within_bin_resolution():
  rng = np.random.default_rng(2)
  gt = (rng.random((1, 40, 40)) < 0.3).astype(np.uint8)
  prob = np.clip(rng.random((1, 40, 40)) * 0.8 + gt * 0.2, 0, 1)
  pos, neg = M.score_histograms(prob, gt, 1000)
  assert M.auc_from_histograms(pos, neg)[0] == pytest.approx(
    skm.roc_auc_score(gt.ravel(), prob.ravel()), abs=2e-3
  )


def test_image_level_auc_and_balanced_accuracy_match_sklearn():
  rng = np.random.default_rng(3)
  for _ in range(10):
    labels = rng.random(30) < 0.4
    labels[:2] = [True, False]
    scores = np.round(rng.random(30) * 0.6 + labels * 0.3, 2)  # rounded: ties exercised
    assert M.roc_auc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores))
    pred = scores > 0.5
    assert M.balanced_accuracy(pred, labels) == pytest.approx(skm.balanced_accuracy_score(labels, pred))
  assert np.isnan(M.roc_auc([0.1, 0.2], [1, 1]))


def test_evaluator_resizes_prediction_to_mask_and_batches_agree():
  rng = np.random.default_rng(4)
  gt = np.zeros((37, 53), np.uint8)
  gt[5:30, 10:40] = 1
  low = rng.random((10, 14)).astype(np.float32)
  ev = M.Evaluator(bins=BINS)
  [row] = ev.add(low, gt, name="x")
  up = _np_bilinear_half_pixel(low, *gt.shape)
  assert row["f1"] == pytest.approx(_sk_f1(gt, up > 0.5))
  assert row["score"] == pytest.approx(up.max())
  # batch add == one-by-one add
  prob, gts = _random_case(rng, n=4)
  a, b = M.Evaluator(bins=BINS), M.Evaluator(bins=BINS)
  a.add(prob, gts)
  for p, g in zip(prob, gts):
    b.add(p, g)
  sa, sb = a.summary(), b.summary()
  for key in ("forged", "all"):
    for k, v in sa[key].items():
      assert v == pytest.approx(sb[key][k], nan_ok=True)


def test_resize_prob_is_half_pixel_bilinear():
  # hand-computed: centres of 4 outputs over 2 inputs sit at -0.25, 0.25, 0.75, 1.25 (clamped)
  np.testing.assert_allclose(M.resize_prob(np.array([[0.0, 1.0]]), (1, 4)), [[0, 0.25, 0.75, 1]], atol=1e-6)
  # 3 outputs over 2 inputs: -1/6 (clamped), 1/2, 7/6 (clamped)
  np.testing.assert_allclose(
    M.resize_prob(np.array([[0.2], [0.8]]), (3, 1)), [[0.2], [0.5], [0.8]], atol=1e-6
  )
  rng = np.random.default_rng(9)
  for (h, w), (H, W) in [
    ((10, 14), (37, 53)),
    ((9, 7), (40, 28)),
    ((40, 56), (20, 28)),
    ((33, 21), (13, 17)),
  ]:
    x = rng.random((h, w)).astype(np.float32)
    np.testing.assert_allclose(
      M.resize_prob(x, (H, W)), _np_bilinear_half_pixel(x, H, W), atol=2e-6, err_msg=f"{(h, w)} -> {(H, W)}"
    )


def test_threshold_is_strictly_greater_at_an_exact_tie():
  # prob exactly 0.5 is not forged: the convention is `prob > 0.5` (the module docstring says where
  # the reference's `prob * 255 > 127` differs)
  prob = np.array([[0.5, 0.5001], [0.4999, 1.0]], np.float32)
  gt = np.array([[1, 1], [0, 0]], np.uint8)
  # positives: 0.5001 (tp) and 1.0 (fp); 0.5 on a forged pixel is a miss (fn)
  assert M.pixel_f1(prob, gt) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
  assert M.pixel_iou(prob, gt) == pytest.approx(1 / 3)
  [row] = M.Evaluator(bins=BINS).add(prob, gt)
  assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (1, 1, 1, 1)
  assert row["f1"] == pytest.approx(0.5) and row["iou"] == pytest.approx(1 / 3)
  # all exactly 0.5: nothing predicted forged
  half = np.full((3, 3), 0.5, np.float32)
  gt2 = np.eye(3, dtype=np.uint8)
  assert M.pixel_f1(half, gt2) == 0.0 and M.pixel_iou(half, gt2) == 0.0
  ev = M.Evaluator(bins=BINS)
  ev.add(half, gt2)
  assert ev.image_level()["tp"] == 0  # image score 0.5 is not above the 0.5 threshold
