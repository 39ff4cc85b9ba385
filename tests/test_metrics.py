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
            gt[i, y:y + rng.integers(3, h - y), x:x + rng.integers(3, w - x)] = 1
    prob = np.clip(_quantised(rng, (n, h, w)) * 0.7 + gt * 0.3 * rng.random((n, 1, 1)), 0, 0.999)
    prob = (np.floor(prob * BINS) + 0.5) / BINS
    return prob, gt


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
    assert s["forged"]["auc_pooled"] == pytest.approx(skm.roc_auc_score(gt[forged].ravel(), prob[forged].ravel()))
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
    assert M.auc_from_histograms(pos, neg)[0] == pytest.approx(skm.roc_auc_score(gt.ravel(), prob.ravel()), abs=2e-3)


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
    up = M.resize_prob(low, gt.shape)
    assert up.shape == gt.shape
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
